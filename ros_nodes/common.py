"""What every ROS 2 node of the stack shares: the topic contract, QoS profiles, message conversions,
the loopback DDS environment and a helper that runs a node as a separate process.

Importing this module never imports rclpy: message classes are imported inside the functions that
build messages, so the library and the sim work without a ROS 2 install. The ``*_to_*`` readers are
duck-typed (they only read fields), so they also decode the message objects of ``rosbags``.
"""

from __future__ import annotations

import array
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robot_learning.data.messages import (  # noqa: F401  (re-exported: the nodes' one import point)
    compressed_to_numpy,
    float_array_segments,
    float_array_to_numpy,
    image_to_numpy,
    joint_state_to_numpy,
    pose_to_numpy,
    stamp_to_sec,
)

DDS_DIR = Path(__file__).resolve().parent / "dds"
# Shared memory with 16 MB segments + 4 MB UDP buffers: 640x480 frames fit in one segment, so reliable
# image streams are loss-free and ~4 ms instead of ~16 ms over UDP (see README, section ros).
DEFAULT_DDS_PROFILE = DDS_DIR / "fastdds-lo-shm-tuned.xml"
UDP_ONLY_DDS_PROFILE = DDS_DIR / "fastdds-lo.xml"


# --------------------------------------------------------------------------------------------------
# The topic contract: default names, in one place. A real driver publishes the same topics.
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topics:
    """Default topic and service names of the collection and deployment graphs."""

    joint_states: str = "/joint_states"  # sensor_msgs/JointState, arm joints, 100-500 Hz (sim: control rate)
    gripper: str = "/gripper"  # sensor_msgs/JointState with one joint "gripper" (opening, metres)
    ee_pose: str = "/ee_pose"  # geometry_msgs/PoseStamped, base frame, control rate
    action: str = "/action"  # std_msgs/Float64MultiArray, one action per control period
    intervention: str = "/intervention"  # std_msgs/Bool, latched: a person has taken over
    estop: str = "/estop"  # std_msgs/Bool, latched: stop now
    success: str = "/sim/success"  # std_msgs/Bool, sim only: task solved in the current state
    privileged_state: str = "/sim/privileged_state"  # std_msgs/Float64MultiArray, sim only (expert)
    recorder_status: str = "/recorder/status"  # std_msgs/String (JSON): episode counts, drops, errors
    sim_reset: str = "/sim_robot/reset"  # std_srvs/Trigger: next episode (message: "episode E seed S")
    sim_enable: str = "/sim_robot/enable"  # std_srvs/SetBool: run (true) or pause (false) the control loop
    teleop_reset: str = "/teleop/reset"  # std_srvs/Trigger
    recorder_start: str = "/recorder/start"  # std_srvs/Trigger
    recorder_stop: str = "/recorder/stop"  # std_srvs/Trigger: commit the episode
    recorder_discard: str = "/recorder/discard"  # std_srvs/Trigger
    recorder_mark_success: str = "/recorder/mark_success"  # std_srvs/SetBool

    @staticmethod
    def camera(name: str) -> str:
        """Image topic of camera ``name``: ``/camera/<name>/image_raw`` (sensor_msgs/Image, rgb8)."""
        return f"/camera/{name}/image_raw"

    @staticmethod
    def camera_compressed(name: str) -> str:
        """Compressed image topic of camera ``name`` (sensor_msgs/CompressedImage, jpeg)."""
        return f"/camera/{name}/image_raw/compressed"


TOPICS = Topics()


# --------------------------------------------------------------------------------------------------
# QoS
# --------------------------------------------------------------------------------------------------
def sensor_pub_qos(depth: int = 100) -> Any:
    """Sensor publisher: reliable with a deep history, so a briefly slow reader loses nothing."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def recorder_sub_qos(reliable: bool = True, latched: bool = False) -> Any:
    """Recorder subscription: KEEP_ALL, because a shallow KEEP_LAST reader silently overwrites frames.

    ``latched`` (flags such as ``/intervention``) reads transient local so the current state arrives
    on joining; such a reader only matches transient-local writers, as the topic contract says.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
    durability = DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE
    return QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=0, reliability=reliability, durability=durability)


def control_qos(depth: int = 10) -> Any:
    """Commands (``/action``): reliable, shallow; an old command is worthless."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def latched_qos() -> Any:
    """Flags (``/estop``, ``/intervention``): reliable + transient local, a late joiner gets the state."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


