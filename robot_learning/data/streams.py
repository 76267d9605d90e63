"""Recorded streams: what a topic is (``StreamConfig``), its store keys and declared shapes, and the
message decoder (``decode``) shared by the recorder and the rosbag2 importer (no rclpy)."""

from __future__ import annotations

import functools
import json
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
