"""The policy node keeps its 50 Hz control loop while the policy blocks for 1 s per prediction.

Real rclpy: the node (in this process, on ``policy_node.make_executor()``) subscribes to observations
that a test node publishes at 50 Hz. The policy blocks for 1 s in native code with the GIL held (the
worst case for a thread: nothing else in its process runs). With ``policy.isolation=process`` (the
default) the control thread must keep ticking; ``thread`` is the contrast that shows the hazard is real.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pytest

from robot_learning.policies.base import Policy, PolicySpec

pytestmark = pytest.mark.integration

HZ = 50.0


class GilHoldingPolicy(Policy):
    """Holds the GIL for 1 s per chunk (ctypes.PyDLL keeps it), then returns zeros."""

    def __init__(self) -> None:
        self.spec = PolicySpec(obs_shapes={"joint_pos": (9,)}, action_dim=5, n_obs_steps=1, horizon=16,
                               n_action_steps=8, control_hz=HZ)

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        import ctypes

        ctypes.PyDLL(None).usleep(1_000_000)
        return np.zeros((16, 5))


def publish_observations(node: Any, stop: threading.Event) -> None:
    """JointState + PoseStamped at 50 Hz, stamped now."""
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState

    from ros_nodes.common import numpy_to_joint_state, numpy_to_pose, sensor_pub_qos

    pj = node.create_publisher(JointState, "/joint_states", sensor_pub_qos(10))
    pp = node.create_publisher(PoseStamped, "/ee_pose", sensor_pub_qos(10))
    while not stop.wait(1.0 / HZ):
        t = time.time()
        pj.publish(numpy_to_joint_state(np.zeros(9), t, np.zeros(9)))
        pp.publish(numpy_to_pose(np.array([0.5, 0, 0.2, 0, 0, 0, 1.0]), t))


def may_use_fifo() -> bool:
    """Whether this process may give a thread SCHED_FIFO (root, CAP_SYS_NICE or an rtprio limit)."""
    allowed: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            allowed.append(True)
        except OSError:
            allowed.append(False)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return allowed[0]


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_control_loop_ticks_while_the_policy_blocks(rclpy_context: Any, isolation: str) -> None:
    import rclpy

    from robot_learning.deploy.config import load_deploy_config
    from ros_nodes.policy_node import make_executor, make_node

    # control_priority too: the control thread asks for SCHED_FIFO (granted here if this process may set it)
    cfg = load_deploy_config({"policy": {"scripted": "test", "isolation": isolation},
                              "safety": {"stale_timeout_s": 2.0}, "control_priority": 10})
    node = make_node(cfg, policy=GilHoldingPolicy())
    executor = make_executor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    pub_node = rclpy.create_node("obs_source")
    stop = threading.Event()
    threading.Thread(target=publish_observations, args=(pub_node, stop), daemon=True).start()
    try:
        diag = node.ctrl.diag
        end = time.time() + 30
        while diag.inference_count < 1 and time.time() < end:  # predictions now run back to back
            time.sleep(0.05)
        assert diag.inference_count >= 1, f"no inference in 30 s: {node.ctrl.last_problem}"
        n0, t0 = diag.tick_count, time.perf_counter()
        time.sleep(2.0)
        ticks, elapsed = diag.tick_count - n0, time.perf_counter() - t0
        expected = elapsed * HZ
        assert diag.inference_count >= 2 and node.ctrl.diagnostics()["inference_p50_ms"] >= 900
        fifo = os.sched_getscheduler(node._control.native_id) == os.SCHED_FIFO
        assert fifo == may_use_fifo(), "control_priority was not applied (or applied without permission?)"
        if isolation == "process":
            assert ticks >= 0.7 * expected, f"{ticks} ticks in {elapsed:.2f} s while the policy blocked"
        else:  # in the node's process the blocked GIL stops the control thread too
            assert ticks <= 0.5 * expected, f"{ticks} ticks in {elapsed:.2f} s: the policy did not block?"
    finally:
        stop.set()
        node.close()
        executor.shutdown()
        node.destroy_node()
        pub_node.destroy_node()
