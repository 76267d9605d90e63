"""Scripted demonstrations straight into an episode store (mixed quality through the expert knob)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from robot_learning.stats import format_rate
from sim.config import TaskConfig


def record_episode(robot: Any, writer: Any, obs: Any, act: Callable[[Any], np.ndarray],
                   max_steps: int) -> tuple[bool, int]:
    """Run ``act(obs) -> action`` on the sim robot from ``obs`` until success or ``max_steps``, appending every
    step to ``writer`` in the store's step schema; returns (success, steps). Shared by the scripted demos and
    a policy's rollouts (``rlstack collect-mixed``), so both kinds of episode fit one store."""
    from robot_learning.data.layout import schema_step

    success, steps = False, 0
    while not success and steps < max_steps:
        action = np.asarray(act(obs), np.float32)
        tick = float(robot.clock())
        robot.act(action)
        steps += 1
        success = robot.success()
        done = success or steps >= max_steps  # a time-out is a truncation (done, not terminal)
        writer.append({**obs.data, "action": action,
                       **schema_step(reward=float(success), done=done, terminal=success, control_source="policy")},
                      {**obs.stamps, "step": tick})
        obs = robot.observe()
    return success, steps


@dataclass
class DemoSummary:
    """What a demo-generation run produced."""

    store: str
    task: str
    quality: float
    seeds: list[int] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)  # store episode indices written
    lengths: list[int] = field(default_factory=list)

    def text(self) -> str:
        """One paragraph: expert success with the Wilson interval, what went into the store."""
        n, k = len(self.seeds), sum(self.successes)
        return (
            f"{self.task} expert (quality {self.quality}): success {format_rate(k, n, self.seeds)}; "
            f"{len(self.stored)} episode(s) written to {self.store}, mean length {np.mean(self.lengths):.1f} steps"
        )


def generate_demos(
    out: str | Path,
    cfg: TaskConfig,
    episodes: int,
    quality: float = 1.0,
    seed: int = 0,
    only_success: bool = False,
    image_codec: str | None = None,
    progress: bool = True,
) -> DemoSummary:
    """Roll out the scripted expert for seeds ``seed..seed+episodes-1`` and commit each episode to ``out``.

    Every step stores the observation (with the capture stamp of each stream), the action taken, the
    sparse reward and the done flag; episode metadata records the seed, quality and randomization.
    """
    from robot_learning.data.store import EpisodeMeta, EpisodeStore
    from sim import make_expert, make_robot

    if episodes <= 0:
        raise ValueError(f"episodes={episodes}: must be positive")
    robot = make_robot(cfg.name, seed=seed, **cfg.robot_kwargs())
    expert = make_expert(cfg.name, quality=quality, seed=seed)
    store = EpisodeStore.open(str(out), mode="a", image_codec=image_codec)
    summary = DemoSummary(store=str(out), task=cfg.name, quality=quality)
    rates = {k: cfg.control_hz for k in robot.spec.observations}
    try:
        for s in tqdm(range(seed, seed + episodes), desc=f"demos {cfg.name} q={quality}", disable=not progress):
            obs = robot.reset(seed=s)
            expert.reset(s)
            meta = EpisodeMeta(
                task=cfg.name, source="scripted", policy_id=f"scripted-expert-q{quality:g}",
                instruction=cfg.description, rates=rates,
                tags={"seed": s, "quality": quality, "dr": cfg.dr, "control_hz": cfg.control_hz,
                      "action_mode": cfg.action_mode, "action_names": list(robot.spec.action_names)},
            )
            writer = store.begin_episode(meta)
            try:
                success, steps = record_episode(robot, writer, obs, lambda _obs: expert.act(robot), cfg.max_steps)
                if only_success and not success:
                    writer.discard()
                else:
                    summary.stored.append(writer.commit(success=success))
            except BaseException:
                writer.discard()  # never leave a half-written episode; committed ones are untouched
                raise
            summary.seeds.append(s)
            summary.successes.append(success)
            summary.lengths.append(steps)
    finally:
        robot.close()
        store.close()
    return summary
