"""Reward labels as plain functions of a stored episode.

Each function maps ``(info, steps)`` -- the episode's ``EpisodeInfo`` and its per-step arrays
(``reward``, ``intervention``, ``control_source`` ... where the store has them) -- to a float32
array with one reward per step: ``reward[t]`` is earned by the action executed at step ``t``.
Labels are computed when a replay source loads an episode; nothing stored is rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from robot_learning.data.layout import EpisodeInfo

RewardFn = Callable[[EpisodeInfo, Mapping[str, np.ndarray]], np.ndarray]


def stored_reward(info: EpisodeInfo, steps: Mapping[str, np.ndarray]) -> np.ndarray:
    """The reward the writer recorded (``reward`` key)."""
    if "reward" not in steps:
        raise ValueError(f"episode {info.index} has no stored 'reward' (choose a labelling such as sparse_success)")
    return np.asarray(steps["reward"], dtype=np.float32).reshape(info.length)


def sparse_success(info: EpisodeInfo, steps: Mapping[str, np.ndarray]) -> np.ndarray:
    """1 on the last step of a successful episode, 0 elsewhere (ResFiT, HIL-SERL)."""
    r = np.zeros(info.length, dtype=np.float32)
    if info.success and info.length:
        r[-1] = 1.0
    return r


def step_penalty(info: EpisodeInfo, steps: Mapping[str, np.ndarray]) -> np.ndarray:
    """-1 per step, 0 on the last step of a successful episode (V-GPS / Cal-QL's labelling)."""
    r = np.full(info.length, -1.0, dtype=np.float32)
    if info.success and info.length:
        r[-1] = 0.0
    return r


def intervention_reward(info: EpisodeInfo, steps: Mapping[str, np.ndarray]) -> np.ndarray:
    """-1 on the policy step just before each takeover starts, 0 elsewhere (RLIF); the episode is not split."""
    if "intervention" not in steps:
        raise ValueError(f"episode {info.index} has no 'intervention' key: intervention rewards need the "
                         "per-step intervention flag the policy node records")
    flag = np.asarray(steps["intervention"], dtype=bool).reshape(info.length)
    r = np.zeros(info.length, dtype=np.float32)
    starts = np.flatnonzero(flag[1:] & ~flag[:-1])  # t: policy at t, person in control at t + 1
    r[starts] = -1.0
    return r


REWARDS: dict[str, RewardFn] = {
    "stored": stored_reward,
    "sparse_success": sparse_success,
    "step_penalty": step_penalty,
    "intervention": intervention_reward,
}


def reward_fn(name_or_fn: str | RewardFn) -> RewardFn:
    """A labelling function by name (``stored``, ``sparse_success``, ``step_penalty``, ``intervention``) or as given."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in REWARDS:
        raise ValueError(f"unknown reward labelling '{name_or_fn}' (choose from {', '.join(REWARDS)})")
    return REWARDS[name_or_fn]


def end_is_terminal(info: EpisodeInfo, steps: Mapping[str, np.ndarray]) -> bool:
    """Whether the episode ended in a true terminal state (no bootstrapping past its last step).

    The step schema's ``terminal``/``done`` flags decide where the writer recorded them; otherwise a
    success is terminal and anything else a truncation (time limit, operator stop).
    """
    if info.length == 0:
        return False
    if "terminal" in steps and "done" in steps and bool(np.asarray(steps["done"])[-1]):
        return bool(np.asarray(steps["terminal"])[-1])
    return bool(info.success)


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Monte-Carlo return-to-go of every step (to the episode's end, no bootstrap)."""
    out = np.zeros(len(rewards), dtype=np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out.astype(np.float32)
