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

Bad samples (NaN, wrong size or encoding, missing or out-of-order stamps) are rejected with a
``SampleError`` naming the stream and counted; they never stop the episode.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    """A message that cannot be recorded (the message says which stream and why)."""


@dataclass
class StreamConfig:
    """One recorded topic: what it is, how it maps to store keys and how it is aligned."""

    name: str  # store key (image/pose/array/bool) or key prefix (joint_state -> <name>_pos, <name>_vel)
    topic: str
    type: str = "image"
    mode: str = "nearest"
    rate_hz: float = 0.0  # nominal rate, 0 = unknown; used to count gaps (frames that never came)
    reliable: bool = True
    height: int = 0  # images: expected size, 0 = whatever the first frame has
    width: int = 0

    def __post_init__(self) -> None:
        if self.type not in STREAM_TYPES:
            raise ValueError(f"stream '{self.name}': unknown type '{self.type}' (choose from {', '.join(STREAM_TYPES)})")
        if self.mode not in MODES:
            raise ValueError(f"stream '{self.name}': unknown mode '{self.mode}' (choose from {', '.join(MODES)})")
        if not self.topic.startswith("/"):
            raise ValueError(f"stream '{self.name}': topic '{self.topic}' must be absolute (start with '/')")

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
        """Compact form for a string-array ROS parameter: ``name=topic:type:mode:rate:HxW:reliable``."""
        return f"{self.name}={self.topic}:{self.type}:{self.mode}:{self.rate_hz:g}:{self.height}x{self.width}:{int(self.reliable)}"

    @classmethod
    def from_param(cls, text: str) -> StreamConfig:
        """Parse ``to_param`` output (trailing fields optional: ``name=topic:type``)."""
        try:
            name, rest = text.split("=", 1)
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
        except (ValueError, IndexError) as exc:
            raise ValueError(f"bad stream spec '{text}': expected name=/topic:type[:mode:rate_hz:HxW:reliable] ({exc})") from exc
        return cls(**kwargs)


def decode(stream: StreamConfig, msg: Any) -> tuple[float | None, dict[str, np.ndarray]]:
    """Message (rclpy or rosbags) -> (header stamp or None if unstamped, {store key: value})."""
    where = f"stream '{stream.name}' ({stream.topic}): "
    try:
        stamp = stamp_to_sec(msg.header.stamp) if stream.stamped else None
        hw = (stream.height, stream.width) if stream.height and stream.width else None
        if stream.type == "image":
            return stamp, {stream.name: image_to_numpy(msg, hw, where)}
        if stream.type == "compressed_image":
            return stamp, {stream.name: compressed_to_numpy(msg, hw, where)}
        if stream.type == "joint_state":
            pos, vel = joint_state_to_numpy(msg, where)
            if vel.size == 0:
                vel = np.zeros_like(pos)
            return stamp, {f"{stream.name}_pos": pos, f"{stream.name}_vel": vel}
        if stream.type == "joint_position":
            return stamp, {stream.name: joint_state_to_numpy(msg, where)[0]}
        if stream.type == "pose":
            return stamp, {stream.name: pose_to_numpy(msg, where)}
        if stream.type == "float_array":
            return stamp, {stream.name: float_array_to_numpy(msg, where)}
        return stamp, {stream.name: np.array(bool(msg.data))}
    except SampleError:
        raise
    except (ValueError, AttributeError, TypeError) as exc:
        msg_text = str(exc)
        raise SampleError(msg_text if msg_text.startswith(where) else where + msg_text) from exc


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
    ) -> None:
        self.streams = {s.name: s for s in streams}
        if clock not in self.streams:
            raise ValueError(f"clock stream '{clock}' is not one of the recorded streams {sorted(self.streams)}")
        if self.streams[clock].mode != "nearest":
            raise ValueError(f"clock stream '{clock}' must have mode 'nearest'")
        if control_hz <= 0:
            raise ValueError(f"control_hz must be > 0, got {control_hz}")
        self.clock = clock
        self.period = 1.0 / control_hz
        self.start_time = start_time  # samples stamped before this belong to no episode
        self.max_wait_s = max_wait_s  # a stream silent this long after a step no longer holds it up
        # A step whose nearest sample of some stream is farther than this is dropped, not recorded
        # with a stale frame (default: half a control period).
        self.max_align_err_s = 0.5 * self.period if max_align_err_s is None else float(max_align_err_s)
        self.samples: dict[str, _Buffer] = {n: _Buffer() for n in self.streams}
        self.last_stamp: dict[str, float] = {}
        self.stats = {n: StreamStats() for n in self.streams}
        self.pending: deque[float] = deque()  # step times not yet resolved
        self.steps_out = 0
        self._due: float | None = None
        self._last_values: dict[str, tuple[float, dict[str, np.ndarray]]] = {}
        self._consumed: dict[str, float] = {}  # next-mode streams: stamp of the last sample a step used

    # ---------------------------------------------------------------- input
    def add(self, name: str, stamp: float | None, values: dict[str, np.ndarray], recv_time: float) -> None:
        """Add one decoded sample; raises SampleError (and counts it) when it cannot be used."""
        stream = self.streams[name]
        st = self.stats[name]
        where = f"stream '{name}' ({stream.topic}): "
        try:
            if stamp is None:
                if stream.stamped:
                    raise SampleError(where + "message has no header stamp")
                stamp = recv_time
            if not math.isfinite(stamp) or stamp <= 0.0:
                raise SampleError(where + f"missing or invalid header stamp ({stamp})")
            prev = self.last_stamp.get(name)
            if prev is not None and stamp <= prev:
                raise SampleError(where + f"out-of-order stamp {stamp:.6f} <= previous {prev:.6f}")
            ref = self._last_values.get(name)
            if ref is not None:
                for key, v in values.items():
                    old = ref[1][key]
                    if v.shape != old.shape:
                        raise SampleError(where + f"'{key}' changed shape from {old.shape} to {v.shape}")
        except SampleError as exc:
            st.rejected += 1
            st.last_error = str(exc)
            raise
        if stamp < self.start_time:
            if stream.mode == "latest":
                self.carry_in(name, stamp, values)  # a flag set before the start still holds
            return  # otherwise from before the episode started: not an error, just not ours
        if prev is not None and stream.rate_hz > 0:
            gap = stamp - prev
            if gap > 1.5 / stream.rate_hz:
                st.gaps += max(0, int(round(gap * stream.rate_hz)) - 1)
        st.received += 1
        self.last_stamp[name] = stamp
        self._last_values[name] = (stamp, values)
        self.samples[name].append(stamp, values)
        if name == self.clock:
            self._maybe_step(stamp)

    def carry_in(self, name: str, stamp: float, values: dict[str, np.ndarray]) -> None:
        """Seed a ``latest`` stream with its value from before the episode (e.g. a latched flag)."""
        self.last_stamp[name] = stamp
        self._last_values[name] = (stamp, values)
        self.samples[name].append(stamp, values)

    def add_lost(self, name: str, count: int) -> None:
        """Count frames that DDS reported lost on this stream."""
        self.stats[name].lost += int(count)

    def _maybe_step(self, stamp: float) -> None:
        clock_rate = self.streams[self.clock].rate_hz
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
