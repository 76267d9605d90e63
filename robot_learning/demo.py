"""``rlstack demo``: the whole loop on the embedded default, every part real.

1. collect: the ROS 2 graph (sim_robot, expert teleop, recorder) records demonstrations into a store;
2. train: a small policy from that store with the one training loop;
3. deploy: the policy runs as the ROS 2 control node against the sim robot;
4. evaluate: the checkpoint in parallel sim episodes, with a Wilson interval.

Each stage is the same sub-command a user would type, so the demo doubles as a walkthrough.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from robot_learning.config import compose, to_dataclass


@dataclass
class DemoConfig:
    """``configs/demo.yaml``."""

    task: str = "lift"
    image_size: int = 32
    demos: int = 50
    policy: str = "bc"
    train_steps: int = 3000
    batch_size: int = 64
    deploy_episodes: int = 5
    eval_episodes: int = 50
    procs: int = 2
    out: str = "data/demo"
    fresh: bool = True


def demo_paths(cfg: DemoConfig) -> dict[str, Path]:
    """Where each stage writes (all under ``cfg.out``)."""
    out = Path(cfg.out)
    return {"store": out / f"{cfg.task}.zarr", "run": out / f"run_{cfg.policy}", "eval": out / "eval",
            "deploy_logs": out / "deploy_logs"}


def stages(cfg: DemoConfig) -> list[tuple[str, list[str]]]:
    """The sub-command lines the demo runs, in order."""
    paths = demo_paths(cfg)
    store, checkpoint = paths["store"], paths["run"] / "policy.pt"
    task = [f"task={cfg.task}", f"task.image_size={cfg.image_size}"]  # every stage sees the same cameras
    return [
        ("collect demonstrations over ROS 2",
         ["collect", "robot=sim", "teleop=expert", *task, f"episodes={cfg.demos}", f"store={store}"]),
        ("store summary", ["data", "info", str(store)]),
        ("train a base policy",
         ["train", f"policy={cfg.policy}", *task, f"data.store={store}", f"out_dir={paths['run']}",
          f"train.steps={cfg.train_steps}", f"train.batch_size={cfg.batch_size}"]),
        ("deploy it as a ROS 2 control node against the sim robot",
         ["deploy", *task, f"deploy.policy.checkpoint={checkpoint}", f"episodes={cfg.deploy_episodes}",
          f"log_dir={paths['deploy_logs']}"]),
        ("evaluate in sim",
         ["eval", f"checkpoint={checkpoint}", *task, f"episodes={cfg.eval_episodes}",
          f"procs={cfg.procs}", f"out={paths['eval']}"]),
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Hydra overrides of configs/demo.yaml."""
    parser.description = (
        "Run the whole loop in sim: collect demonstrations over ROS 2, train, deploy as a ROS 2 node, evaluate. "
        "Keys: " + ", ".join(DemoConfig.__dataclass_fields__) + "."
    )
    parser.add_argument("overrides", nargs="*", help="e.g. demos=40 policy=diffusion train_steps=3000")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")


def run(args: argparse.Namespace) -> int:
    """Run every stage, stop at the first that fails."""
    from robot_learning.cli import main as rlstack

    cfg = to_dataclass(compose("demo", args.overrides), DemoConfig, where="demo")
    plan = stages(cfg)
    if args.dry_run:
        for title, argv in plan:
            print(f"# {title}\nrlstack {' '.join(argv)}")
        return 0
    if cfg.fresh:  # remove only what the demo itself writes, never the rest of `out`
        for path in demo_paths(cfg).values():
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(f"{demo_paths(cfg)['store']}.logs", ignore_errors=True)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for i, (title, argv) in enumerate(plan, 1):
        print(f"\n=== [{i}/{len(plan)}] {title} ({time.monotonic() - t0:.0f} s elapsed)\n$ rlstack {' '.join(argv)}",
              flush=True)
        rc = rlstack(argv)
        if rc != 0:
            print(f"demo: stage '{title}' failed with exit code {rc}")
            return rc
    print(f"\n=== demo finished in {time.monotonic() - t0:.0f} s; everything is under {cfg.out}/")
    return 0
