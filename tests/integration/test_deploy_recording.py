"""Rollouts are data, over real rclpy: a deployed episode lands in a real zarr store with
source=policy, per-step control_source, an operator label, and, in takeover=forward, the operator's
commands as the executed actions."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

OPERATOR = [0.0, 0.0, 0.4, 0.0, 1.0]  # up, gripper open


def test_forward_takeover_and_label_are_recorded(rclpy_context: Any, tmp_path: Path) -> None:
    import rclpy
    from std_msgs.msg import Bool, Float64MultiArray, String
    from std_srvs.srv import SetBool, Trigger

    from robot_learning.data.layout import CONTROL_SOURCES
    from robot_learning.data.store import EpisodeStore
    from ros_nodes.common import NodeProcess, call_service, control_qos, latched_qos, numpy_to_float_array

    store_path = tmp_path / "rollouts.zarr"
    sim = NodeProcess("ros_nodes.sim_robot", {"task": "lift", "cameras": ["front"], "image_size": 32,
                                              "control_hz": 10.0, "seed": 3},
                      env=rclpy_context.env, log_path=tmp_path / "sim.log")
    cfg = {"policy": {"scripted": "expert:lift", "control_hz": 10.0}, "takeover": "forward",
           "record": {"store": str(store_path), "task": "lift", "operator": "ann"}}
    policy = NodeProcess("ros_nodes.policy_node", {"config_json": json.dumps(cfg)}, env=rclpy_context.env,
                         log_path=tmp_path / "policy.log")
    node = rclpy.create_node("recording_probe")
    sources: list[str] = []
    actions: list[tuple[float, np.ndarray]] = []
    node.create_subscription(String, "/policy_node/control_source", lambda m: sources.append(m.data), control_qos())
    node.create_subscription(Float64MultiArray, "/action",
                             lambda m: actions.append((time.time(), np.asarray(m.data))), control_qos())
    pub_int = node.create_publisher(Bool, "/intervention", latched_qos())
    pub_op = node.create_publisher(Float64MultiArray, "/teleop/action", control_qos())
    label = node.create_client(SetBool, "/policy_node/label")
    reset = node.create_client(Trigger, "/policy_node/reset")
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        end = time.time() + 60
        while sources.count("policy") < 10:
            assert time.time() < end, f"no policy control; log: {policy.log_text()[-2000:]}"
            time.sleep(0.05)
        pub_int.publish(Bool(data=True))
        t_take = time.time()
        for _ in range(15):  # 1.5 s of operator commands at 10 Hz
            pub_op.publish(numpy_to_float_array(np.asarray(OPERATOR)))
            time.sleep(0.1)
        pub_int.publish(Bool(data=False))
        time.sleep(0.5)
        assert call_service(label, SetBool.Request(data=False), 10).success  # operator: failure
        assert call_service(reset, Trigger.Request(), 10).success  # episode boundary: commit
        end = time.time() + 30
        while True:
            if store_path.exists():
                store = EpisodeStore.open(str(store_path), mode="r")
                if len(store.episodes()) >= 1:
                    break
            assert time.time() < end, f"no episode stored; log: {policy.log_text()[-2000:]}"
            time.sleep(0.2)
    finally:
        executor.shutdown()
        node.destroy_node()
        policy.stop()
        sim.stop()
    info = store.episodes()[0]
    assert info.meta.source == "policy" and info.meta.policy_id == "expert:lift" and info.meta.operator == "ann"
    assert info.meta.tags["label"] == "failure" and info.meta.tags["labelled_by"] == "service" and not info.success
    assert info.meta.tags["interventions"] == 1
    ep = store.read_episode(0)
    names = np.asarray([CONTROL_SOURCES[c] for c in ep["control_source"]])
    assert {"policy", "human"} <= set(names.tolist())
    human = names == "human"
    assert ep["intervention"][human].all() and not ep["intervention"][names == "policy"].any()
    # the operator's commands (through the safety layer, which ramps the first ones) are the executed actions
    assert np.allclose(ep["action"][human][-5:], OPERATOR, atol=1e-6)
    relayed = [a for t, a in actions if t > t_take + 0.8 and np.allclose(a, OPERATOR)]
    assert len(relayed) >= 3  # and they are what went out on /action
    assert ep["done"][-1] and not ep["done"][:-1].any() and not ep["terminal"][-1]
    # the streams the node reads (the policy's inputs + safety streams), each with its capture stamps
    assert set(ep) >= {"privileged_state", "joint_pos", "ee_pose", "action", "reward", "terminal", "stamp/step",
                       "stamp/joint_pos"}
