"""``policy_node``: a policy as a real-time ROS 2 control node.

Thin rclpy wiring around :class:`robot_learning.deploy.controller.PolicyController`:

- subscribes to the observation topics the policy needs (plus ``ee_pose``/``joint_pos`` for the
  safety layer), stamping each sample with its header's capture time;
- a dedicated control thread ticks at ``control_hz`` against absolute deadlines (not an rclpy timer,
  so subscription callbacks and the GIL-holding executor cannot delay it) and publishes one safe
  command per tick on ``/action`` (std_msgs/Float64MultiArray);
- inference runs on the controller's worker thread; with ``policy.isolation=process`` (the default) that
  thread only waits for a child process that runs the policy (``robot_learning/deploy/worker.py``);
- subscriptions are served by a single-threaded executor (see ``make_executor`` for why);
- ``/estop`` (Bool, latched) latches a hold until ``/policy_node/reset_estop`` (std_srvs/Trigger),
  which is refused while ``/estop`` still reads true;
- ``/intervention`` (Bool) hands control to the operator (``takeover=yield``: nothing is published on
  ``/action``; ``forward``: ``/teleop/action`` is relayed through the safety layer);
- ``/policy_node/control_source`` (String: policy | human | hold | estop) every tick, for the recorder;
- ``/policy_node/diagnostics`` (String, JSON) at ``diagnostics_hz``.

    python -m ros_nodes.policy_node --ros-args -p config_json:='{"policy": {"scripted": "expert:lift"}}'
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from robot_learning.deploy.config import DeployConfig, StreamConfig
from robot_learning.deploy.controller import PolicyController
from robot_learning.deploy.history import ObservationRejected
from robot_learning.policies.base import Policy
from ros_nodes.common import (
    float_array_to_numpy,
    image_to_numpy,
    joint_state_to_numpy,
    now_sec,
    pose_to_numpy,
    stamp_to_sec,
)

MSG_TYPES = {"joint_position": "JointState", "joint_velocity": "JointState", "pose": "PoseStamped",
             "image": "Image", "float_array": "Float64MultiArray"}


def _finite(value: Any) -> Any:
    """NaN/inf -> None so the diagnostics are strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def make_reader(stream: StreamConfig, shape: tuple[int, ...]) -> Callable[[Any], tuple[np.ndarray, float]]:
    """Message -> (value, capture stamp) for one observation key; ValueError names topic and problem."""
    where = f"{stream.topic} ({stream.key}): "
    size = int(np.prod(shape))

    def fit(v: np.ndarray) -> np.ndarray:
        if v.size != size:
            raise ValueError(f"{where}{v.size} values, the policy expects shape {shape}")
        return v.reshape(shape)

    def header_stamp(msg: Any) -> float:
        t = stamp_to_sec(msg.header.stamp)
        if t <= 0:
            raise ValueError(f"{where}header stamp is zero: publishers must stamp with the capture time")
        return t

    if stream.reader == "joint_position":
        return lambda m: (fit(joint_state_to_numpy(m, where)[0]), header_stamp(m))
    if stream.reader == "joint_velocity":
        return lambda m: (fit(joint_state_to_numpy(m, where)[1]), header_stamp(m))
    if stream.reader == "pose":
        return lambda m: (fit(pose_to_numpy(m, where)), header_stamp(m))
    if stream.reader == "image":
        return lambda m: (image_to_numpy(m, expect_hw=tuple(shape[:2]), where=where), header_stamp(m))
    # Float64MultiArray has no header: the receive time is the best capture estimate there is.
    return lambda m: (fit(float_array_to_numpy(m, where)), now_sec())


def make_policy(config: DeployConfig, policy: Policy | None = None,
                obs_shapes: dict[str, tuple[int, ...]] | None = None, action_dim: int | None = None) -> Policy:
    """The node's policy: ``policy`` or the configured source, in a child process if ``policy.isolation=process``."""
    from robot_learning.deploy.scripted import build_policy

    src = config.policy
    if src.isolation == "process" and (policy is not None or src.kind() != "server"):  # a server is out of process
        from functools import partial

        from robot_learning.deploy.worker import GivenPolicy, ProcessPolicy

        factory = GivenPolicy(policy) if policy is not None else partial(
            build_policy, src, obs_shapes=obs_shapes, action_dim=action_dim, action_mode=config.safety.action_mode)
        name = type(policy).__name__ if policy is not None else src.checkpoint or src.scripted
        return ProcessPolicy(factory, timeout_s=src.process_timeout_s, name=name, threads=src.threads)
    if policy is not None:
        return policy
    return build_policy(src, obs_shapes=obs_shapes, action_dim=action_dim, action_mode=config.safety.action_mode)


