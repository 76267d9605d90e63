"""Small statistics shared by every report: success rates are always given with a Wilson interval."""

from __future__ import annotations

import math
from collections.abc import Sequence


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95 % by default) for ``successes`` out of ``n`` trials."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, {n}]")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def format_rate(successes: int, n: int, seeds: Sequence[int] | None = None) -> str:
    """'0.92 (46/50, Wilson 95% CI 0.81-0.97, seeds 0-49)': the one way success is printed."""
    lo, hi = wilson_interval(successes, n)
    rate = successes / n if n else float("nan")
    text = f"{rate:.2f} ({successes}/{n}, Wilson 95% CI {lo:.2f}-{hi:.2f}"
    if seeds is not None and len(seeds):
        seeds = list(seeds)
        contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
        text += f", seeds {seeds[0]}-{seeds[-1]}" if contiguous else f", seeds {seeds}"
    return text + ")"