# --------------------------------------------------------------------------------------------------
# Stamps
# --------------------------------------------------------------------------------------------------
def sec_to_stamp(t: float) -> Any:
    """Float seconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    sec = int(np.floor(t))
    nanosec = min(int(round((t - sec) * 1e9)), 999_999_999)
    return Time(sec=sec, nanosec=nanosec)


def now_sec() -> float:
    """Wall-clock time in seconds: the clock every node of the graph stamps with (ROS time)."""
    return time.time()


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def numpy_to_image(img: np.ndarray, stamp: float, frame_id: str = "") -> Any:
    """uint8 HxWx3 RGB array -> sensor_msgs/Image (rgb8); copies the buffer once, not per element."""
    from sensor_msgs.msg import Image

    img = np.ascontiguousarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be uint8 HxWx3, got {img.dtype} {img.shape}")
    msg = Image()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(img.shape[1] * 3)
    data = array.array("B")
    data.frombytes(img.tobytes())  # ~2 ms for 640x480; array('B', memoryview) iterates (~35 ms)
    msg.data = data
    return msg


def numpy_to_compressed(img: np.ndarray, stamp: float, frame_id: str = "", quality: int = 90) -> Any:
    """uint8 HxWx3 RGB -> sensor_msgs/CompressedImage (jpeg)."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("jpeg encoding failed")
    msg = CompressedImage()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.format = "rgb8; jpeg compressed bgr8"
    data = array.array("B")
    data.frombytes(buf.tobytes())
    msg.data = data
    return msg


# --------------------------------------------------------------------------------------------------
# Joint states, poses, arrays
# --------------------------------------------------------------------------------------------------
def _f64(values: Any) -> array.array:
    out = array.array("d")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return out


def numpy_to_joint_state(
    position: np.ndarray, stamp: float, velocity: np.ndarray | None = None, names: Sequence[str] | None = None
) -> Any:
    """Joint positions (and velocities) -> sensor_msgs/JointState."""
    from sensor_msgs.msg import JointState

    position = np.asarray(position, dtype=np.float64).reshape(-1)
    msg = JointState()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.name = list(names) if names is not None else [f"joint{i + 1}" for i in range(position.size)]
    msg.position = _f64(position)
    if velocity is not None:
        msg.velocity = _f64(np.asarray(velocity).reshape(-1))
    return msg


def numpy_to_pose(pose7: np.ndarray, stamp: float, frame_id: str = "base") -> Any:
    """(x, y, z, qx, qy, qz, qw) -> geometry_msgs/PoseStamped."""
    from geometry_msgs.msg import PoseStamped

    p = [float(v) for v in np.asarray(pose7).reshape(-1)]
    if len(p) != 7:
        raise ValueError(f"pose must have 7 values (xyz + quaternion xyzw), got {len(p)}")
    msg = PoseStamped()
    msg.header.stamp = sec_to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = p[:3]
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = p[3:]
    return msg


def numpy_to_float_array(values: np.ndarray, labels: Mapping[str, int] | None = None) -> Any:
    """Vector -> std_msgs/Float64MultiArray; ``labels`` (name -> size, in order) name its segments."""
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    values = np.asarray(values, dtype=np.float64).reshape(-1)
    msg = Float64MultiArray()
    if labels:
        offset = 0
        for name, size in labels.items():
            msg.layout.dim.append(MultiArrayDimension(label=name, size=int(size), stride=int(offset)))
            offset += int(size)
        if offset != values.size:
            raise ValueError(f"labels cover {offset} values but the array has {values.size}")
    msg.data = _f64(values)
    return msg


