"""Typed config of the shared RL parts (``configs/rl/parts.yaml``); method configs compose it.

A method config (e.g. ``configs/rl/residual.yaml``) starts with ``defaults: [parts, _self_]`` and
overrides what it needs; ``validate_parts`` checks the shared sections, naming any bad key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robot_learning.config import to_dataclass
from robot_learning.rl.critics import CriticConfig
from robot_learning.rl.rewards import REWARDS

ACTOR_KINDS = ("td3", "sac")


@dataclass
class ReplayConfig:
    """Transitions: history length, n-step targets, reward labelling, batch mix."""

    n_obs_steps: int = 2
    n_step: int = 3
    gamma: float = 0.99
    reward: str = "sparse_success"  # stored | sparse_success | step_penalty | intervention
    batch_size: int = 256
    ratios: dict[str, float] = field(default_factory=lambda: {"demo": 0.5, "online": 0.5})
    cache_features: bool = True  # frozen encoders: camera features computed once per episode
    refresh_every: int = 1000  # learner updates between store refreshes


@dataclass
class ActorConfig:
    """Actor network and its exploration / target smoothing (normalized action units)."""

    kind: str = "td3"  # td3 (deterministic) | sac (tanh-Gaussian)
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    action_scale: float = 1.0  # residual actors: 0.1 - 0.2
    zero_init_last: bool = False  # residual actors start exactly at the base
    lr: float = 1e-4
    exploration_std: float = 0.1
    target_noise_std: float = 0.2
    target_noise_clip: float = 0.5
    sac_init_alpha: float = 0.1


@dataclass
class LearnerConfig:
    """Update schedule."""

    utd_ratio: float = 1.0  # critic updates per environment step
    critic_warmup_updates: int = 0  # critic-only updates before the actor starts
    actor_every: int = 1  # one actor update per this many critic updates
    grad_clip: float = 0.0  # 0 = off
    seed: int = 0


@dataclass
class RLParts:
    """The shared sections every RL method config has."""

    replay: ReplayConfig = field(default_factory=ReplayConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)


def validate_parts(cfg: Any, where: str = "rl") -> RLParts:
    """Validate the shared sections of an RL config (extra method keys are ignored here)."""
    shared = {k: cfg[k] for k in ("replay", "critic", "actor", "learner") if k in cfg}
    parts = to_dataclass(shared, RLParts, where=where)
    problems = []
    if parts.replay.reward not in REWARDS:
        problems.append(f"{where}.replay.reward: '{parts.replay.reward}' is not one of {', '.join(REWARDS)}")
    if parts.actor.kind not in ACTOR_KINDS:
        problems.append(f"{where}.actor.kind: '{parts.actor.kind}' is not one of {', '.join(ACTOR_KINDS)}")
    if not 0 < parts.replay.gamma <= 1 or parts.replay.n_step < 1 or parts.replay.batch_size < 1:
        problems.append(f"{where}.replay: need 0 < gamma <= 1, n_step >= 1, batch_size >= 1")
    if any(r < 0 for r in parts.replay.ratios.values()) or not sum(parts.replay.ratios.values()) > 0:
        problems.append(f"{where}.replay.ratios: need non-negative ratios with a positive sum")
    if not 1 <= parts.critic.target_subset <= parts.critic.n_heads:
        problems.append(f"{where}.critic: need 1 <= target_subset <= n_heads")
    if parts.learner.utd_ratio <= 0:
        problems.append(f"{where}.learner.utd_ratio must be > 0")
    if problems:
        raise ValueError("; ".join(problems))
    return parts
