"""``rlstack eval``: run a checkpoint in a sim task and write the report.

Example::

    rlstack eval checkpoint=runs/diffusion/policy.pt task=lift episodes=50 procs=2 dr=none
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from robot_learning.config import compose, save_config, to_dataclass


@dataclass
class EvalConfig:
    """Schema of configs/eval.yaml."""

    checkpoint: str
    task: dict[str, Any]
    episodes: int = 50
    procs: int = 2
    dr: str = "none"
    seed: int = 100000
    videos: int = 2
    out: Optional[str] = None
    device: str = "cpu"
    sampler: Optional[str] = None
    num_inference_steps: Optional[int] = None
    max_steps: Optional[int] = None
    n_action_steps: Optional[int] = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Hydra overrides."""
    parser.description = (
        "Evaluate a policy checkpoint in sim: parallel processes, seeds seed..seed+episodes-1, a domain-"
        "randomization preset. Writes report.json (success, Wilson 95%% CI, episodes, seeds, lengths) and "
        "rollout videos to out (default <checkpoint dir>/eval_<task>_<dr>). Keys: checkpoint, task, episodes, "
        "procs, dr, seed, videos, out, device, sampler, num_inference_steps, max_steps, n_action_steps (actions executed per chunk before re-planning)."
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. checkpoint=runs/x/policy.pt task=lift")


def run(args: argparse.Namespace) -> int:
    """Compose, validate, evaluate, write the report."""
    from omegaconf import OmegaConf

    from robot_learning.eval.policy_agent import evaluate_checkpoint, task_settings

    cfg = compose("eval", args.overrides)
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise SystemExit("rlstack eval: give checkpoint=<path to policy.pt>")
    ecfg = to_dataclass(cfg, EvalConfig, where="rlstack eval")
    if ecfg.episodes < 1 or ecfg.procs < 1:
        raise SystemExit("rlstack eval: episodes and procs must be >= 1")
    if not Path(ecfg.checkpoint).is_file():  # before anything is written next to it
        raise FileNotFoundError(f"checkpoint not found: {ecfg.checkpoint}")
    task_name, _, _ = task_settings(ecfg.task)
    out = Path(ecfg.out) if ecfg.out else Path(ecfg.checkpoint).resolve().parent / f"eval_{task_name}_{ecfg.dr}"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    report = evaluate_checkpoint(
        ecfg.checkpoint, ecfg.task, n_episodes=ecfg.episodes, seed=ecfg.seed, n_procs=ecfg.procs, dr=ecfg.dr,
        video_dir=out if ecfg.videos > 0 else None, n_videos=ecfg.videos, device=ecfg.device,
        max_steps=ecfg.max_steps, sampler=ecfg.sampler, num_inference_steps=ecfg.num_inference_steps,
        n_action_steps=ecfg.n_action_steps,
    )
    report.to_json(out / "report.json")
    print(f"{Path(ecfg.checkpoint)} on {task_name} (dr={ecfg.dr}): success {report.summary()}")
    print(f"report: {out / 'report.json'}")
    return 0
