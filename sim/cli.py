"""``rlstack sim``: scripted demonstrations, expert evaluation, rollout videos, speed benchmark, info.

Examples::

    rlstack sim demos --task lift --episodes 100 --quality 1.0 --out data/lift.zarr
    rlstack sim eval --task push_t --episodes 50 --procs 2 --video-dir data/videos dr=light
    rlstack sim rollout --task push_t --video out.mp4
    rlstack sim bench --steps 200
    rlstack sim info

Trailing ``key=value`` arguments override the task config (``configs/task/<task>.yaml``), e.g.
``image_size=64 control_hz=20 dr=heavy``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sim.config import TaskConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the sub-commands of ``rlstack sim``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1]
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, episodes: int) -> None:
        p.add_argument("--task", default="lift", help="task name: lift, push, push_t, stack (default lift)")
        p.add_argument("--seed", type=int, default=0, help="first episode seed (episodes use seed..seed+n-1)")
        p.add_argument("--episodes", type=int, default=episodes, help=f"number of episodes (default {episodes})")
        p.add_argument("--quality", type=float, default=1.0, help="expert quality in [0, 1]: 1 clean, lower noisier")
        p.add_argument("overrides", nargs="*", help="task config overrides key=value (image_size=64 dr=light)")

    d = sub.add_parser("demos", help="generate scripted demonstrations into an episode store")
    common(d, 100)
    d.add_argument("--out", required=True, help="episode store path or s3:// URL (created or appended)")
    d.add_argument("--only-success", action="store_true", help="store only successful episodes")
    d.add_argument("--image-codec", choices=["jpeg", "lossless"], default=None, help="codec for a new store")

    e = sub.add_parser("eval", help="evaluate the scripted expert in parallel and print the report")
    common(e, 50)
    e.add_argument("--procs", type=int, default=2, help="worker processes (default 2)")
    e.add_argument("--video-dir", default=None, help="write mp4s of the first --videos episodes here")
    e.add_argument("--videos", type=int, default=2, help="how many rollouts to record (default 2)")
    e.add_argument("--report", default=None, help="write the report as JSON to this path")

    r = sub.add_parser("rollout", help="run one expert episode and write an mp4")
    common(r, 1)
    r.add_argument("--video", default="rollout.mp4", help="output mp4 path (default rollout.mp4)")
    r.add_argument("--camera", default="front", choices=["front", "wrist"], help="camera to record")

    b = sub.add_parser("bench", help="measure control steps/s headless and with 2 cameras")
    b.add_argument("--task", default="lift", help="task to step (default lift)")
    b.add_argument("--steps", type=int, default=200, help="control steps per measurement (default 200)")
    b.add_argument("overrides", nargs="*", help="task config overrides key=value")

    sub.add_parser("info", help="list tasks, randomization presets and the robot spec")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action; bad input prints one clear line and returns 2."""
    from sim.config import load_task_config

    try:
        if args.action == "info":
            return _info()
        cfg = load_task_config(args.task, list(args.overrides))
        if args.action == "demos":
            from sim.demos import generate_demos

            summary = generate_demos(args.out, cfg, args.episodes, args.quality, args.seed, args.only_success,
                                     args.image_codec)
            print(summary.text())
            return 0
        if args.action == "eval":
            return _eval(args, cfg)
        if args.action == "rollout":
            return _rollout(args, cfg)
        if args.action == "bench":
            from sim.bench import control_rate

            for label, kwargs in (("headless", {"render": False}), ("2 cameras", {"render": True})):
                rate = control_rate(cfg.name, args.steps, **{**cfg.robot_kwargs(), **kwargs})
                print(f"{cfg.name} {label} ({cfg.image_size}px, {cfg.control_hz:g} Hz): {rate:.0f} control steps/s")
            return 0
    except ValueError as exc:
        print(f"rlstack sim {args.action}: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.action)


def _info() -> int:
    from sim import DR_PRESETS, TASKS, make_robot

    for name, cls in TASKS.items():
        print(f"task {name:7s} max_steps {cls.max_steps:4d}  {cls.description}")
    print("dr presets: " + ", ".join(f"{k}{' (held out)' if k == 'real' else ''}" for k in DR_PRESETS))
    robot = make_robot("lift")
    for key, s in robot.spec.observations.items():
        print(f"obs {key:14s} {s.dtype:8s} {s.shape}")
    print(f"action {robot.spec.action_dim}-d {list(robot.spec.action_names)} in [-1, 1], {robot.spec.control_hz:g} Hz")
    robot.close()
    return 0


def _eval(args: argparse.Namespace, cfg: TaskConfig) -> int:
    from robot_learning.eval.sim_eval import evaluate
    from sim.experts import ExpertAgentFactory

    kwargs = cfg.robot_kwargs()
    dr = kwargs.pop("dr")
    report = evaluate(ExpertAgentFactory(cfg.name, args.quality, args.seed), task=cfg.name,
                      n_episodes=args.episodes, seed=args.seed, n_procs=args.procs, dr=dr, video_dir=args.video_dir,
                      n_videos=args.videos, robot_kwargs=kwargs, max_steps=cfg.max_steps)
    print(report.summary())
    if args.report:
        print(f"report written to {report.to_json(args.report)}")
    return 0


def _rollout(args: argparse.Namespace, cfg: TaskConfig) -> int:
    from robot_learning.eval.sim_eval import write_video
    from sim import make_expert, make_robot

    robot = make_robot(cfg.name, **cfg.robot_kwargs())
    expert = make_expert(cfg.name, quality=args.quality, seed=args.seed)
    t0 = time.perf_counter()
    try:
        robot.reset(seed=args.seed)
        expert.reset(args.seed)
        frames = [robot.render_frame(args.camera)]
        success = False
        while not success and robot.steps < cfg.max_steps:
            robot.act(expert.act(robot))
            frames.append(robot.render_frame(args.camera))
            success = robot.success()
        path = write_video(frames, Path(args.video), robot.control_hz)
        info = {"task": cfg.name, "seed": args.seed, "success": success, "steps": robot.steps,
                **robot.metrics(), "video": path, "wall_s": round(time.perf_counter() - t0, 2)}
    finally:
        robot.close()
    print(json.dumps(info))
    return 0
