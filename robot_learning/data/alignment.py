"""Plain-Python stream alignment shared by the recorder node and the rosbag2 importer (no rclpy).

Streams arrive at their own rates (cameras 30 Hz, joint states up to 500 Hz, commands at the
control rate). One stream is the *clock*: its messages, decimated to ``control_hz``, define the
steps. Every other stream is sampled at each step time by its header stamp:

- ``nearest``: the sample whose stamp is closest to the step time (sensors). Alignment error is
  ``|stamp - step time|``; a step waits until a later sample proves nothing closer can come, and is
  dropped (counted in ``missing_steps``) if the closest sample is more than half a period away.
- ``next``: the first sample after the step time that no earlier step used, within 1.5 control
  periods (commands: the action sent in response to the observation of this step, which under load
  may arrive after the next observation). Unstamped messages carry their receive time. Timing
  cannot tell a skipped answer from a late one: after a skip, one step takes the following answer
  and the episode loses one step (counted in ``missing_steps``).
- ``latest``: the newest sample at or before the step time (flags such as ``/intervention``).

Bad samples (NaN, wrong size or encoding, missing, out-of-order or future stamps, joint names that
do not match the configured order) are rejected with a ``SampleError`` naming the stream, the reason
and its figures (``kind`` says which problem, counted per kind); they never stop the episode. Shapes
come from the configuration (``StreamConfig.declared_shapes``); a stream without one (a bare
``--stream`` spec) is held until ``LOCK_SAMPLES`` consecutive samples agree, so no single first
message decides. A stamp more than ``max_future_s`` ahead of the receive clock is rejected and never
becomes the reference later samples are ordered against.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot_learning.data.streams import (  # noqa: F401  (re-exported: the recorder's and importer's one import point)
    MODES,
    ROS_TYPES,
    STREAM_TYPES,
    SampleError,
    StreamConfig,
    decode,
    joint_layout,
)

GAP_PERIODS = 2.5  # an interval longer than this many periods is a gap (frames missing), not jitter
MAX_DROP_CAUSES = 64  # distinct dropped-tick causes kept per episode (EpisodeAligner.drops); the rest are lumped


@dataclass
class StreamStats:
    """Per-stream counters and alignment error of one episode."""

    received: int = 0
    rejected: int = 0  # bad input (NaN, size, encoding, stamps)
    lost: int = 0  # reported lost by DDS (message_lost events)
    gaps: int = 0  # frames missing judging by stamps and the nominal rate
    missing_steps: int = 0  # steps dropped because this stream had no sample for them
    align_err_sum: float = 0.0
    align_err_max: float = 0.0
    aligned: int = 0
    last_error: str = ""
    rejected_by: dict[str, int] = field(default_factory=dict)  # rejections per problem kind
    first_stamp: float = math.nan
    last_stamp: float = math.nan
    raw: int = 0  # samples kept in streams/

    def reject(self, exc: SampleError) -> None:
        """Count one rejected message under its problem kind."""
        self.rejected += 1
        self.rejected_by[exc.kind] = self.rejected_by.get(exc.kind, 0) + 1
        self.last_error = str(exc)

    @property
    def rate_hz(self) -> float:
        """Measured rate of the accepted samples (0 before two)."""
        span = self.last_stamp - self.first_stamp
        return (self.received - 1) / span if self.received > 1 and span > 0 else 0.0

    @property
    def dropped(self) -> int:
        """Frames that did not make it into the episode through the recorder's fault or the transport's."""
        return self.rejected + self.lost

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (errors in milliseconds)."""
        return {
            "received": self.received,
            "rejected": self.rejected,
            "lost": self.lost,
            "dropped": self.dropped,
            "gaps": self.gaps,
            "missing_steps": self.missing_steps,
            "align_err_mean_ms": 1e3 * self.align_err_sum / self.aligned if self.aligned else 0.0,
            "align_err_max_ms": 1e3 * self.align_err_max,
            "rate_hz": round(self.rate_hz, 2),
            "rejected_by": dict(self.rejected_by),
            "raw": self.raw,
            "last_error": self.last_error,
        }


