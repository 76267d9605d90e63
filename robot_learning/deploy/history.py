"""Observation history on a ``t_ref - k * dt`` grid, from streams that arrive at their own rates.

Each stream keeps a short buffer of (capture stamp, value). A policy input is built on the grid
``t_ref - (n_obs_steps - 1 - j) * dt`` where ``t_ref`` is the newest capture stamp over the
required streams (diffusion_policy's real-robot alignment); for every grid time the newest sample
captured at or before it is used, and the oldest sample pads a history that is still short.
Out-of-order or malformed samples are rejected with a reason and counted, never stored.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np


class ObservationRejected(ValueError):
    """A sample that was not stored; the message names the stream and the reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class HistoryStats:
    """Counters of rejected samples, per reason."""

    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    last_rejection: str = ""

    def reject(self, reason: str, text: str) -> None:
        """Count one rejected sample."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.last_rejection = text


class ObservationHistory:
    """Thread-safe per-stream buffers and grid sampling for policy inputs."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str] | None = None,
                 buffer_len: int = 64) -> None:
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.dtypes = {k: np.dtype((dtypes or {}).get(k, "uint8" if len(s) == 3 else "float32"))
                       for k, s in self.shapes.items()}
        self._buf: dict[str, deque[tuple[float, np.ndarray]]] = {k: deque(maxlen=buffer_len) for k in shapes}
        self._lock = threading.Lock()
        self.stats = HistoryStats()

    def clear(self) -> None:
        """Drop every buffered sample (episode boundary)."""
        with self._lock:
            for b in self._buf.values():
                b.clear()

    def add(self, key: str, value: np.ndarray, stamp: float) -> None:
        """Store one sample captured at ``stamp``; raise ObservationRejected (and count it) if unusable."""
        try:
            self._check(key, value, stamp)
        except ObservationRejected as exc:
            with self._lock:
                self.stats.reject(exc.reason, str(exc))
            raise
        arr = np.array(value, dtype=self.dtypes[key], copy=True).reshape(self.shapes[key])
        with self._lock:
            self._buf[key].append((float(stamp), arr))
            self.stats.accepted += 1

    def _check(self, key: str, value: np.ndarray, stamp: float) -> None:
        if key not in self.shapes:
            raise ObservationRejected("unknown", f"stream '{key}': unknown stream, not one of {sorted(self.shapes)}")
        if not isinstance(stamp, int | float) or not math.isfinite(stamp) or stamp <= 0:
            raise ObservationRejected("bad_stamp", f"stream '{key}': capture stamp {stamp!r} is not a valid time")
        arr = np.asarray(value)
        if arr.size != int(np.prod(self.shapes[key])):
            raise ObservationRejected(
                "bad_shape", f"stream '{key}': got shape {arr.shape}, expected {self.shapes[key]}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ObservationRejected("non_finite", f"stream '{key}': sample contains NaN or inf")
        buf = self._buf[key]
        if buf and stamp <= buf[-1][0]:
            raise ObservationRejected(
                "out_of_order", f"stream '{key}': out of order, stamp {stamp:.6f} is not after the previous {buf[-1][0]:.6f}")

    def newest_stamps(self) -> dict[str, float]:
        """Capture stamp of the newest sample per stream (NaN for a stream never received)."""
        with self._lock:
            return {k: (b[-1][0] if b else float("nan")) for k, b in self._buf.items()}

    def latest(self, key: str) -> np.ndarray | None:
        """The newest sample of one stream, or None."""
        with self._lock:
            b = self._buf.get(key)
            return b[-1][1].copy() if b else None

    def ready(self) -> bool:
        """Whether every stream has at least one sample."""
        with self._lock:
            return all(self._buf.values())

    def sample(self, n_steps: int, dt: float) -> tuple[dict[str, np.ndarray], float]:
        """Policy input ``{key: (n_steps, *shape)}`` on the grid ending at the newest stamp, and that stamp."""
        with self._lock:
            missing = [k for k, b in self._buf.items() if not b]
            if missing:
                raise ObservationRejected("not_ready", f"no sample yet from stream(s) {missing}")
            t_ref = max(b[-1][0] for b in self._buf.values())
            grid = [t_ref - (n_steps - 1 - j) * dt for j in range(n_steps)]
            out = {}
            for key, buf in self._buf.items():
                stamps = np.fromiter((s for s, _ in buf), dtype=np.float64, count=len(buf))
                # newest sample captured at or before each grid time (small tolerance for float noise)
                idx = np.searchsorted(stamps, np.asarray(grid) + 1e-6, side="right") - 1
                out[key] = np.stack([buf[max(int(i), 0)][1] for i in idx])
        return out, t_ref
