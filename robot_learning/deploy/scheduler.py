"""Action scheduling with latency compensation and chunk blending.

Every chunk is stamped with the capture time ``t0`` of the observation it was computed from:
action ``i`` is the command for the control period ``[t0 + i * dt, t0 + (i + 1) * dt)`` (``index=hold``,
the default: a zero-order hold, which is how training data pairs an observation with the action
executed until the next one). When a chunk arrives late, the actions whose period has already
ended are dropped (counted as late), so the robot never replays the past. ``index=nearest`` (the
old behaviour) gave a tick the action whose start time is nearest, so a chunk arriving more than
half a period after its observation lost its first action although that action's period was
still running (measured: the first action of every chunk dropped, benchmarks/README.md). At each control
tick the scheduler answers "which action is due now", blending overlapping chunks:

- ``latest``: the newest chunk wins (diffusion_policy's real-robot behaviour).
- ``temporal_ensemble``: a weighted mean over every chunk that covers the tick, weights
  ``exp(-decay * k)`` with ``k = 0`` for the oldest chunk (ACT-style; ``decay`` < 0 favours new ones).
- ``crossfade``: after a new chunk arrives, fade linearly from the previous chunk to the new one
  over ``blend_steps`` ticks (a simple real-time-chunking style blend that keeps the arm from jerking).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

BlendMode = Literal["latest", "temporal_ensemble", "crossfade"]
BLEND_MODES = ("latest", "temporal_ensemble", "crossfade")
INDEX_MODES = ("hold", "nearest")


@dataclass
class SchedulerConfig:
    """How chunks are turned into a stream of actions."""

    blend: str = "latest"  # latest | temporal_ensemble | crossfade
    ensemble_decay: float = 0.1  # temporal_ensemble: weight exp(-decay * age rank)
    blend_steps: int = 3  # crossfade: ticks to fade from the old chunk to the new one
    max_exec_steps: int = 0  # use at most this many actions of a chunk (0 = the whole horizon)
    late_margin_s: float = 0.0  # actions due before now + margin are dropped as late (execution latency)
    index: str = "hold"  # hold: action i covers [t0+i*dt, t0+(i+1)*dt); nearest: the tick nearest t0+i*dt

    def __post_init__(self) -> None:
        if self.blend not in BLEND_MODES:
            raise ValueError(f"scheduler.blend: '{self.blend}' is not one of {', '.join(BLEND_MODES)}")
        if self.blend_steps < 1:
            raise ValueError(f"scheduler.blend_steps must be >= 1, got {self.blend_steps}")
        if self.index not in INDEX_MODES:
            raise ValueError(f"scheduler.index: '{self.index}' is not one of {', '.join(INDEX_MODES)}")
        if self.max_exec_steps < 0:
            raise ValueError(f"scheduler.max_exec_steps must be >= 0, got {self.max_exec_steps}")


@dataclass
class TimedChunk:
    """A chunk of actions with the capture time of the observation it came from."""

    actions: np.ndarray  # (n, action_dim)
    t0: float  # due time of actions[0] (the observation's capture time)
    dt: float
    arrived: float  # when it reached the scheduler (for blending and latency figures)
    seq: int = 0
    start: int = 0  # actions before this index were late on arrival and are never executed
    offset: float = 0.5  # 0: zero-order hold periods; 0.5: nearest grid point
    first_executed: bool = False

    @property
    def t_end(self) -> float:
        """Due time of the last action."""
        return self.t0 + (len(self.actions) - 1) * self.dt

    def index_at(self, t: float) -> int | None:
        """Index of the action due at ``t``, or None outside the chunk."""
        i = int(math.floor((t - self.t0) / self.dt + self.offset + 1e-9))
        return i if self.start <= i < len(self.actions) else None


@dataclass
class SchedulerStats:
    """Counters for diagnostics."""

    chunks: int = 0
    late_dropped: int = 0  # actions discarded because their time had passed on arrival
    stale_chunks: int = 0  # chunks with no action left in the future
    out_of_order_chunks: int = 0  # chunks older than the newest one already scheduled
    starved_ticks: int = 0  # ticks with no action due
    executed: int = 0
    obs_to_action_s: deque = field(default_factory=lambda: deque(maxlen=2000))  # capture -> first action of it


class ActionScheduler:
    """Holds timed chunks and answers which action is due at a control tick."""

    def __init__(self, dt: float, config: SchedulerConfig | None = None) -> None:
        if not dt > 0:
            raise ValueError(f"scheduler dt must be positive, got {dt}")
        self.dt = dt
        self.config = config or SchedulerConfig()
        self.stats = SchedulerStats()
        self._chunks: list[TimedChunk] = []
        self._seq = 0
        self._ticks_since_new = 0

    def clear(self) -> None:
        """Forget every chunk (episode boundary, takeover, e-stop)."""
        self._chunks.clear()

    def add_chunk(self, actions: np.ndarray, t0: float, now: float) -> int:
        """Schedule a chunk computed from an observation captured at ``t0``; return how many actions are usable."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2:
            raise ValueError(f"chunk must be (n, action_dim), got shape {actions.shape}")
        if self.config.max_exec_steps:
            actions = actions[: self.config.max_exec_steps]
        if self._chunks and t0 <= self._chunks[-1].t0:
            # Inference results can overtake each other (e.g. after a reconnect); keep the newest.
            self.stats.out_of_order_chunks += 1
            return 0
        self.stats.chunks += 1
        first_due = now + self.config.late_margin_s
        # hold: action k is late once its period has ended (k + 1 <= (first_due - t0)/dt); nearest: once
        # first_due is past the window of the tick nearest to t0 + k*dt (k < (first_due - t0)/dt - 1/2).
        offset = self._offset()
        x = (first_due - t0) / self.dt
        n_late_f = math.floor(x + 1e-9) if offset == 0.0 else math.ceil(x - 0.5 - 1e-9)
        n_late = int(np.clip(n_late_f, 0, len(actions)))
        self.stats.late_dropped += n_late
        if n_late >= len(actions):
            self.stats.stale_chunks += 1
            return 0
        self._seq += 1
        chunk = TimedChunk(actions=actions.copy(), t0=t0, dt=self.dt, arrived=now, seq=self._seq, start=n_late,
                           offset=offset)
        self._chunks.append(chunk)
        self._ticks_since_new = 0
        self._prune(now)
        return len(actions) - n_late

    def _offset(self) -> float:
        return 0.0 if self.config.index == "hold" else 0.5

    def _prune(self, now: float) -> None:
        """Drop chunks whose last action is in the past."""
        horizon = now - self.dt
        self._chunks = [c for c in self._chunks if c.t_end >= horizon]

    def newest(self) -> TimedChunk | None:
        """The most recent chunk, if any."""
        return self._chunks[-1] if self._chunks else None

    def remaining(self, now: float) -> int:
        """Actions of the newest chunk still due at or after ``now``."""
        c = self.newest()
        if c is None:
            return 0
        return max(0, len(c.actions) - max(0, int(math.ceil((now - c.t0) / self.dt - self._offset()))))

    def _candidates(self, t: float) -> list[tuple[TimedChunk, np.ndarray]]:
        out = []
        for c in self._chunks:
            i = c.index_at(t)
            if i is not None:  # NaN rows pass through: the safety layer rejects them with a reason
                out.append((c, c.actions[i]))
        return out

    def action_at(self, now: float) -> np.ndarray | None:
        """The blended action due at ``now``; None when no chunk covers it (starved)."""
        self._prune(now)
        cands = self._candidates(now)
        self._ticks_since_new += 1
        if not cands:
            self.stats.starved_ticks += 1
            return None
        mode = self.config.blend
        if mode == "latest" or len(cands) == 1:
            action = cands[-1][1]
        elif mode == "temporal_ensemble":
            w = np.exp(-self.config.ensemble_decay * np.arange(len(cands)))
            action = np.sum([w_k * a for w_k, (_, a) in zip(w, cands, strict=True)], axis=0) / w.sum()
        else:  # crossfade between the previous and the newest chunk
            alpha = min(1.0, self._ticks_since_new / self.config.blend_steps)
            action = (1.0 - alpha) * cands[-2][1] + alpha * cands[-1][1]
        newest = cands[-1][0]
        self.stats.executed += 1
        if not newest.first_executed:  # obs->action latency: capture -> first command computed from it
            newest.first_executed = True
            self.stats.obs_to_action_s.append(now - newest.t0)
        return np.asarray(action, dtype=np.float64)
