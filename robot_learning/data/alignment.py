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
import functools
import json
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from robot_learning.data.messages import (
    compressed_to_numpy,
    float_array_to_numpy,
    image_to_numpy,
    joint_state_to_numpy,
    pose_to_numpy,
    stamp_to_sec,
)

STREAM_TYPES = ("image", "compressed_image", "joint_state", "joint_position", "pose", "float_array", "bool")
MODES = ("nearest", "next", "latest")
# ROS 2 type names of each stream type (for rosbags and for subscriptions).
ROS_TYPES = {
    "image": "sensor_msgs/msg/Image",
    "compressed_image": "sensor_msgs/msg/CompressedImage",
    "joint_state": "sensor_msgs/msg/JointState",
    "joint_position": "sensor_msgs/msg/JointState",
    "pose": "geometry_msgs/msg/PoseStamped",
    "float_array": "std_msgs/msg/Float64MultiArray",
    "bool": "std_msgs/msg/Bool",
}


class SampleError(ValueError):
    """A message that cannot be recorded (the message says which stream and why; ``kind`` names the problem)."""

    def __init__(self, message: str, kind: str = "bad_message") -> None:
        super().__init__(message)
        self.kind = kind


def _kind_of(text: str) -> str:
    """Problem kind of a decoder's ValueError text (for per-kind counts and log throttling)."""
    for needle, kind in (("NaN", "non_finite"), ("encoding", "encoding"), ("image is", "image_size"),
                         ("names but", "joint_lengths"), ("names", "joint_names"), ("positions but", "joint_lengths"), ("decode", "decode")):
        if needle in text:
            return kind
    return "bad_message"


@functools.lru_cache(maxsize=256)
def joint_layout(configured: tuple[str, ...], received: tuple[str, ...]) -> tuple[tuple[int, ...], list[str], list[str]]:
    """Indices of the configured joints in a message's name list, the missing names and the extra ones."""
    where = {n: i for i, n in enumerate(received)}
    missing = [n for n in configured if n not in where]
    extra = [n for n in received if n not in set(configured)]
    return tuple(where.get(n, -1) for n in configured), missing, extra


@dataclass
class StreamConfig:
    """One recorded topic: what it is, how it maps to store keys and how it is aligned."""

    name: str  # store key (image/pose/array/bool) or key prefix (joint_state -> <name>_pos, <name>_vel)
    topic: str
    type: str = "image"
    mode: str = "nearest"
    rate_hz: float = 0.0  # nominal rate, 0 = unknown; used to count gaps (frames that never came)
    reliable: bool = True
    height: int = 0  # images: declared size (0 = undeclared, see EpisodeAligner: never the first frame)
    width: int = 0
    names: list[str] = field(default_factory=list)  # joint states: the joint order to record, mapped by name
    dim: int = 0  # vectors (float_array, unnamed joints): declared length, 0 = undeclared
    keep_raw: bool = False  # also keep every sample in streams/<key> (high-rate streams), not only the steps

    def __post_init__(self) -> None:
        if self.type not in STREAM_TYPES:
            raise ValueError(f"stream '{self.name}': unknown type '{self.type}' (choose from {', '.join(STREAM_TYPES)})")
        if self.mode not in MODES:
            raise ValueError(f"stream '{self.name}': unknown mode '{self.mode}' (choose from {', '.join(MODES)})")
        if not self.topic.startswith("/"):
            raise ValueError(f"stream '{self.name}': topic '{self.topic}' must be absolute (start with '/')")
        self.names = [str(n) for n in self.names]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"stream '{self.name}': duplicate joint names in {self.names}")
        if self.names and self.dim and self.dim != len(self.names):
            raise ValueError(f"stream '{self.name}': dim={self.dim} but {len(self.names)} joint names")

    def declared_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Each store key's shape as configured, or None if the configuration does not say."""
        n = len(self.names) or self.dim
        if self.type in ("image", "compressed_image"):
            return {self.name: (self.height, self.width, 3)} if self.height and self.width else None
        if self.type == "pose":
            return {self.name: (7,)}
        if self.type == "bool":
            return {self.name: ()}
        return {k: (n,) for k in self.keys} if n else None

    @property
    def stamped(self) -> bool:
        """Whether the message has a header stamp (else the receive time is used)."""
        return self.type not in ("float_array", "bool")

    @property
    def keys(self) -> tuple[str, ...]:
        """Store keys this stream fills."""
        if self.type == "joint_state":
            return (f"{self.name}_pos", f"{self.name}_vel")
        return (self.name,)

    @property
    def ros_type(self) -> str:
        """ROS 2 message type name."""
        return ROS_TYPES[self.type]

    def to_param(self) -> str:
        """One string for a string-array ROS parameter: ``name=<JSON of the other fields>``."""
        body = {k: v for k, v in asdict(self).items() if k != "name"}
        return f"{self.name}={json.dumps(body, separators=(',', ':'))}"

    @classmethod
    def from_param(cls, text: str) -> StreamConfig:
        """Parse ``to_param`` output (trailing fields optional: ``name=topic:type``)."""
        try:
            name, rest = text.split("=", 1)
            if rest.startswith("{"):
                return cls(name=name.strip(), **json.loads(rest))
            parts = rest.split(":")
            kwargs: dict[str, Any] = {"name": name.strip(), "topic": parts[0], "type": parts[1]}
            if len(parts) > 2 and parts[2]:
                kwargs["mode"] = parts[2]
            if len(parts) > 3 and parts[3]:
                kwargs["rate_hz"] = float(parts[3])
            if len(parts) > 4 and parts[4]:
                h, w = parts[4].lower().split("x")
                kwargs["height"], kwargs["width"] = int(h), int(w)
            if len(parts) > 5 and parts[5]:
                kwargs["reliable"] = parts[5] not in ("0", "false", "False")
        except (ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"bad stream spec '{text}': expected name=/topic:type[:mode:rate_hz:HxW:reliable] ({exc})") from exc
        return cls(**kwargs)


