"""``sim_robot`` node: the PyBullet robot behind the same ROS 2 topics a real driver publishes.

Each control tick it applies the newest ``/action`` (or holds still if none came), observes, and
publishes joint states, gripper, end-effector pose, camera images, the task's success flag and the
privileged state the scripted expert teleoperator needs. ``/sim_robot/reset`` (std_srvs/Trigger)
starts a new episode with the next seed.

    python -m ros_nodes.sim_robot --ros-args -p task:=lift -p control_hz:=10.0 -p cameras:="[front, wrist]"
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from robot_learning.robot import Observation
from ros_nodes.common import TOPICS
from sim.privileged import privileged_segments


class SimRobotLoop:
    """Node logic without rclpy: actions in, observations out, one ``tick`` per control period."""

    def __init__(self, robot: Any, base_seed: int = 0, task_flags: Sequence[str] = ()) -> None:
        self.robot = robot
        self.base_seed = int(base_seed)
        self.task_flags = tuple(task_flags)
        for flag in self.task_flags:
            if not callable(getattr(robot.task, flag, None)):
                raise ValueError(f"task_flags: task '{robot.task.name}' has no predicate '{flag}'")
        self.episode = -1
        self.seed: int | None = None
        self._pending: np.ndarray | None = None
        self._last: np.ndarray | None = None
        self._fresh = True  # the first tick after a reset only observes
        self.ticks_without_action = 0
        self.rejected_actions = 0

    def on_action(self, action: np.ndarray) -> None:
        """Queue the newest action for the next tick; ValueError (and counted) if malformed."""
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        dim = self.robot.spec.action_dim
        if a.size != dim or not np.all(np.isfinite(a)):
            self.rejected_actions += 1
            raise ValueError(f"{TOPICS.action}: expected {dim} finite values, got {a.size} {a.tolist()[:8]}")
        self._pending = a

    def reset(self) -> int:
        """Start the next episode (seed = base_seed + episode number); returns the seed."""
        self.episode += 1
        self.seed = self.base_seed + self.episode
        self.robot.reset(self.seed)
        self._pending, self._last, self._fresh = None, None, True
        return self.seed

    def warm_up(self) -> None:
        """A valid scene to publish before the first reset, without using up an episode seed."""
        self.robot.reset(self.base_seed)
        self._pending, self._last, self._fresh = None, None, True

    def _hold_action(self) -> np.ndarray:
        # Without a fresh command the robot holds still: zero motion, gripper command unchanged.
        hold = np.zeros(self.robot.spec.action_dim, dtype=np.float32)
        if self._last is not None and self.robot.spec.action_mode == "ee_delta":
            hold[-1] = self._last[-1]
        elif self._last is not None:
            hold = self._last.copy()
        else:
            hold[-1] = 1.0  # open
        return hold

    def tick(self) -> Observation:
        """Apply the pending action (not on the first tick of an episode), then observe."""
        if not self._fresh:
            if self._pending is None:
                self.ticks_without_action += 1
                action = self._hold_action()
            else:
                action = self._pending
            self.robot.act(action)
            self._last, self._pending = action, None
        self._fresh = False
        return self.robot.observe()

    def privileged(self) -> dict[str, np.ndarray]:
        """What the expert teleoperator reads: privileged state, step counter and task predicates."""
        return privileged_segments(self.robot, self.task_flags)


def make_node(robot: Any | None = None) -> Any:
    """Build the rclpy node (parameters from the command line / params file)."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool, Float64MultiArray
    from std_srvs.srv import SetBool, Trigger

    from ros_nodes.common import (
        control_qos,
        float_array_to_numpy,
        latched_qos,
        numpy_to_float_array,
        numpy_to_image,
        numpy_to_joint_state,
        numpy_to_pose,
        sensor_pub_qos,
    )

    class SimRobotNode(Node):
        """Thin rclpy wiring around ``SimRobotLoop``."""

        def __init__(self) -> None:
            super().__init__("sim_robot")
            p = {
                "task": self.declare_parameter("task", "lift").value,
                # an empty list arrives as None (no type to infer): no cameras, a state-only robot
                "cameras": [c for c in (self.declare_parameter("cameras", ["front", "wrist"]).value or []) if c],
                "image_size": int(self.declare_parameter("image_size", 96).value),
                "control_hz": float(self.declare_parameter("control_hz", 10.0).value),
                "dr": self.declare_parameter("dr", "none").value,
                "seed": int(self.declare_parameter("seed", 0).value),
            }
            task_flags = [f for f in self.declare_parameter("task_flags", [""]).value if f]
            self.running = bool(self.declare_parameter("autostart", True).value)
            self.queue_depth = int(self.declare_parameter("queue_depth", 100).value)
            # "state": every stream carries the time the physics state was read. The sim does not step
            # while it renders, so an image shows the scene at that instant; the sim's later per-camera
            # stamps measure render time, not capture delay. "capture": keep the sim's per-stream stamps.
            self.stamp_mode = self.declare_parameter("stamp_mode", "state").value
            if self.stamp_mode not in ("state", "capture"):
                raise ValueError(f"sim_robot: stamp_mode '{self.stamp_mode}': choose state or capture")
            if robot is None:
                from sim import make_robot

                self.robot = make_robot(
                    task=p["task"], cameras=tuple(p["cameras"]), image_size=p["image_size"],
                    control_hz=p["control_hz"], dr=p["dr"], seed=p["seed"],
                )
            else:
                self.robot = robot
            self.loop = SimRobotLoop(self.robot, base_seed=p["seed"], task_flags=task_flags)
            qos = sensor_pub_qos(self.queue_depth)
            self.pub_joints = self.create_publisher(JointState, TOPICS.joint_states, qos)
            self.pub_gripper = self.create_publisher(JointState, TOPICS.gripper, qos)
            self.pub_pose = self.create_publisher(PoseStamped, TOPICS.ee_pose, qos)
            self.pub_cams = {
                k: self.create_publisher(Image, TOPICS.camera(k[len("camera_"):]), qos)
                for k in self.robot.spec.camera_keys
            }
            self.pub_priv = self.create_publisher(Float64MultiArray, TOPICS.privileged_state, qos)
            self.pub_success = self.create_publisher(Bool, TOPICS.success, qos)
            self.create_subscription(Float64MultiArray, TOPICS.action, self._on_action, control_qos())
            self.estopped = False
            self.create_subscription(Bool, TOPICS.estop, self._on_estop, latched_qos())
            self.create_service(Trigger, TOPICS.sim_reset, self._on_reset)
            self.create_service(SetBool, TOPICS.sim_enable, self._on_enable)
            self.loop.warm_up()  # the first /sim_robot/reset then starts episode 0 with seed `seed`
            self.timer = self.create_timer(1.0 / p["control_hz"], self._tick)
            self.get_logger().info(
                f"sim_robot: task={p['task']} cameras={p['cameras']} {p['image_size']}px @ {p['control_hz']} Hz, "
                f"seed {p['seed']}")

        def _on_action(self, msg: Any) -> None:
            try:
                self.loop.on_action(float_array_to_numpy(msg, where=f"{TOPICS.action}: "))
            except ValueError as exc:
                self.get_logger().error(f"rejected action: {exc}", throttle_duration_sec=1.0)

        def _on_estop(self, msg: Any) -> None:
            self.estopped = bool(msg.data)
            if self.estopped:
                self.get_logger().error("estop: control loop stopped")
            else:
                self.get_logger().info("estop released: control loop running")

        def _on_reset(self, _req: Any, resp: Any) -> Any:
            seed = self.loop.reset()
            if self.running:
                self._start_episode_clock()
            resp.success, resp.message = True, f"episode {self.loop.episode} seed {seed}"
            return resp

        def _on_enable(self, req: Any, resp: Any) -> Any:
            was, self.running = self.running, bool(req.data)
            if self.running and not was:
                self._start_episode_clock()
            resp.success, resp.message = True, f"running={self.running}"
            return resp

        def _start_episode_clock(self) -> None:
            self._publish(self.loop.tick())  # the current observation goes out at once
            self.timer.reset()  # and the next tick is a full period later, giving the teleop time to answer

        def _tick(self) -> None:
            if self.estopped or not self.running:
                return  # no commands executed, nothing published: the robot is stopped
            self._publish(self.loop.tick())

        def _publish(self, obs: Observation) -> None:
            d, s = obs.data, obs.stamps
            if self.stamp_mode == "state":
                s = dict.fromkeys(s, s["joint_pos"])
            self.pub_joints.publish(numpy_to_joint_state(d["joint_pos"], s["joint_pos"], d["joint_vel"]))
            self.pub_gripper.publish(numpy_to_joint_state(d["gripper"], s["gripper"], names=["gripper"]))
            self.pub_pose.publish(numpy_to_pose(d["ee_pose"], s["ee_pose"]))
            for key, pub in self.pub_cams.items():
                pub.publish(numpy_to_image(d[key], s[key], frame_id=key))
            priv = self.loop.privileged()
            self.pub_priv.publish(numpy_to_float_array(
                np.concatenate(list(priv.values())), {k: v.size for k, v in priv.items()}))
            self.pub_success.publish(Bool(data=bool(self.robot.success())))

        def close(self) -> None:
            """Release the physics client."""
            self.robot.close()

    return SimRobotNode()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m ros_nodes.sim_robot --ros-args -p task:=lift``."""
    from ros_nodes.common import run_node_main

    return run_node_main(make_node, argv)


if __name__ == "__main__":
    sys.exit(main())
