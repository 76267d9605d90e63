"""Observation history on a ``t_ref - k * dt`` grid, from streams that arrive at their own rates.

Each stream keeps a short buffer of (capture stamp, value). A policy input is built on the grid
``t_ref - (n_obs_steps - 1 - j) * dt``. Two choices decide whether the node feeds the policy what
training (and the direct sim evaluation) fed it, consecutive control steps of one instant each:

- ``reference``: ``complete`` (default) puts ``t_ref`` at the newest instant that *every* stream has
  reached (the oldest of the per-stream newest stamps), so a joint sample that arrives before the
  camera frame of the same tick never pairs fresh joints with last tick's images; ``newest`` (the
  old behaviour) uses the newest stamp over any stream.
- ``align``: ``nearest`` (default) takes, for each grid time, the sample whose stamp is nearest to
  it; ``at_or_before`` (the old behaviour) the newest one captured at or before it, which with a
  robot publishing at the policy rate and a few ms of stamp jitter picks the frame *two* ticks back
  for the older slot about half the time (measured, benchmarks/README.md, deploy parity).

The oldest sample pads a history that is still short. Out-of-order, future-stamped or malformed
samples are rejected with a reason and counted, never stored; a backwards clock jump (three samples
in a row far behind the stream's newest) clears the stream's buffer (the history is then short and the robot holds until fresh samples arrive), so one
bad stamp never blocks the valid samples after it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

ALIGN_MODES = ("nearest", "at_or_before")
REFERENCE_MODES = ("complete", "newest")


REPLAN_MODES = ("observation", "early")
JUMP_SAMPLES = 3  # consecutive samples this far behind = a clock jump, not one stale message


@dataclass
class HistoryConfig:
    """How the node builds policy inputs and when it re-plans (``deploy.history``)."""

    align: str = "nearest"  # nearest | at_or_before: which sample fills a history slot
    reference: str = "complete"  # complete | newest: the instant the newest slot shows
    # observation: re-plan from the observation taken when the executed part of the chunk is used up
    # (as direct evaluation does); early: start by the measured latency before the executed part ends
    replan: str = "observation"
    max_future_s: float = 0.5  # samples stamped further ahead of this node's clock are rejected
    clock_jump_s: float = 2.0  # a stamp this far behind the stream's newest = the clock jumped back

    def __post_init__(self) -> None:
        if self.align not in ALIGN_MODES:
            raise ValueError(f"history.align: '{self.align}' is not one of {ALIGN_MODES}")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"history.reference: '{self.reference}' is not one of {REFERENCE_MODES}")
        if self.replan not in REPLAN_MODES:
            raise ValueError(f"history.replan: '{self.replan}' is not one of {REPLAN_MODES}")
        if self.max_future_s <= 0 or self.clock_jump_s <= 0:
            raise ValueError("history.max_future_s and history.clock_jump_s must be > 0")


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
    clock_jumps: int = 0
    warnings: list[str] = field(default_factory=list)  # one line per kind, for the node to log once

    def reject(self, reason: str, text: str) -> None:
        """Count one rejected sample."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.last_rejection = text