# --------------------------------------------------------------------------------------------------
# Loopback environment and node processes
# --------------------------------------------------------------------------------------------------
def loopback_env(domain_id: int, profile: Path | str = DEFAULT_DDS_PROFILE, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment that confines DDS to loopback on ``domain_id`` (for child processes and tests)."""
    if not 0 <= int(domain_id) <= 232:
        raise ValueError(f"ROS_DOMAIN_ID must be in 0..232, got {domain_id}")
    env = dict(os.environ if base is None else base)
    env.update(
        ROS_DOMAIN_ID=str(int(domain_id)),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        FASTRTPS_DEFAULT_PROFILES_FILE=str(profile),  # Jazzy (Fast DDS 2.x)
        FASTDDS_DEFAULT_PROFILES_FILE=str(profile),  # Kilted (Fast DDS 3.x)
        PYTHONUNBUFFERED="1",
    )
    env.pop("ROS_LOCALHOST_ONLY", None)  # deprecated; conflicts with the discovery range
    return env


def apply_loopback_env(domain_id: int, profile: Path | str = DEFAULT_DDS_PROFILE) -> None:
    """Set the loopback environment in this process (before ``rclpy.init``)."""
    os.environ.update(loopback_env(domain_id, profile, base={}))


def write_params_file(node_name: str, params: Mapping[str, Any], directory: str | Path | None = None) -> Path:
    """Write a ROS 2 parameters YAML file (``--params-file``) for every node (``/**``)."""
    import yaml

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    body = {"/**": {"ros__parameters": {k: plain(v) for k, v in params.items()}}}
    fd, path = tempfile.mkstemp(prefix=f"{node_name}_", suffix=".yaml", dir=directory)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(body, f)
    return Path(path)


class NodeProcess:
    """A node run as ``python -m <module> --ros-args --params-file …`` in its own process group."""

    def __init__(
        self,
        module: str,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        log_path: str | Path | None = None,
        name: str | None = None,
        attach_terminal: bool = False,
    ) -> None:
        self.module = module
        self.name = name or module.rsplit(".", 1)[-1]
        self.params_file = write_params_file(self.name, dict(params or {}))
        self.log_path = Path(log_path) if log_path else None
        cmd = [sys.executable, "-m", module, "--ros-args", "--params-file", str(self.params_file)]
        self._log = open(self.log_path, "w") if self.log_path and not attach_terminal else None  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            env=dict(env) if env is not None else None,
            stdout=None if attach_terminal else (self._log or subprocess.DEVNULL),
            stderr=None if attach_terminal else subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal goes to the launcher, which stops the nodes in order.
            # An attached node (keyboard teleop) shares the terminal and so gets the Ctrl-C too.
            start_new_session=not attach_terminal,
        )

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (clean shutdown: the recorder finishes its episode), then SIGTERM, then SIGKILL."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            try:
                self.proc.send_signal(sig)
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        if self._log:
            self._log.close()
            self._log = None
        self.params_file.unlink(missing_ok=True)
        return int(self.proc.returncode if self.proc.returncode is not None else -9)

    def log_text(self) -> str:
        """What the process has written so far (empty without a log file)."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def call_service(client: Any, request: Any, timeout_s: float, node: Any = None, attempt_s: float = 5.0) -> Any:
    """Call a service and return its response, re-sending the request until it is answered.

    Why re-send: ``wait_for_service`` is satisfied by any server in the graph, including one of a
    process that was just killed (its registration lingers until its DDS lease expires), while this
    client's request writer may not have matched the live server yet; a volatile request sent in that
    window is never delivered. Use it for requests whose servers check their state (start/stop/reset).
    With ``node`` given, spins it while waiting; otherwise another thread must be spinning the client.
    """
    import rclpy

    end = time.monotonic() + timeout_s
    if not client.wait_for_service(timeout_sec=timeout_s):
        raise TimeoutError(f"service {client.srv_name} not available after {timeout_s:.0f} s (is its node running?)")
    while True:
        future = client.call_async(request)
        attempt_end = min(end, time.monotonic() + attempt_s)
        while not future.done() and time.monotonic() < attempt_end:
            if node is not None:
                rclpy.spin_once(node, timeout_sec=0.05)
            else:
                time.sleep(0.01)
        if future.done():
            return future.result()
        client.remove_pending_request(future)
        if time.monotonic() >= end:
            raise TimeoutError(f"service {client.srv_name} did not answer within {timeout_s:.0f} s")


def make_executor() -> Any:
    """rclpy's single-threaded executor; ``RLSTACK_ROS_EXECUTOR=events`` opts into the C++ EventsExecutor.

    The events executor (experimental in Jazzy) dispatches with far less Python overhead per message,
    but with the PyPI Jazzy wheels a node serving a Trigger service under it hung and ignored SIGTERM
    here, so it is not the default.
    """
    from rclpy.executors import SingleThreadedExecutor

    if os.environ.get("RLSTACK_ROS_EXECUTOR", "single") == "events":
        try:
            from rclpy.experimental import EventsExecutor

            return EventsExecutor()
        except ImportError:  # Humble has no events executor
            pass
    return SingleThreadedExecutor()


def run_node_main(node_factory: Any, argv: Sequence[str] | None = None, executor_factory: Any = None) -> int:
    """Init rclpy with ``argv``, spin the node built by ``node_factory()`` until Ctrl-C, shut down cleanly."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=list(sys.argv if argv is None else argv))
    node = None
    executor = (executor_factory or make_executor)()
    try:
        node = node_factory()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        executor.shutdown()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0
