"""Which pair a new session gets: compatible pairs only, under-evaluated first, or actively sampled.

Strategies (the probability of every candidate pair is returned so that it is stored with the session):

- ``uniform``: every compatible pair equally likely;
- ``balanced`` (default): weight ``1/(1+n_i) + 1/(1+n_j)`` so policies with few comparisons come up more;
- ``active``: weight ``sd(theta_i - theta_j) * p_ij (1 - p_ij)`` from the current fit (its Laplace
  covariance), i.e. the pairs whose difference is both uncertain and informative (a comparison of two
  policies with p near 0.5 carries the most Fisher information); this shrinks the widest intervals
  between neighbours fastest. A floor (``explore``) of uniform mass keeps every pair reachable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot_learning.arena.ranking import Comparison, fit

STRATEGIES = ("uniform", "balanced", "active")


@dataclass(frozen=True)
class Candidate:
    """A policy as the scheduler sees it: id, declared interface, tasks it claims (empty: any)."""

    id: int
    obs_shapes: Mapping[str, Any]
    action_dim: int
    action_mode: str
    tasks: tuple[str, ...] = ()


def compatible(policy: Candidate, robot_obs: Mapping[str, Any], action_dim: int, action_mode: str,
               task: str) -> list[str]:
    """Why ``policy`` cannot run on this robot and task (empty: it can)."""
    from robot_learning.policies.base import PolicySpec
    from robot_learning.serve.server import spec_mismatches

    spec = PolicySpec(obs_shapes={k: tuple(v) for k, v in policy.obs_shapes.items()}, action_dim=policy.action_dim,
                      action_mode=policy.action_mode)
    problems = spec_mismatches(spec, dict(robot_obs), action_dim, action_mode)
    if policy.tasks and task not in policy.tasks:
        problems.append(f"task '{task}' not among the policy's tasks {list(policy.tasks)}")
    return problems


def pair_key(i: int, j: int) -> str:
    """Canonical key of an unordered pair (stored in the session's sampling table)."""
    return f"{min(i, j)}-{max(i, j)}"


def pair_weights(ids: Sequence[int], comparisons: Sequence[Comparison], strategy: str = "balanced",
                 explore: float = 0.1) -> dict[str, float]:
    """Sampling probability of every unordered pair of ``ids``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"scheduler strategy '{strategy}': choose from {', '.join(STRATEGIES)}")
    pairs = list(itertools.combinations(sorted(ids), 2))
    if not pairs:
        return {}
    if strategy == "uniform":
        w = np.ones(len(pairs))
    elif strategy == "balanced":
        n = {pid: 0 for pid in ids}
        for c in comparisons:
            for pid in (c.a, c.b):
                if pid in n:
                    n[pid] += 1
        w = np.array([1 / (1 + n[i]) + 1 / (1 + n[j]) for i, j in pairs])
    else:
        w = _active_weights(list(sorted(ids)), pairs, comparisons)
        w = w / w.sum() if w.sum() > 0 else np.ones(len(pairs)) / len(pairs)
        w = (1 - explore) * w + explore / len(pairs)
    w = w / w.sum()
    return {pair_key(i, j): float(p) for (i, j), p in zip(pairs, w, strict=True)}


def _active_weights(ids: list[int], pairs: list[tuple[int, int]], comparisons: Sequence[Comparison]) -> np.ndarray:
    """Uncertainty x information of every pair under the current fit."""
    relevant = [c for c in comparisons if c.a in ids and c.b in ids]
    model = fit(relevant, ids, with_hessian=True)
    cov = model.covariance()
    index = {pid: k for k, pid in enumerate(ids)}
    out = np.zeros(len(pairs))
    for k, (i, j) in enumerate(pairs):
        a, b = index[i], index[j]
        var = max(cov[a, a] + cov[b, b] - 2 * cov[a, b], 0.0)
        p = model.win_prob(a, b)
        out[k] = math.sqrt(var) * p * (1 - p)
    return out


def choose_pair(weights: Mapping[str, float], rng: np.random.Generator) -> tuple[int, int, float]:
    """Draw one pair; returns it in random A/B order with its probability."""
    if not weights:
        raise ValueError("no compatible pair of healthy policies for this robot and task")
    keys = sorted(weights)
    p = np.array([weights[k] for k in keys])
    k = int(rng.choice(len(keys), p=p / p.sum()))
    i, j = (int(s) for s in keys[k].split("-"))
    if rng.random() < 0.5:  # randomise which policy is slot A
        i, j = j, i
    return i, j, float(weights[keys[k]])