def make_executor() -> Any:
    """The node's executor: single-threaded, on purpose.

    rclpy's MultiThreadedExecutor re-builds its wait set in Python about three times per message (the
    message, then two guard triggers from the pool thread that ran it) and, on a multi-core machine,
    that loop re-takes the GIL so fast that the control and inference threads starved for 0.2-2 s
    (benchmarks/README.md, section deploy). The callbacks here only store a sample, so one thread is
    enough; the control loop and inference have their own threads.
    """
    from rclpy.executors import SingleThreadedExecutor

    return SingleThreadedExecutor()


def make_node(cfg: DeployConfig | None = None, policy: Policy | None = None) -> Any:
    """Build the rclpy node; ``cfg`` defaults to the ``config_json`` parameter."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool, Float64MultiArray, String
    from std_srvs.srv import Trigger

    from ros_nodes.common import control_qos, latched_qos, numpy_to_float_array, sensor_pub_qos

    msg_classes = {"JointState": JointState, "PoseStamped": PoseStamped, "Image": Image,
                   "Float64MultiArray": Float64MultiArray}

    class PolicyNode(Node):
        """The control node."""

        def __init__(self) -> None:
            super().__init__("policy_node")
            config = cfg
            if config is None:
                from robot_learning.deploy.config import load_deploy_config

                config = load_deploy_config(json.loads(self.declare_parameter("config_json", "{}").value or "{}"))
            self.cfg = config
            provided = {k: tuple(v) for k, v in config.robot_obs_shapes.items()} or None
            robot_action_dim = len(config.safety.action_low) or None
            if policy is not None:  # an injected policy is checked before a child process is started for it
                self._check_fits(policy, provided, robot_action_dim)
            pol = make_policy(config, policy, provided, robot_action_dim)
            try:
                self._check_fits(pol, provided, robot_action_dim)
            except ValueError:
                getattr(pol, "close", lambda: None)()
                raise
            self.policy = pol
            spec = pol.spec
            extra = {"ee_pose": (7,), "joint_pos": (9,)}
            extras = {k: extra.get(k, ()) for k in config.safety_streams if k not in spec.obs_shapes}
            missing_shape = [k for k, v in extras.items() if not v]
            if missing_shape:
                raise ValueError(f"safety_streams: no known shape for {missing_shape} (known: {sorted(extra)})")
            self.ctrl = PolicyController(
                pol, config.safety, config.scheduler, control_hz=config.control_hz or None, extra_streams=extras,
                takeover=config.takeover, inference_backoff_s=config.inference_backoff_s,
                history=config.history, trace=self._make_trace(config), rollout=self._make_rollout(config, pol),
            )
            self._warned: set[str] = set()
            self.rejections = 0
            self._obs_group = ReentrantCallbackGroup()
            shapes = {**spec.obs_shapes, **extras}
            by_topic: dict[str, list[tuple[str, Callable[[Any], tuple[np.ndarray, float]]]]] = {}
            topic_type: dict[str, str] = {}
            for key, shape in shapes.items():
                stream = config.stream_for(key)
                by_topic.setdefault(stream.topic, []).append((key, make_reader(stream, tuple(shape))))
                mtype = MSG_TYPES[stream.reader]
                if topic_type.setdefault(stream.topic, mtype) != mtype:
                    raise ValueError(f"streams: topic {stream.topic} read as both {topic_type[stream.topic]} and {mtype}")
            for topic, readers in by_topic.items():
                self.create_subscription(msg_classes[topic_type[topic]], topic, self._obs_callback(topic, readers),
                                         sensor_pub_qos(10), callback_group=self._obs_group)
            t = config.topics
            flags = MutuallyExclusiveCallbackGroup()
            self.estop_asserted = False
            self.create_subscription(Bool, t.estop, self._on_estop, latched_qos(), callback_group=flags)
            self.create_subscription(Bool, t.intervention, self._on_intervention, latched_qos(), callback_group=flags)
            if config.takeover == "forward" or config.record.store not in ("", "none"):
                # forward: relayed; yield + recording: the executed action of a human step
                self.create_subscription(Float64MultiArray, t.operator_action, self._on_operator, control_qos(),
                                         callback_group=flags)
            self.create_service(Trigger, t.reset_estop, self._on_reset_estop, callback_group=flags)
            self.create_service(Trigger, t.reset_episode, self._on_reset_episode, callback_group=flags)
            from std_srvs.srv import SetBool

            self.create_service(SetBool, t.label, self._on_label, callback_group=flags)
            if config.keyboard_labels and self.ctrl.rollout is not None and sys.stdin is not None and sys.stdin.isatty():
                threading.Thread(target=self._keyboard_labels, name="keyboard-labels", daemon=True).start()
            self.pub_action = self.create_publisher(Float64MultiArray, t.action, control_qos())
            self.pub_source = self.create_publisher(String, t.control_source, control_qos())
            self.pub_diag = self.create_publisher(String, t.diagnostics, control_qos())
            self._to_msg = numpy_to_float_array
            self._String = String
            self.create_timer(1.0 / config.diagnostics_hz, self._publish_diagnostics, callback_group=flags)
            self.ctrl.start()
            self._stop = threading.Event()
            self.context.on_shutdown(self._stop.set)  # Ctrl-C shuts the context down before close() runs
            self._control = threading.Thread(target=self._control_loop, name="control-loop", daemon=True)
            self._control.start()
            name = getattr(pol, "url", "") or type(pol).__name__
            self.get_logger().info(
                f"policy_node: {name} obs={sorted(spec.obs_shapes)} action_dim={spec.action_dim} "
                f"control {self.ctrl.control_hz} Hz, blend={config.scheduler.blend}, takeover={config.takeover}")

        def _make_rollout(self, config: DeployConfig, pol: Policy) -> Any:
            if config.record.store in ("", "none"):
                return None
            from robot_learning.deploy.rollout import RolloutRecorder

            src = config.policy
            policy_id = src.checkpoint or src.server or src.scripted or type(pol).__name__
            hz = config.control_hz or pol.spec.control_hz
            rec = RolloutRecorder(config.record, policy_id, hz, log=self.get_logger().error)
            self.get_logger().info(f"recording every episode into {config.record.store} (source=policy)")
            return rec

        @staticmethod
        def _make_trace(config: DeployConfig) -> Any:
            if not config.trace_dir:
                return None
            from robot_learning.deploy.trace import DeployTrace

            return DeployTrace(config.trace_dir)

        def _check_fits(self, pol: Policy, provided: dict[str, tuple[int, ...]] | None,
                        robot_action_dim: int | None) -> None:
            """ValueError naming every way the policy does not fit ``robot_obs_shapes`` (if set)."""
            if provided is None:
                return
            from robot_learning.serve.server import spec_mismatches

            problems = spec_mismatches(pol.spec, provided, robot_action_dim or pol.spec.action_dim,
                                       self.cfg.safety.action_mode)
            if problems:
                raise ValueError("policy does not fit the robot (robot_obs_shapes): " + "; ".join(problems))

        # -- subscriptions -------------------------------------------------------------------------
        def _obs_callback(self, topic: str, readers: list) -> Callable[[Any], None]:
            def callback(msg: Any) -> None:
                for key, read in readers:
                    try:
                        value, stamp = read(msg)
                        self.ctrl.on_observation(key, value, stamp)
                    except (ValueError, ObservationRejected) as exc:
                        self.rejections += 1
                        self.ctrl.last_problem = str(exc)
                        self.get_logger().warning(f"rejected observation: {exc}", throttle_duration_sec=1.0)
            return callback

        def _on_estop(self, msg: Any) -> None:
            self.estop_asserted = bool(msg.data)
            if self.estop_asserted:
                self.ctrl.estop(f"{self.cfg.topics.estop} asserted")
                self.get_logger().error("e-stop asserted: holding until reset_estop")

        def _on_intervention(self, msg: Any) -> None:
            self.ctrl.set_intervention(bool(msg.data))
            self.get_logger().info(f"intervention={bool(msg.data)}")

        def _on_operator(self, msg: Any) -> None:
            try:
                self.ctrl.set_operator_action(np.asarray(msg.data, dtype=np.float64), now_sec())
            except ValueError as exc:
                self.get_logger().warning(f"operator action: {exc}", throttle_duration_sec=1.0)

        def _on_reset_estop(self, _req: Any, resp: Any) -> Any:
            if self.estop_asserted:
                resp.success, resp.message = False, f"{self.cfg.topics.estop} still reads true: release it first"
            else:
                self.ctrl.reset_estop()
                resp.success, resp.message = True, "e-stop released"
            return resp

        def _on_label(self, req: Any, resp: Any) -> Any:
            if self.ctrl.rollout is None:
                resp.success, resp.message = False, "not recording (deploy store=none)"
            else:
                resp.success, resp.message = True, self.ctrl.rollout.label(bool(req.data), by="service")
            return resp

        def _keyboard_labels(self) -> None:
            print("label the episode: s + Enter = success, f + Enter = failure", flush=True)
            for line in sys.stdin:
                key = line.strip().lower()[:1]
                if key in ("s", "f") and self.ctrl.rollout is not None:
                    self.get_logger().info(self.ctrl.rollout.label(key == "s", by="keyboard"))

        def _on_reset_episode(self, _req: Any, resp: Any) -> Any:
            self.ctrl.reset_episode()
            resp.success, resp.message = True, "policy, history and chunks reset"
            return resp

        # -- control loop ---------------------------------------------------------------------------
        def _control_loop(self) -> None:
            prio = self.cfg.control_priority
            if prio:
                try:  # Linux schedules threads: pid 0 = this thread only
                    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
                except (OSError, AttributeError) as exc:
                    self.get_logger().warning(f"control_priority={prio} not applied ({exc}): needs CAP_SYS_NICE "
                                              "or an rtprio limit; running with normal priority")
            period = 1.0 / self.ctrl.control_hz
            deadline = time.perf_counter()
            self.overruns = 0
            last_tick: float | None = None
            while not self._stop.is_set():
                deadline += period
                delay = deadline - time.perf_counter()
                if delay < 0:  # missed a tick: skip ahead instead of bursting to catch up
                    self.overruns += 1
                    deadline += math.ceil(-delay / period) * period
                    delay = deadline - time.perf_counter()
                if self.cfg.tick_phase == "observation":
                    # phase-lock to the robot's sample clock (stamps are wall time): re-aim this deadline
                    wall = time.time()
                    target = self.ctrl.next_tick_time(wall, last_tick, self.cfg.phase_offset_s)
                    if target is not None:
                        delay = target - wall
                        deadline = time.perf_counter() + delay
                time.sleep(max(0.0, delay))
                last_tick = time.time()
                try:
                    result = self.ctrl.tick()
                    if result.action is not None:
                        self.pub_action.publish(self._to_msg(result.action))
                    self.pub_source.publish(self._String(data=result.source))
                except Exception as exc:  # keep ticking: the next tick holds if this one failed
                    if self._stop.is_set():
                        break
                    self.get_logger().error(f"control tick failed: {exc}", throttle_duration_sec=1.0)

        def _publish_diagnostics(self) -> None:
            d = self.ctrl.diagnostics()
            for line in d.get("warnings", []):
                if line not in self._warned:  # bad input is logged once, with the measured figure
                    self._warned.add(line)
                    self.get_logger().warning(line)
            d["rejected_messages"] = self.rejections
            d["overruns"] = getattr(self, "overruns", 0)
            self.pub_diag.publish(self._String(data=json.dumps(_finite(d))))

        def close(self) -> None:
            """Stop the control thread and the inference worker."""
            self._stop.set()
            self._control.join(timeout=5)
            self.ctrl.stop()
            if self.ctrl.trace is not None:
                self.ctrl.trace.flush()
            if self.ctrl.rollout is not None:
                self.ctrl.rollout.close()
            close = getattr(self.policy, "close", None)
            if close is not None:
                close()

    return PolicyNode()


def run_node(argv: Sequence[str] | None = None, cfg: DeployConfig | None = None) -> int:
    """Init rclpy, spin the node on ``make_executor()`` until Ctrl-C."""
    from ros_nodes.common import run_node_main

    return run_node_main(lambda: make_node(cfg), argv, executor_factory=make_executor)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m ros_nodes.policy_node --ros-args -p config_json:=...``."""
    return run_node(argv)


if __name__ == "__main__":
    sys.exit(main())
