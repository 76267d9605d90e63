"""Which pair a new session gets: compatible pairs only, under-evaluated first, or actively sampled.

Strategies (the probability of every candidate pair is returned so that it is stored with the session):

- ``uniform``: every compatible pair equally likely;
- ``balanced`` (default): weight ``1/(1+n_i) + 1/(1+n_j)`` so policies with few comparisons come up more;
- ``active``: expected reduction of the ranking loss (a one-step knowledge gradient). Under the current
  fit, theta ~ N(theta_hat, C) (its Laplace covariance); the loss of ordering i and j by the sign of
  their estimated gap d ~ N(delta, s^2) is E[|d| 1(sign d != sign delta)] = s phi(delta/s) - |delta|
  Phi(-|delta|/s), summed over every pair, so it is large for neighbours whose intervals overlap and
  near zero for pairs already separated. One more comparison of (i, j) adds its Davidson Fisher
  information to the precision (a rank-one update of C, Sherman-Morrison); the pair whose update
  shrinks the total loss most is the most useful next comparison. Weights are the reductions to the
  fourth power (normalised, so the best few pairs take most of the mass; over 30 simulated arenas of
  benchmarks/bench_arena.py the fourth power ranked better at 300 comparisons than the square, tau
  0.971 vs 0.964 and MMRV 1.0 vs 1.5 %) plus a uniform floor (``explore``) that keeps every pair
  reachable and protects against a wrong early fit.
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


def ranking_loss(delta: np.ndarray, var: np.ndarray) -> float:
    """Expected loss of ordering pairs by the sign of their estimated gap: sum of s phi(d/s) - |d| Phi(-|d|/s)."""
    s = np.sqrt(np.maximum(var, 1e-12))
    z = np.abs(delta) / s
    phi = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2))
    return float(np.sum(s * phi - np.abs(delta) * big_phi))


def davidson_information(d: float, log_nu: float) -> float:
    """Fisher information about the gap d = theta_i - theta_j carried by one Davidson comparison."""
    nu = math.exp(log_nu)
    w, lo = math.exp(d / 2), math.exp(-d / 2)
    total = w + lo + nu
    pw, pl = w / total, lo / total
    return (pw + pl) / 4 - (pw - pl) ** 2 / 4


def _active_weights(ids: list[int], pairs: list[tuple[int, int]], comparisons: Sequence[Comparison]) -> np.ndarray:
    """Expected reduction of the total ranking loss by one more comparison of each pair, to the fourth power."""
    relevant = [c for c in comparisons if c.a in ids and c.b in ids]
    model = fit(relevant, ids, with_hessian=True)
    cov = model.covariance()
    index = {pid: k for k, pid in enumerate(ids)}
    ia = np.array([index[i] for i, _ in pairs])
    ib = np.array([index[j] for _, j in pairs])
    delta = model.theta[ia] - model.theta[ib]

    def pair_var(c: np.ndarray) -> np.ndarray:
        return np.maximum(c[ia, ia] + c[ib, ib] - 2 * c[ia, ib], 0.0)

    base = ranking_loss(delta, pair_var(cov))
    out = np.zeros(len(pairs))
    for k in range(len(pairs)):
        u = np.zeros(len(ids))
        u[ia[k]], u[ib[k]] = 1.0, -1.0
        info = davidson_information(float(delta[k]), model.log_nu)
        cu = cov @ u
        new = cov - np.outer(cu, cu) * info / (1.0 + info * float(u @ cu))
        out[k] = max(base - ranking_loss(delta, pair_var(new)), 0.0)
    top = out.max()
    return (out / top) ** 4 if top > 0 else out  # scaled first: tiny reductions must not underflow to 0


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
