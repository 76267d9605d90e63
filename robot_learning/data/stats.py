"""Normalization statistics computed from a store; plain-list dicts so they go into checkpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot_learning.data.store import IMAGE_PREFIX, EpisodeStore

MAX_IMAGE_FRAMES = 256  # images: per-channel stats from an even subsample of frames
IMAGE_PIXEL_STRIDE = 4


@dataclass
class KeyStats:
    """Per-element statistics of one key (per channel for images), float32 arrays."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and ints (JSON/msgpack friendly)."""
        d: dict[str, Any] = {k: np.asarray(getattr(self, k)).tolist() for k in ("min", "max", "mean", "std", "q01", "q99")}
        d["count"] = int(self.count)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KeyStats:
        """Inverse of to_dict."""
        missing = [k for k in ("min", "max", "mean", "std", "q01", "q99") if k not in d]
        if missing:
            raise ValueError(f"KeyStats.from_dict: missing field(s) {missing}")
        arrays = {k: np.asarray(d[k], dtype=np.float32) for k in ("min", "max", "mean", "std", "q01", "q99")}
        return cls(**arrays, count=int(d.get("count", 0)))

    @classmethod
    def from_samples(cls, x: np.ndarray) -> KeyStats:
        """Statistics over axis 0 of ``x``."""
        x = np.asarray(x, dtype=np.float64)
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        f32 = np.float32
        return cls(min=x.min(0).astype(f32), max=x.max(0).astype(f32), mean=x.mean(0).astype(f32),
                   std=x.std(0).astype(f32), q01=q01.astype(f32), q99=q99.astype(f32), count=len(x))


def compute_stats(
    store: EpisodeStore, keys: Sequence[str], episodes: Sequence[int] | None = None
) -> dict[str, KeyStats]:
    """min/max/mean/std/q01/q99 of each key over the given episodes (all committed ones by default).

    Low-dim keys: per element over every step. Images: per channel over an even subsample of up to
    MAX_IMAGE_FRAMES frames (every IMAGE_PIXEL_STRIDE-th pixel), in raw 0..255 units.
    """
    infos = store.episodes() if episodes is None else [store.episode(int(i)) for i in episodes]
    if not infos:
        raise ValueError(f"compute_stats: no episodes selected in {store.uri}")
    out: dict[str, KeyStats] = {}
    for key in keys:
        if key not in store.keys:
            raise ValueError(f"compute_stats: key {key!r} is not in {store.uri} (keys: {sorted(store.keys)})")
        if key.startswith(IMAGE_PREFIX):
            total = sum(e.length for e in infos)
            picks = set(np.linspace(0, total - 1, min(total, MAX_IMAGE_FRAMES)).round().astype(int).tolist())
            frames, seen = [], 0
            for e in infos:
                local = [p - seen for p in sorted(picks) if seen <= p < seen + e.length]
                seen += e.length
                for t in local:
                    img = store.read_rows(key, e.start + t, e.start + t + 1)[0]
                    frames.append(img[::IMAGE_PIXEL_STRIDE, ::IMAGE_PIXEL_STRIDE].reshape(-1, img.shape[-1]))
            out[key] = KeyStats.from_samples(np.concatenate(frames))
        else:
            out[key] = KeyStats.from_samples(np.concatenate([store.read_rows(key, e.start, e.end) for e in infos]))
    return out
