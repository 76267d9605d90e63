"""Parallel evaluation of an agent in the PyBullet sim, with seeds, randomization and rollout videos.

Episodes use seeds ``seed .. seed + n - 1``; each episode is fully determined by its seed (scene,
randomization, and the agent's ``reset(seed=...)`` when it accepts one), so the result does not
depend on how episodes are spread over processes.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robot_learning.eval.report import EpisodeResult, EvalReport

AgentFactory = Callable[[], Any]

_WORKER: dict[str, Any] = {}


def _init_worker(agent_factory: AgentFactory, task: str, dr: str, robot_kwargs: dict[str, Any], max_steps: int,
                 video_dir: str | None, video_seeds: tuple[int, ...]) -> None:
    """Create this process's robot and agent once; episodes reuse them."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from sim import make_robot

    robot = make_robot(task=task, dr=dr, **robot_kwargs)
    agent = agent_factory()
    if hasattr(agent, "attach"):
        agent.attach(robot)
    takes_seed = "seed" in inspect.signature(agent.reset).parameters
    _WORKER.update(robot=robot, agent=agent, takes_seed=takes_seed, max_steps=max_steps, video_dir=video_dir,
                   video_seeds=set(video_seeds))


def _close_worker() -> None:
    """Close this process's robot and agent (the agent's policy may hold a child process)."""
    robot, agent = _WORKER.pop("robot", None), _WORKER.pop("agent", None)
    _WORKER.clear()
    try:
        if agent is not None and hasattr(agent, "close"):
            agent.close()
    finally:
        if robot is not None:
            robot.close()


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> str:
    """Encode RGB frames as mp4 with OpenCV."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a video writer for {path}")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return str(path)


def _run_episode(seed: int) -> EpisodeResult:
    """One episode in this process's robot (worker side), through the one sim episode loop."""
    from sim.gym_env import run_episode

    w = _WORKER
    robot, agent = w["robot"], w["agent"]
    record = w["video_dir"] is not None and seed in w["video_seeds"]
    frames: list[np.ndarray] = []
    best: dict[str, float] = {}

    def reset_agent(s: int) -> None:
        agent.reset(seed=s) if w["takes_seed"] else agent.reset()
        best.update(robot.metrics())
        if record:
            frames.append(robot.render_frame())

    def on_step(_obs: Any, _action: np.ndarray, _outcome: Any) -> None:
        for k, v in robot.metrics().items():
            best[k] = max(best.get(k, v), v)
        if record:
            frames.append(robot.render_frame())

    try:
        outcome = run_episode(robot, agent.act, seed, w["max_steps"], reset_agent=reset_agent, on_step=on_step)
    except Exception as exc:
        raise RuntimeError(f"evaluation episode seed {seed} (task {robot.task.name}): {exc}") from exc
    success = outcome.success
    video = None
    if record:
        tag = "success" if success else "failure"
        video = write_video(frames, Path(w["video_dir"]) / f"{robot.task.name}_seed{seed}_{tag}.mp4", robot.control_hz)
    return EpisodeResult(seed=seed, success=bool(success), length=outcome.steps, metrics=robot.metrics(),
                         max_metrics=best, video=video)


def evaluate(
    agent_factory: AgentFactory,
    task: str = "lift",
    n_episodes: int = 50,
    seed: int = 0,
    n_procs: int = 2,
    dr: str = "none",
    video_dir: str | Path | None = None,
    n_videos: int = 2,
    robot_kwargs: dict[str, Any] | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Run ``n_episodes`` episodes of ``task`` over ``n_procs`` spawned processes and report.

    ``agent_factory`` is a picklable zero-argument callable returning an object with ``reset()`` and
    ``act(obs: Observation) -> action``; if it has ``attach(robot)`` it is given the robot (privileged
    agents such as scripted experts). Videos of the first ``n_videos`` episodes go to ``video_dir``.
    """
    from sim import DR_PRESETS, TASKS

    if task not in TASKS:
        raise ValueError(f"unknown task '{task}' (choose from {', '.join(TASKS)})")
    if dr not in DR_PRESETS:
        raise ValueError(f"unknown domain randomization preset '{dr}' (choose from {', '.join(DR_PRESETS)})")
    if n_episodes <= 0 or n_procs <= 0:
        raise ValueError(f"n_episodes={n_episodes} and n_procs={n_procs} must be positive")
    if not callable(agent_factory):
        raise TypeError("agent_factory must be a zero-argument callable returning an agent")
    robot_kwargs = dict(robot_kwargs or {})
    for bad in ("task", "dr"):
        if bad in robot_kwargs:
            raise ValueError(f"robot_kwargs must not contain '{bad}': pass it to evaluate() directly")
    steps = int(max_steps or TASKS[task].max_steps)
    seeds = list(range(seed, seed + n_episodes))
    video_seeds = tuple(seeds[: max(0, n_videos)]) if video_dir is not None else ()
    init_args = (agent_factory, task, dr, robot_kwargs, steps, None if video_dir is None else str(video_dir), video_seeds)
    n_procs = min(n_procs, n_episodes)
    start = time.perf_counter()
    bar = tqdm(total=n_episodes, desc=f"eval {task}/{dr}", disable=not progress, leave=False)
    results: list[EpisodeResult] = []
    if n_procs == 1:
        _init_worker(*init_args)
        try:
            for s in seeds:
                results.append(_run_episode(s))
                bar.update(1)
        finally:
            _close_worker()
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(n_procs, initializer=_init_worker, initargs=init_args) as pool:
            for r in pool.imap_unordered(_run_episode, seeds):
                results.append(r)
                bar.update(1)
    bar.close()
    results.sort(key=lambda r: r.seed)
    return EvalReport(
        task=task, dr=dr, episodes=results, agent=repr(agent_factory), max_steps=steps, n_procs=n_procs,
        wall_time_s=time.perf_counter() - start, robot_kwargs=robot_kwargs,
    )
