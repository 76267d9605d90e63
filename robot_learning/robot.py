"""The robot interface shared by the sim and by real drivers.

Everything that produces or consumes robot data (recorder, sim, policy node, evaluation) speaks
in these types. Observation keys follow one convention so that a frame can be followed from a
ROS topic into the store and into a policy without renaming:

- ``camera_<name>``: uint8 image, H x W x 3 (RGB).
- ``joint_pos``, ``joint_vel``: float32 joint vectors.
- ``ee_pose``: float32 (7,) position xyz + quaternion xyzw.
- ``gripper``: float32 (1,) opening in metres.

Every observation carries the *capture* time of each stream (seconds, float), never a time
synthesised from a frame index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

StreamKind = Literal["image", "lowdim"]


@dataclass(frozen=True)
class StreamSpec:
    """Shape, dtype and nominal rate of one observation stream."""

    key: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: StreamKind = "lowdim"
    rate_hz: float = 0.0

    def check(self, value: np.ndarray, where: str = "") -> None:
        """Raise ValueError naming the key when ``value`` does not match this spec."""
        arr = np.asarray(value)
        if tuple(arr.shape) != tuple(self.shape):
            raise ValueError(f"{where}{self.key}: expected shape {self.shape}, got {tuple(arr.shape)}")
        if arr.dtype != np.dtype(self.dtype):
            raise ValueError(f"{where}{self.key}: expected dtype {self.dtype}, got {arr.dtype}")
        if self.kind == "lowdim" and not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}{self.key}: contains NaN or inf")


@dataclass(frozen=True)
class RobotSpec:
    """What a robot observes and accepts: the contract between drivers, data and policies."""

    observations: dict[str, StreamSpec]
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_hz: float
    action_mode: str = "ee_delta"  # or "ee_abs"
    action_names: tuple[str, ...] = ()

    @property
    def camera_keys(self) -> list[str]:
        """Keys of the image streams, in a stable order."""
        return sorted(k for k, s in self.observations.items() if s.kind == "image")

    @property
    def lowdim_keys(self) -> list[str]:
        """Keys of the low-dimensional streams, in a stable order."""
        return sorted(k for k, s in self.observations.items() if s.kind == "lowdim")


@dataclass
class Observation:
    """One observation: every stream's latest value with its capture time (seconds)."""

    data: dict[str, np.ndarray]
    stamps: dict[str, float] = field(default_factory=dict)

    def latest_stamp(self) -> float:
        """Capture time of the newest stream in this observation."""
        return max(self.stamps.values()) if self.stamps else float("nan")


@runtime_checkable
class Robot(Protocol):
    """A robot behind a uniform interface: the sim implements it, real drivers do too."""

    spec: RobotSpec

    def reset(self, seed: int | None = None) -> Observation:
        """Put the robot and scene in a start state and return the first observation."""
        ...

    def observe(self) -> Observation:
        """Read every stream now."""
        ...

    def act(self, action: np.ndarray) -> None:
        """Apply one action (shape ``(spec.action_dim,)``) and advance one control period."""
        ...

    def success(self) -> bool:
        """Whether the task is solved in the current state."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...