def _joints(stream: StreamConfig, msg: Any, where: str, notes: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """JointState -> (position, velocity) in the configured joint order (by name), zeros for no velocity."""
    pos, vel = joint_state_to_numpy(msg, where)
    if vel.size == 0:
        vel = np.zeros_like(pos)
    if not stream.names:
        return pos, vel
    received = tuple(str(n) for n in msg.name)
    if not received:
        raise SampleError(where + f"joint state has no joint names (configured order: {stream.names})", "joint_names")
    idx, missing, extra = joint_layout(tuple(stream.names), received)
    if missing:
        raise SampleError(where + f"joint state lacks joint names {missing} (got {list(received)})", "joint_names")
    if extra and notes is not None:
        notes.append(where + f"joint state has extra joint names {extra}, not recorded (configured: {stream.names})")
    if received[: len(idx)] == tuple(stream.names) and len(received) == len(idx):
        return pos, vel  # already in the configured order
    sel = np.asarray(idx)
    return pos[sel], vel[sel]


def decode(stream: StreamConfig, msg: Any, notes: list[str] | None = None) -> tuple[float | None, dict[str, np.ndarray]]:
    """Message (rclpy or rosbags) -> (header stamp or None if unstamped, {store key: value}).

    Joint states are returned in ``stream.names`` order, mapped by name; ``notes`` (if given)
    collects what is worth reporting without rejecting the message (extra joint names)."""
    where = f"stream '{stream.name}' ({stream.topic}): "
    try:
        stamp = stamp_to_sec(msg.header.stamp) if stream.stamped else None
        hw = (stream.height, stream.width) if stream.height and stream.width else None
        if stream.type == "image":
            return stamp, {stream.name: image_to_numpy(msg, hw, where)}
        if stream.type == "compressed_image":
            return stamp, {stream.name: compressed_to_numpy(msg, hw, where)}
        if stream.type in ("joint_state", "joint_position"):
            pos, vel = _joints(stream, msg, where, notes)
            if stream.type == "joint_position":
                return stamp, {stream.name: pos}
            return stamp, {f"{stream.name}_pos": pos, f"{stream.name}_vel": vel}
        if stream.type == "pose":
            return stamp, {stream.name: pose_to_numpy(msg, where)}
        if stream.type == "float_array":
            return stamp, {stream.name: float_array_to_numpy(msg, where)}
        return stamp, {stream.name: np.array(bool(msg.data))}
    except SampleError:
        raise
    except (ValueError, AttributeError, TypeError) as exc:
        msg_text = str(exc)
        raise SampleError(msg_text if msg_text.startswith(where) else where + msg_text, _kind_of(msg_text)) from exc


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
        if dt > 2.5 * period:
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

    def _prune(self) -> None:
        # Keep samples that a pending (or the next) step could still pick: one second before it.
        horizon = (self.pending[0] if self.pending else self.last_stamp.get(self.clock, -math.inf)) - 1.0
        for buf in self.samples.values():
            buf.prune_before(horizon)

    def summary(self) -> dict[str, Any]:
        """Per-stream stats of this episode (JSON-friendly)."""
        return {name: st.as_dict() for name, st in self.stats.items()}


_DROPPED = object()