class ObservationHistory:
    """Thread-safe per-stream buffers and grid sampling for policy inputs."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str] | None = None,
                 buffer_len: int = 64, align: str = "nearest", reference: str = "complete",
                 max_future_s: float = 0.5, clock_jump_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        if align not in ALIGN_MODES:
            raise ValueError(f"history.align: '{align}' is not one of {ALIGN_MODES}")
        if reference not in REFERENCE_MODES:
            raise ValueError(f"history.reference: '{reference}' is not one of {REFERENCE_MODES}")
        self.align, self.reference = align, reference
        self.max_future_s, self.clock_jump_s, self.clock = max_future_s, clock_jump_s, clock
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.dtypes = {k: np.dtype((dtypes or {}).get(k, "uint8" if len(s) == 3 else "float32"))
                       for k, s in self.shapes.items()}
        self._buf: dict[str, deque[tuple[float, np.ndarray]]] = {k: deque(maxlen=buffer_len) for k in shapes}
        self._lock = threading.Lock()
        self.stats = HistoryStats()
        self._behind: dict[str, int] = {}

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
        now = self.clock()
        if stamp > now + self.max_future_s:
            # Stored, it would make every later valid sample look out of order; rejected, it costs one sample.
            raise ObservationRejected(
                "future_stamp", f"stream '{key}': stamp {stamp:.6f} is {stamp - now:.3f} s in the future "
                f"(limit {self.max_future_s} s): publisher clock ahead of this node's")
        buf = self._buf[key]
        if buf and stamp < buf[-1][0] - self.clock_jump_s:
            # Far behind: one such sample is a stale or replayed message (rejected below); JUMP_SAMPLES in a
            # row mean the publisher's clock went back (NTP step, restarted driver). Then forget this stream's
            # samples instead of rejecting everything after the jump; the short history holds the robot.
            self._behind[key] = self._behind.get(key, 0) + 1
            if self._behind[key] >= JUMP_SAMPLES:
                with self._lock:
                    jump = buf[-1][0] - stamp
                    buf.clear()
                    self.stats.clock_jumps += 1
                    self._behind[key] = 0
                    self._warn("clock_jump", f"stream '{key}': capture clock jumped back by {jump:.3f} s; "
                               "history of the stream cleared")
                return
        else:
            self._behind[key] = 0
        if buf and stamp <= buf[-1][0]:
            raise ObservationRejected(
                "out_of_order", f"stream '{key}': out of order, stamp {stamp:.6f} is not after the previous {buf[-1][0]:.6f}")

    def _warn(self, kind: str, text: str) -> None:
        """Remember the first warning of each kind (the node logs it once)."""
        if not any(w.startswith(kind + ":") for w in self.stats.warnings):
            self.stats.warnings.append(f"{kind}: {text}")

    def check_streams(self, dt: float, lag_warn_s: float = 0.05) -> list[str]:
        """Warn once (kept in ``stats.warnings``) about a stream whose rate is off the policy's or that lags the others."""
        with self._lock:
            stamps = {k: np.fromiter((s for s, _ in b), dtype=np.float64, count=len(b)) for k, b in self._buf.items()}
            for key, st in stamps.items():
                if len(st) >= 8:
                    period = float(np.median(np.diff(st)))
                    if period > 1.3 * dt:  # slower than the policy: slots repeat samples
                        self._warn(f"rate_{key}", f"stream '{key}' publishes at {1.0 / period:.1f} Hz, below the "
                                   f"policy's {1.0 / dt:.1f} Hz: history slots repeat samples")
            newest = {k: st[-1] for k, st in stamps.items() if len(st)}
            if len(newest) > 1:
                lead = max(newest.values())
                for key, t in newest.items():
                    if lead - t > lag_warn_s and len(stamps[key]) >= 8:
                        self._warn(f"lag_{key}", f"stream '{key}' lags the newest stream by {(lead - t) * 1e3:.0f} ms; "
                                   "policy inputs use the instant every stream has reached")
            return list(self.stats.warnings)

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

    def reference_stamp(self) -> float:
        """``t_ref`` of the next policy input (NaN until every stream has a sample)."""
        with self._lock:
            if not all(self._buf.values()):
                return float("nan")
            newest = [b[-1][0] for b in self._buf.values()]
        return min(newest) if self.reference == "complete" else max(newest)

    def sample(self, n_steps: int, dt: float) -> tuple[dict[str, np.ndarray], float]:
        """Policy input ``{key: (n_steps, *shape)}`` on the grid ending at ``t_ref``, and ``t_ref``."""
        out, t_ref, _ = self.sample_with_stamps(n_steps, dt)
        return out, t_ref

    def sample_with_stamps(self, n_steps: int, dt: float) -> tuple[dict[str, np.ndarray], float, dict[str, np.ndarray]]:
        """``sample`` plus the capture stamp of the sample placed in every slot (for traces and checks)."""
        with self._lock:
            missing = [k for k, b in self._buf.items() if not b]
            if missing:
                raise ObservationRejected("not_ready", f"no sample yet from stream(s) {missing}")
            newest = [b[-1][0] for b in self._buf.values()]
            t_ref = min(newest) if self.reference == "complete" else max(newest)
            grid = np.asarray([t_ref - (n_steps - 1 - j) * dt for j in range(n_steps)])
            out, used = {}, {}
            for key, buf in self._buf.items():
                stamps = np.fromiter((s for s, _ in buf), dtype=np.float64, count=len(buf))
                idx = self._indices(stamps, grid, t_ref)
                out[key] = np.stack([buf[int(i)][1] for i in idx])
                used[key] = stamps[idx]
        return out, t_ref, used

    def _indices(self, stamps: np.ndarray, grid: np.ndarray, t_ref: float) -> np.ndarray:
        """Buffer index per grid time; never a sample newer than ``t_ref`` (+ float noise)."""
        last = int(np.searchsorted(stamps, t_ref + 1e-6, side="right")) - 1
        # newest sample captured at or before each grid time (small tolerance for float noise)
        before = np.clip(np.searchsorted(stamps, grid + 1e-6, side="right") - 1, 0, max(last, 0))
        if self.align == "at_or_before":
            return before
        after = np.minimum(before + 1, max(last, 0))
        pick_after = np.abs(stamps[after] - grid) < np.abs(stamps[before] - grid)
        return np.where(pick_after, after, before)
