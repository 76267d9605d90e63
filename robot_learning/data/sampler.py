"""Window index arithmetic for training samples (diffusion_policy semantics, vectorised with numpy).

A window is ``horizon`` consecutive steps starting at ``s`` within an episode of length ``L``; ``s``
runs from ``-pad_before`` to ``L - horizon + pad_after``. Steps outside the episode repeat the first
(or last) frame, i.e. a step index is clipped into ``[0, L-1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def window_starts(length: int, horizon: int, pad_before: int, pad_after: int) -> np.ndarray:
    """Start offsets (relative to the episode, may be negative) of every window in one episode."""
    if horizon < 1 or pad_before < 0 or pad_after < 0:
        raise ValueError(f"need horizon >= 1 and pads >= 0, got {horizon=}, {pad_before=}, {pad_after=}")
    return np.arange(-pad_before, length - horizon + pad_after + 1, dtype=np.int64)


def window_rows(starts: np.ndarray, ep_start: np.ndarray, ep_length: np.ndarray, steps: int) -> np.ndarray:
    """Absolute row indices (n, steps) of the first ``steps`` steps of each window, edge-padded."""
    offsets = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(steps, dtype=np.int64)[None, :]
    clipped = np.clip(offsets, 0, np.asarray(ep_length, dtype=np.int64)[:, None] - 1)
    return clipped + np.asarray(ep_start, dtype=np.int64)[:, None]


def build_windows(
    lengths: Sequence[int], horizon: int, pad_before: int, pad_after: int
) -> tuple[np.ndarray, np.ndarray]:
    """For episodes of the given lengths: (episode position, start offset) of every window."""
    episode_pos, starts = [], []
    for pos, length in enumerate(lengths):
        s = window_starts(int(length), horizon, pad_before, pad_after)
        episode_pos.append(np.full(len(s), pos, dtype=np.int64))
        starts.append(s)
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(episode_pos), np.concatenate(starts)
