"""The collection graph's configuration (``configs/collect.yaml``): robot streams, teleop, recorder.

Plain dataclasses without rclpy, shared by ``rlstack collect`` (ros_nodes/collect.py), the recorder
node and the rosbag2 importer, so a bag is aligned with exactly the recorder's stream settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robot_learning.data.alignment import StreamConfig

# Short group names on the command line -> Hydra's full override key (the groups live in configs/collect/).
TELEOP_MODES = ("expert", "keyboard", "gamepad", "spacemouse", "joy", "twist")
GROUP_ALIASES = {"robot": "collect/robot@robot", "teleop": "collect/teleop@teleop"}


@dataclass
class RobotConfig:
    """``configs/collect/robot/*.yaml``."""

    kind: str = "sim"
    task: str = "lift"
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 96
    control_hz: float = 10.0
    dr: str = "none"
    seed: int = 0
    task_flags: list[str] = field(default_factory=list)
    joint_names: list[str] = field(default_factory=list)  # the joint order recorded (mapped by name)
    image_hw: list[int] = field(default_factory=list)  # external cameras: [height, width]
    streams: list[StreamConfig] = field(default_factory=list)


@dataclass
class TeleopConfig:
    """``configs/collect/teleop/*.yaml``."""

    mode: str = "expert"
    quality: float = 1.0
    seed: int = 0
    action_dim: int = 5
    speed: float = 1.0
    device: str = ""  # gamepad: joystick index; spacemouse: device name ("" = the first found)
    topic: str = ""  # joy / twist: the topic an existing ROS teleop publishes ("" = /joy or /cmd_vel)


@dataclass
class RecorderConfig:
    """The ``recorder`` section of ``configs/collect.yaml``."""

    clock: str = "joint"
    max_wait_s: float = 1.0
    image_codec: str = "jpeg"
    max_future_s: float = 1.0  # stamps further ahead of the recorder's clock are rejected
    streams: list[StreamConfig] = field(default_factory=list)


@dataclass
class CollectConfig:
    """``configs/collect.yaml``, validated."""

    robot: RobotConfig = field(default_factory=RobotConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    task: dict[str, Any] = field(default_factory=dict)  # the shared task group (configs/task/<name>.yaml)
    episodes: int = 20
    store: str = "data/collect.zarr"
    operator: str = ""
    source: str = ""
    max_steps: int = 150
    success_hold_steps: int = 3
    domain_id: int = -1
    loopback: bool = True
    log_dir: str = ""
    startup_timeout_s: float = 60.0

    def validate(self, graph: bool = True) -> None:
        """Cross-field checks with messages naming the key (``graph``: also the robot/teleop pairing)."""
        if self.robot.kind not in ("sim", "external"):
            raise ValueError(f"robot.kind='{self.robot.kind}': choose sim or external")
        if self.teleop.mode not in TELEOP_MODES:
            raise ValueError(f"teleop.mode='{self.teleop.mode}': choose one of {', '.join(TELEOP_MODES)}")
        if graph and self.teleop.mode == "expert" and self.robot.kind != "sim":
            raise ValueError("teleop=expert needs robot=sim (the scripted expert reads the sim's privileged state)")
        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes}: must be >= 1")
        if self.max_steps < 1 or self.success_hold_steps < 1:
            raise ValueError("max_steps and success_hold_steps must be >= 1")
        names = [s.name for s in self.all_streams()]
        for s in self.all_streams():
            if s.declared_shapes() is None:
                what = "height and width (the camera's image size)" if "image" in s.type else "names (joint order) or dim"
                raise ValueError(f"stream '{s.name}' ({s.topic}): declare its {what} in the config; the recorder "
                                 "never takes a stream's shape from its first message")
        if self.recorder.clock not in names:
            raise ValueError(f"recorder.clock='{self.recorder.clock}' is not a recorded stream ({names})")

    def all_streams(self) -> list[StreamConfig]:
        """Robot streams plus teleop streams (the sim robot's cameras follow ``robot.cameras``)."""
        robot = self.robot.streams
        if self.robot.kind == "sim":  # sim.yaml lists every sim camera; it publishes only robot.cameras
            robot = [s for s in robot if not (s.type == "image" and s.name.startswith("camera_")
                                              and s.name[len("camera_"):] not in self.robot.cameras)]
        return [*robot, *self.recorder.streams]


def load_config(overrides: list[str], graph: bool = True) -> tuple[CollectConfig, Any]:
    """Compose ``configs/collect.yaml`` with overrides; returns the validated config and the raw one."""
    from robot_learning.config import compose, to_dataclass

    rewritten = []
    for ov in overrides:
        key, sep, value = ov.partition("=")
        rewritten.append(f"{GROUP_ALIASES[key]}={value}" if sep and key in GROUP_ALIASES else ov)
    raw = compose("collect", rewritten)
    cfg = to_dataclass(raw, CollectConfig, where="collect")
    cfg.validate(graph)
    return cfg, raw