class _Buffer:
    """One stream's samples in stamp order (out-of-order samples are rejected before they get here)."""

    __slots__ = ("stamps", "values")

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.values: list[dict[str, np.ndarray]] = []

    def append(self, stamp: float, values: dict[str, np.ndarray]) -> None:
        self.stamps.append(stamp)
        self.values.append(values)

    def prune_before(self, horizon: float) -> None:
        """Forget samples older than ``horizon``, keeping the newest of them (a held value)."""
        i = bisect.bisect_left(self.stamps, horizon) - 1
        if i > 0:
            del self.stamps[:i]
            del self.values[:i]


@dataclass
class Step:
    """One aligned control step: every key's value and the capture stamp it came from."""

    t: float
    data: dict[str, np.ndarray]
    stamps: dict[str, float] = field(default_factory=dict)


class EpisodeAligner:
    """Aligns the streams of one episode to the control clock, incrementally (see module docstring)."""

    def __init__(
        self,
        streams: Iterable[StreamConfig],
        clock: str,
        control_hz: float,
        start_time: float = -math.inf,
        max_wait_s: float = 1.0,
        max_align_err_s: float | None = None,
        max_future_s: float = 1.0,
    ) -> None:
        self.streams = {s.name: s for s in streams}
        if clock not in self.streams:
            raise ValueError(f"clock stream '{clock}' is not one of the recorded streams {sorted(self.streams)}")
        if self.streams[clock].mode != "nearest":
            raise ValueError(f"clock stream '{clock}' must have mode 'nearest'")
        if control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {control_hz}")
        if max_future_s <= 0:
            raise ValueError(f"max_future_s must be > 0, got {max_future_s}")
        self.clock = clock
        self.period = 1.0 / control_hz
        self.start_time = start_time  # samples stamped before this belong to no episode
        self.max_wait_s = max_wait_s  # a stream silent this long after a step no longer holds it up
        # A stamp further ahead of the receive clock than this is a wrong clock, not a capture time;
        # accepted, it would make every later valid sample of the stream look out of order.
        self.max_future_s = float(max_future_s)
        # A step whose nearest sample of some stream is farther than this is dropped, not recorded
        # with a stale frame (default: half a control period).
        self.max_align_err_s = 0.5 * self.period if max_align_err_s is None else float(max_align_err_s)
        self.samples: dict[str, _Buffer] = {n: _Buffer() for n in self.streams}
        self.last_stamp: dict[str, float] = {}
        self.stats = {n: StreamStats() for n in self.streams}
        self.pending: deque[float] = deque()  # step times not yet resolved
        self.steps_out = 0
        self.notes: list[tuple[str, str]] = []  # (kind, text) worth logging that rejected nothing
        self._due: float | None = None
        self._last_values: dict[str, tuple[float, dict[str, np.ndarray]]] = {}
        self._consumed: dict[str, float] = {}  # next-mode streams: stamp of the last sample a step used
        # Shapes come from the configuration; an undeclared stream's shape is the one LOCK_SAMPLES
        # consecutive samples agree on (held back until then), so one bad first message decides nothing.
        self._shapes: dict[str, dict[str, tuple[int, ...]] | None] = {
            n: s.declared_shapes() for n, s in self.streams.items()}
        self._unlocked: dict[str, list[tuple[float, dict[str, np.ndarray]]]] = {
            n: [] for n, shp in self._shapes.items() if shp is None}
        self._intervals: dict[str, deque[float]] = {n: deque(maxlen=256) for n in self.streams}
        self._iv_sum: dict[str, float] = {}
        # measured period per stream (the nominal one until 8 intervals are in)
        self._median_dt: dict[str, float] = {n: 1.0 / s.rate_hz for n, s in self.streams.items() if s.rate_hz > 0}
        self._gap_debt: dict[str, tuple[int, float]] = {}
        self._raw: dict[str, tuple[list[np.ndarray], list[float]]] = {
            k: ([], []) for s in self.streams.values() if s.keep_raw for k in s.keys}
        self.drops: dict[str, int] = {}  # why control ticks were dropped -> how many (see drop_reason)
        self.t0: float | None = None  # the first control tick (drop reasons give times from it)

    LOCK_SAMPLES = 5

    # ---------------------------------------------------------------- input
    def add(self, name: str, stamp: float | None, values: dict[str, np.ndarray], recv_time: float) -> None:
        """Add one decoded sample; raises SampleError (and counts it) when it cannot be used."""
        stream = self.streams[name]
        st = self.stats[name]
        where = f"stream '{name}' ({stream.topic}): "
        try:
            if stamp is None:
                if stream.stamped:
                    raise SampleError(where + "message has no header stamp", "no_stamp")
                stamp = recv_time
            if not math.isfinite(stamp) or stamp <= 0.0:
                raise SampleError(where + f"missing or invalid header stamp ({stamp})", "bad_stamp")
            if stamp > recv_time + self.max_future_s:
                raise SampleError(where + f"stamp {stamp:.6f} is {stamp - recv_time:.3f} s ahead of the receive "
                                  f"clock (limit {self.max_future_s:g} s): the publisher's clock is wrong", "future_stamp")
            prev = self.last_stamp.get(name)
            if prev is not None and stamp <= prev:
                raise SampleError(where + f"out-of-order stamp {stamp:.6f} <= previous {prev:.6f} "
                                  f"({prev - stamp:.3f} s behind)", "out_of_order")
            shapes = self._shapes[name]
            if shapes is not None:
                for key, v in values.items():
                    if v.shape != shapes[key]:
                        raise SampleError(where + f"'{key}' has shape {v.shape}, the configuration declares "
                                          f"{shapes[key]}", "shape")
        except SampleError as exc:
            st.reject(exc)
            raise
        if stamp < self.start_time:
            if stream.mode == "latest":
                self.carry_in(name, stamp, values)  # a flag set before the start still holds
            return  # otherwise from before the episode started: not an error, just not ours
        if self._shapes[name] is None:
            self.last_stamp[name] = stamp
            self._vote(name, stamp, values)
            return
        self._accept(name, stamp, values)

    def _vote(self, name: str, stamp: float, values: dict[str, np.ndarray], final: bool = False) -> None:
        """Hold an undeclared stream's samples until LOCK_SAMPLES in a row agree on a shape."""
        held = self._unlocked[name]
        if not final:
            held.append((stamp, values))
        if not held:
            return
        shape_of = [tuple((k, v.shape) for k, v in vals.items()) for _t, vals in held]
        run = 1
        while run < len(shape_of) and shape_of[-run - 1] == shape_of[-1]:
            run += 1
        if run < self.LOCK_SAMPLES and not final:
            return
        winner = shape_of[-1] if run >= self.LOCK_SAMPLES else max(set(shape_of), key=shape_of.count)
        self._shapes[name] = dict(winner)
        self.notes.append(("shape", f"stream '{name}' ({self.streams[name].topic}): no shape configured; "
                                    f"using {dict(winner)}, agreed by {shape_of.count(winner)} samples"))
        del self._unlocked[name]
        for (t, vals), shp in zip(held, shape_of, strict=True):
            if shp == winner:
                self._accept(name, t, vals)
            else:
                self.stats[name].reject(SampleError(
                    f"stream '{name}' ({self.streams[name].topic}): shape {dict(shp)} differs from the "
                    f"stream's {dict(winner)}", "shape"))

    def _accept(self, name: str, stamp: float, values: dict[str, np.ndarray]) -> None:
        stream, st = self.streams[name], self.stats[name]
        prev = self._last_values.get(name)
        if prev is not None and prev[0] >= self.start_time:
            self._count_gap(name, stamp - prev[0], stamp)
        if st.received == 0:
            st.first_stamp = stamp
        st.received += 1
        st.last_stamp = stamp
        self.last_stamp[name] = stamp
        self._last_values[name] = (stamp, values)
        self.samples[name].append(stamp, values)
        if stream.keep_raw:
            for key, v in values.items():
                vals, stamps = self._raw[key]
                vals.append(v)
                stamps.append(stamp)
            st.raw += 1
        if name == self.clock:
            self._maybe_step(stamp)

    def _count_gap(self, name: str, dt: float, stamp: float) -> None:
        """Frames missing, judged against the stream's measured rate, not its jitter.

        The period is the mean of the last 256 intervals (holes over 10 periods left out), which a
        bursty publisher does not bias the way a median is. An interval over 2.5 periods is a hole of
        round(dt / period) - 1 frames; intervals under half a period within 1 s after it (a publisher
        catching up after a stall) pay it back, since those frames did arrive."""
        iv, period = self._intervals[name], self._median_dt.get(name)
        if period is None or dt <= 10.0 * period:
            if len(iv) == iv.maxlen:
                self._iv_sum[name] -= iv[0]
            iv.append(dt)
            self._iv_sum[name] = self._iv_sum.get(name, 0.0) + dt
            if len(iv) >= 8:
                self._median_dt[name] = period = self._iv_sum[name] / len(iv)
        if not period or period <= 0:
            return
        st = self.stats[name]
        debt, since = self._gap_debt.get(name, (0, 0.0))
        if dt > GAP_PERIODS * period:
            k = max(0, int(round(dt / period)) - 1)
            st.gaps += k
            self._gap_debt[name] = (debt + k, stamp)
        elif dt < 0.5 * period and debt > 0 and stamp - since < 1.0:
            st.gaps -= 1
            self._gap_debt[name] = (debt - 1, since)

    def carry_in(self, name: str, stamp: float, values: dict[str, np.ndarray]) -> None:
        """Seed a ``latest`` stream with its value from before the episode (e.g. a latched flag)."""
        self.last_stamp[name] = stamp
        self._last_values[name] = (stamp, values)
        self.samples[name].append(stamp, values)

    def pop_raw(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Raw samples of ``keep_raw`` streams since the last call: store key -> (values (n, ...), stamps (n,))."""
        out = {}
        for key, (vals, stamps) in self._raw.items():
            if vals:
                out[key] = (np.stack(vals), np.asarray(stamps, dtype=np.float64))
                self._raw[key] = ([], [])
        return out

    def add_lost(self, name: str, count: int) -> None:
        """Count frames that DDS reported lost on this stream."""
        self.stats[name].lost += int(count)

    def _maybe_step(self, stamp: float) -> None:
        if self.t0 is None:
            self.t0 = stamp
        clock_rate = self.streams[self.clock].rate_hz
        if clock_rate <= 0 and self._median_dt.get(self.clock):  # no rate configured: the measured one
            clock_rate = 1.0 / self._median_dt[self.clock]
        if 0 < clock_rate < 1.5 / self.period:  # the clock runs at the control rate: every message is a step
            self.pending.append(stamp)
            return
        tol = 0.5 / clock_rate if clock_rate > 0 else 0.25 * self.period
        if self._due is None or stamp >= self._due - tol:
            self.pending.append(stamp)
            due = (self._due if self._due is not None else stamp) + self.period
            self._due = due if stamp <= due else stamp + self.period  # fell behind: re-anchor the grid

    # ---------------------------------------------------------------- output
    def pop_ready(self, now: float) -> list[Step]:
        """Steps whose every stream is resolved by ``now`` (receive clock), in order."""
        out = []
        while self.pending:
            step = self._resolve(self.pending[0], now, final=False)
            if step is None:
                break
            self.pending.popleft()
            if step is not _DROPPED:
                out.append(step)
        self._prune()
        return out

    def flush(self) -> list[Step]:
        """Resolve every pending step with what has arrived (episode end); unresolvable steps are dropped."""
        for name in list(self._unlocked):
            self._vote(name, 0.0, {}, final=True)
        out = []
        while self.pending:
            step = self._resolve(self.pending.popleft(), math.inf, final=True)
            if step is not None and step is not _DROPPED:
                out.append(step)
        return out

    def _resolve(self, t: float, now: float, final: bool) -> Step | None | Any:
        final = final or now > t + self.max_wait_s
        picks: dict[str, tuple[float, dict[str, np.ndarray]]] = {}
        missing: list[str] = []
        for name, stream in self.streams.items():
            buf = self.samples[name]
            if name in self._unlocked and self._unlocked[name] and not final:
                return None  # its samples are held until its shape is settled
            if stream.mode == "nearest":
                i = bisect.bisect_left(buf.stamps, t)  # first sample at or after t
                if i == len(buf.stamps) and not final:
                    return None  # something closer may still come
                cands = [j for j in (i - 1, i) if 0 <= j < len(buf.stamps)]
                j = min(cands, key=lambda j: abs(buf.stamps[j] - t)) if cands else -1
                if j < 0 or abs(buf.stamps[j] - t) > self.max_align_err_s:
                    missing.append(name)
                else:
                    picks[name] = (buf.stamps[j], buf.values[j])
            elif stream.mode == "next":
                # The first response after the step that no earlier step used: under load a response
                # can arrive after the next observation and still belongs to this one.
                window = t + 1.5 * self.period
                i = bisect.bisect_right(buf.stamps, max(t, self._consumed.get(name, -math.inf)))
                if i == len(buf.stamps) or buf.stamps[i] > window:
                    if not final and now <= window:
                        return None
                    missing.append(name)
                else:
                    picks[name] = (buf.stamps[i], buf.values[i])
            else:  # latest
                if not final and now < t:
                    return None
                i = bisect.bisect_right(buf.stamps, t) - 1
                if i >= 0:
                    picks[name] = (buf.stamps[i], buf.values[i])
                elif stream.type == "bool":  # a flag never raised is False
                    picks[name] = (t, {stream.name: np.array(False)})
                else:
                    missing.append(name)
        for name, (stamp, _v) in picks.items():
            if self.streams[name].mode == "next":
                self._consumed[name] = stamp  # used by this step, even if the step is dropped
        if missing:
            for name in missing:
                self.stats[name].missing_steps += 1
            why = " + ".join(self.drop_reason(name, t) for name in missing)
            if why not in self.drops and len(self.drops) >= MAX_DROP_CAUSES:  # bounded: each gap is its own cause
                why = f"other causes ({' + '.join(missing)} missing)"
            self.drops[why] = self.drops.get(why, 0) + 1
            return _DROPPED
        step = Step(t=t, data={}, stamps={"step": t})
        for name, (stamp, values) in picks.items():
            st = self.stats[name]
            if self.streams[name].mode == "nearest":  # next: a response latency; latest: a state's age
                err = abs(stamp - t)
                st.align_err_sum += err
                st.align_err_max = max(st.align_err_max, err)
                st.aligned += 1
            for key, v in values.items():
                step.data[key] = v
                step.stamps[key] = stamp
        self.steps_out += 1
        return step

    def drop_reason(self, name: str, t: float) -> str:
        """Why stream ``name`` had no usable sample for the tick at ``t`` (one text per cause, for counting)."""
        stream, buf = self.streams[name], self.samples[name]
        t0 = self.t0 if self.t0 is not None else t
        if stream.mode == "next":
            return f"{name}: no response within {1.5e3 * self.period:.0f} ms after the tick"
        if stream.mode == "latest" or not buf.stamps:
            return f"{name}: no sample yet"
        i = bisect.bisect_left(buf.stamps, t)
        if i == 0:
            return f"{name}: no sample before its first at t={buf.stamps[0] - t0:.2f} s"
        if i == len(buf.stamps):
            return f"{name}: no sample after its last at t={buf.stamps[-1] - t0:.2f} s"
        before, after = buf.stamps[i - 1], buf.stamps[i]
        period = self._median_dt.get(name)
        if period and after - before > GAP_PERIODS * period:
            return f"{name}: gap of {after - before:.2f} s in its stamps at t={before - t0:.2f} s"
        return f"{name}: nearest sample more than {1e3 * self.max_align_err_s:.0f} ms from the tick (stale)"

    def _prune(self) -> None:
        # Keep samples that a pending (or the next) step could still pick: one second before it.
        horizon = (self.pending[0] if self.pending else self.last_stamp.get(self.clock, -math.inf)) - 1.0
        for buf in self.samples.values():
            buf.prune_before(horizon)

    def summary(self) -> dict[str, Any]:
        """Per-stream stats of this episode (JSON-friendly)."""
        return {name: st.as_dict() for name, st in self.stats.items()}


_DROPPED = object()
