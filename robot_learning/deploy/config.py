"""Typed deployment config (``configs/deploy.yaml`` + ``configs/deploy/*.yaml``), validated with dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robot_learning.deploy.history import HistoryConfig
from robot_learning.deploy.rollout import RolloutConfig
from robot_learning.deploy.safety import SafetyConfig
from robot_learning.deploy.scheduler import SchedulerConfig

# How each observation key is read from ROS by default: key -> (topic, field reader).
# ``camera_<name>`` keys map to ``/camera/<name>/image_raw`` automatically.
DEFAULT_STREAMS: dict[str, tuple[str, str]] = {
    "joint_pos": ("/joint_states", "joint_position"),
    "joint_vel": ("/joint_states", "joint_velocity"),
    "ee_pose": ("/ee_pose", "pose"),
    "gripper": ("/gripper", "joint_position"),
    "privileged_state": ("/sim/privileged_state", "float_array"),
}
ISOLATION_MODES = ("thread", "process")
READERS = ("joint_position", "joint_velocity", "pose", "image", "float_array")


@dataclass
class PolicySourceConfig:
    """Where the policy comes from: exactly one of checkpoint, server, scripted."""

    checkpoint: str = ""  # a checkpoint file, loaded with robot_learning.policies.checkpoint.load_policy
    server: str = ""  # ws://host:port of `rlstack serve`
    # with checkpoint=<a composite, e.g. vgps.pt>: its base runs on `rlstack serve` at this URL (one request
    # per re-plan: steering's K candidates come back in one round trip), the composite's own parts run here
    base_server: str = ""
    scripted: str = ""  # built-in scripted policy for sim, e.g. "expert:lift" (see deploy/scripted.py)
    device: str = "cpu"
    timeout_s: float = 2.0  # remote: per-request timeout
    connect_wait_s: float = 30.0  # remote: keep retrying this long at start-up if the server is not up yet
    control_hz: float = 10.0  # scripted policies: their rate
    # Where a local (checkpoint or scripted) policy runs: "process" = a child process with its own GIL, so
    # inference cannot delay the control thread (see deploy/worker.py); "thread" = in the node's process.
    isolation: str = "process"
    process_timeout_s: float = 30.0  # isolation=process: longest wait for one prediction (then an error, hold)
    # isolation=process: torch threads of the child (1: as direct eval; the robot's processes share the cores);
    # 0 = torch's default (every core)
    threads: int = 1

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"policy.isolation: '{self.isolation}' is not one of {ISOLATION_MODES}")
        if self.process_timeout_s <= 0:
            raise ValueError(f"policy.process_timeout_s: must be > 0, got {self.process_timeout_s}")

    def kind(self) -> str:
        """Which source is set; ValueError unless exactly one is."""
        chosen = [k for k in ("checkpoint", "server", "scripted") if getattr(self, k)]
        if len(chosen) != 1:
            raise ValueError("policy: set exactly one of policy.checkpoint, policy.server, policy.scripted "
                             f"(got {chosen or 'none'})")
        if self.base_server and chosen[0] != "checkpoint":
            raise ValueError("policy.base_server: needs policy.checkpoint=<a composite> whose base it serves")
        return chosen[0]


@dataclass
class StreamConfig:
    """One observation key read from one topic."""

    key: str = ""
    topic: str = ""
    reader: str = "float_array"  # joint_position | joint_velocity | pose | image | float_array

    def __post_init__(self) -> None:
        if self.reader not in READERS:
            raise ValueError(f"streams: key '{self.key}' reader '{self.reader}' is not one of {READERS}")


@dataclass
class NodeTopics:
    """Topics and services of the policy node."""

    action: str = "/action"
    intervention: str = "/intervention"
    estop: str = "/estop"
    operator_action: str = "/teleop/action"  # read in takeover=forward
    control_source: str = "/policy_node/control_source"  # std_msgs/String: policy | human | hold | estop
    diagnostics: str = "/policy_node/diagnostics"  # std_msgs/String, JSON
    reset_estop: str = "/policy_node/reset_estop"  # std_srvs/Trigger
    reset_episode: str = "/policy_node/reset"  # std_srvs/Trigger
    label: str = "/policy_node/label"  # std_srvs/SetBool: operator label of the current episode (true = success)


@dataclass
class DeployConfig:
    """Everything the policy node needs."""

    policy: PolicySourceConfig = field(default_factory=PolicySourceConfig)
    control_hz: float = 0.0  # 0: the policy's rate
    takeover: str = "yield"  # yield: stop publishing while the operator drives; forward: relay operator commands
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    # Control-tick phase: "observation" places each tick phase_offset_s after the robot's sample clock
    # (measured from the stamps), so a chunk computed from an observation is ready for the tick that
    # follows it; "free" ticks on the node's own clock, wherever that falls relative to the robot's.
    tick_phase: str = "observation"
    phase_offset_s: float = 0.0  # 0 = median capture->chunk latency + 10 ms, measured (capped below one period)
    record: RolloutConfig = field(default_factory=RolloutConfig)  # every deployed episode into a store
    keyboard_labels: bool = True  # s / f + Enter in the node's terminal labels the episode success / failure
    trace_dir: str = ""  # write what the policy was fed and what was executed, one npz per episode
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    topics: NodeTopics = field(default_factory=NodeTopics)
    streams: list[StreamConfig] = field(default_factory=list)  # overrides of DEFAULT_STREAMS
    safety_streams: list[str] = field(default_factory=lambda: ["ee_pose", "joint_pos"])
    # What the robot provides (key -> per-step shape). When set, a policy (local, or remote at the
    # handshake) that needs anything else is refused at start-up with every difference named.
    robot_obs_shapes: dict[str, list[int]] = field(default_factory=dict)
    diagnostics_hz: float = 2.0
    inference_backoff_s: float = 0.2
    # SCHED_FIFO priority (1-99) of the control thread, so other processes cannot delay its wake-up;
    # 0 = the normal scheduler. Needs CAP_SYS_NICE or an rtprio limit (else a warning, normal priority).
    control_priority: int = 0

    def __post_init__(self) -> None:
        if self.takeover not in ("yield", "forward"):
            raise ValueError(f"takeover: '{self.takeover}' is not yield or forward")
        if self.tick_phase not in ("observation", "free"):
            raise ValueError(f"tick_phase: '{self.tick_phase}' is not observation or free")
        if self.control_hz < 0 or self.diagnostics_hz <= 0:
            raise ValueError("control_hz must be >= 0 and diagnostics_hz > 0")
        if not 0 <= self.control_priority <= 99:
            raise ValueError(f"control_priority: {self.control_priority} is not in 0..99 (0 = normal scheduling)")

    def stream_for(self, key: str) -> StreamConfig:
        """The topic and reader for observation ``key`` (config override, camera rule or default)."""
        for s in self.streams:
            if s.key == key:
                return s
        if key.startswith("camera_"):
            return StreamConfig(key, f"/camera/{key[len('camera_'):]}/image_raw", "image")
        if key in DEFAULT_STREAMS:
            topic, reader = DEFAULT_STREAMS[key]
            return StreamConfig(key, topic, reader)
        raise ValueError(f"streams: no topic known for observation key '{key}'; add it under deploy.streams")


def load_deploy_config(cfg: Any) -> DeployConfig:
    """Validate a composed ``deploy`` config node (unknown keys and wrong types name the key)."""
    from robot_learning.config import to_dataclass

    return to_dataclass(cfg, DeployConfig, where="deploy")
