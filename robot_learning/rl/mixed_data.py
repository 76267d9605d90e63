"""The mixed-quality dataset a steering critic learns from: scripted experts at chosen qualities plus,
optionally, a base policy's own rollouts, failures kept, in one episode store.

Every step stores the observation, the executed action, ``reward`` (1.0 at success, else 0: the step
schema of data/layout.py) and ``done``; the episode's ``success`` flag is what the critic's labelling
(rl/rewards.py: ``step_penalty``, -1 per step / 0 at success) reads. Episode metadata names the source
(``scripted`` with ``quality`` in tags, or ``policy`` with the checkpoint as ``policy_id``).

Orchestration on top of core and sim (like ``rlstack eval``), so ``sim`` is imported inside functions.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_learning.policies.base import ChunkResult
from robot_learning.policies.composite import WrapperPolicy

BASE_MODES = ("sample", "predict")


class SampledBase(WrapperPolicy):
    """Executes one sampled candidate of the base per re-plan (``sample_chunks(obs, 1)``): the distribution
    a steering critic will choose from, which for a BC mixture is not its ``predict_chunk`` (the top mode's mean)."""

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """One sampled chunk."""
        return np.asarray(self.base.sample_chunks(obs_history, 1))[0]

    def predict_chunk_with_info(self, obs_history: dict[str, np.ndarray]) -> ChunkResult:
        """One sampled chunk, no diagnostics."""
        return ChunkResult(self.predict_chunk(obs_history), {})


@dataclass
class MixedSummary:
    """What one collection wrote: successes / episodes per part."""

    parts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def text(self) -> str:
        """One line per part."""
        from robot_learning.stats import format_rate

        return "\n".join(f"{name}: {format_rate(s, n)}" for name, (s, n) in self.parts.items())


def collect_mixed(out: str, task: str, qualities: list[float], episodes: int, seed: int = 0,
                  base: str | None = None, base_episodes: int = 0, task_overrides: list[str] | None = None,
                  progress: bool = True, base_mode: str = "sample") -> MixedSummary:
    """Experts at each quality (``episodes`` each, seeds ``seed + 10000 * i ...``) and ``base_episodes`` base
    rollouts (``base_mode``: ``sample`` executes sampled candidates, ``predict`` the base's ``predict_chunk``)."""
    from sim.config import load_task_config
    from sim.demos import generate_demos

    if not qualities and not base_episodes:
        raise ValueError("mixed data: give expert qualities and/or base_episodes > 0")
    bad = [q for q in qualities if not 0.0 <= q <= 1.0]
    if bad:
        raise ValueError(f"mixed data: expert qualities must be in [0, 1], got {bad}")
    if base_episodes and not base:
        raise ValueError("mixed data: base_episodes > 0 needs base=<checkpoint>")
    if base_mode not in BASE_MODES:
        raise ValueError(f"mixed data: base_mode '{base_mode}' is not one of {', '.join(BASE_MODES)}")
    cfg = load_task_config(task, task_overrides)
    summary = MixedSummary()
    for i, q in enumerate(qualities):
        s = generate_demos(out, cfg, episodes, quality=q, seed=seed + 10_000 * i, progress=progress)
        summary.parts[f"expert q={q:g}"] = (sum(s.successes), len(s.successes))
    if base_episodes:
        assert base is not None
        summary.parts[f"base {Path(base).name} ({base_mode})"] = _base_rollouts(
            out, cfg, base, base_episodes, seed + 10_000 * len(qualities), progress, base_mode)
    return summary


def _base_rollouts(out: str, cfg: Any, base: str, episodes: int, seed: int, progress: bool,
                   base_mode: str = "sample") -> tuple[int, int]:
    """Roll the base out in sim and commit every episode (source=policy)."""
    from tqdm import tqdm

    from robot_learning.data.store import EpisodeMeta, EpisodeStore
    from robot_learning.eval.policy_agent import PolicyAgent
    from robot_learning.policies.checkpoint import load_policy
    from sim import make_robot
    from sim.demos import record_episode

    policy = load_policy(base, seed=seed)
    agent = PolicyAgent(SampledBase(policy) if base_mode == "sample" else policy)
    robot = make_robot(cfg.name, seed=seed, **cfg.robot_kwargs())
    store = EpisodeStore.open(out, mode="a")
    wins = 0
    try:
        for s in tqdm(range(seed, seed + episodes), desc=f"base rollouts {cfg.name}", disable=not progress):
            obs = robot.reset(seed=s)
            agent.reset(s)
            meta = EpisodeMeta(task=cfg.name, source="policy", policy_id=str(base), instruction=cfg.description,
                               rates={k: cfg.control_hz for k in robot.spec.observations},
                               tags={"seed": s, "control_hz": cfg.control_hz, "action_mode": cfg.action_mode})
            with store.begin_episode(meta) as writer:
                ok, _ = record_episode(robot, writer, obs, lambda o: agent.act(o.data), cfg.max_steps)
                writer.commit(success=ok)
            wins += ok
    finally:
        agent.close()
        robot.close()
        store.close()
    return wins, episodes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rlstack collect-mixed``."""
    parser.description = ("Collect a mixed-quality dataset for an offline steering critic: scripted experts at the "
                          "given qualities (failures kept) and optionally a base policy's rollouts.")
    parser.add_argument("--out", required=True, help="episode store to append to (created if missing)")
    parser.add_argument("--task", default="lift")
    parser.add_argument("--qualities", type=float, nargs="*", default=[1.0, 0.6, 0.3])
    parser.add_argument("--episodes", type=int, default=50, help="episodes per expert quality")
    parser.add_argument("--base", default=None, help="base checkpoint whose rollouts are added")
    parser.add_argument("--base-episodes", type=int, default=0)
    parser.add_argument("--base-mode", choices=BASE_MODES, default="sample",
                        help="sample: execute sampled candidates (what steering picks from); predict: predict_chunk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task-overrides", nargs="*", default=[], help="task key=value (e.g. image_size=64)")


def run(args: argparse.Namespace) -> int:
    """Entry point."""
    s = collect_mixed(args.out, args.task, list(args.qualities), args.episodes, args.seed, args.base,
                      args.base_episodes, list(args.task_overrides), base_mode=args.base_mode)
    print(s.text())
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="rlstack collect-mixed")
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
