"""Speed measurements shared by ``rlstack sim bench`` and ``benchmarks/bench_sim.py``."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np


def control_rate(task: str = "lift", steps: int = 200, seed: int = 0, **robot_kwargs: Any) -> float:
    """Control steps per second of one robot driven by random actions, observing after every step."""
    from sim import make_robot

    robot = make_robot(task, seed=seed, **robot_kwargs)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps, 5))
    try:
        robot.reset(seed=seed)
        start = time.perf_counter()
        for i, a in enumerate(actions):
            robot.act(a)
            robot.observe()
            if (i + 1) % 50 == 0:  # keep the arm inside the workspace in long runs
                robot.reset(seed=seed + i)
        return steps / (time.perf_counter() - start)
    finally:
        robot.close()


def _worker(args: tuple[str, int, dict[str, Any]]) -> tuple[float, float, int]:
    task, steps, kwargs = args
    t0 = time.perf_counter()
    control_rate(task, steps, **kwargs)
    return t0, time.perf_counter(), steps


def parallel_rate(n_procs: int, task: str = "lift", steps: int = 200, **robot_kwargs: Any) -> float:
    """Aggregate control steps/s of ``n_procs`` spawned processes stepping at once (timed inside workers)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(n_procs) as pool:
        results = pool.map(_worker, [(task, steps, robot_kwargs)] * n_procs)
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    return sum(r[2] for r in results) / (end - start)
