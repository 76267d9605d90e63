"""Faults in a running deployment: a policy server that dies mid-episode, a policy that emits NaN.

Real processes and a real rclpy graph: sim_robot as a process, `rlstack serve` as a process
(killed and restarted), the policy node as a process or in this process with an injected policy.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robot_learning.policies.base import Policy
from tests.integration.test_deploy_closed_loop import CONTROL_HZ, Probe, sim_params

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    """`rlstack serve` with the scripted lift expert, as its own process."""
    cmd = [sys.executable, "-m", "robot_learning.cli", "serve", "--scripted", "expert:lift", "--port", str(port),
           "--control-hz", str(CONTROL_HZ)]
    proc = subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT)  # noqa: SIM115
    end = time.time() + 30
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        assert proc.poll() is None, f"policy server exited: {log.read_text()[-2000:]}"
        time.sleep(0.1)
    raise AssertionError("policy server did not start listening")


def test_server_dies_mid_episode_node_holds_and_reconnects(rclpy_context: Any, tmp_path: Path) -> None:
    from ros_nodes.common import NodeProcess

    port = free_port()
    server = start_server(port, tmp_path / "server.log")
    sim = NodeProcess("ros_nodes.sim_robot", sim_params(), env=rclpy_context.env, log_path=tmp_path / "sim.log")
    cfg = {"policy": {"server": f"ws://127.0.0.1:{port}", "timeout_s": 1.0},
           "safety": {"stale_timeout_s": 0.3}, "scheduler": {"blend": "latest"}}
    node = NodeProcess("ros_nodes.policy_node", {"config_json": json.dumps(cfg)}, env=rclpy_context.env,
                       log_path=tmp_path / "policy.log")
    probe = Probe()
    try:
        probe.wait_for(lambda: "policy" in probe.sources_since(time.time() - 0.5), timeout=40, what="policy control")
        server.send_signal(signal.SIGKILL)  # dies mid-episode, no goodbye
        server.wait(10)
        killed = time.time()
        probe.wait_for(lambda: probe.diagnostics.get("inference_errors", 0) > 0, timeout=10, what="inference errors")
        time.sleep(1.0)
        # chunks run out (horizon 2 at 10 Hz): from 0.3 s after the kill the robot must be held
        held = probe.actions_since(killed + 0.3)
        assert held and all(np.all(a[:4] == 0.0) for a in held)
        assert set(probe.sources_since(killed + 0.3)) == {"hold"}
        assert "unreachable" in probe.diagnostics["last_inference_error"] or "policy server" in \
            probe.diagnostics["last_inference_error"]
        assert node.alive()
        server = start_server(port, tmp_path / "server.log")  # restart on the same port
        probe.wait_for(lambda: "policy" in probe.sources_since(time.time() - 0.3), timeout=20,
                       what="policy control after the server restart")
        probe.wait_for(lambda: probe.success, timeout=60, what="task success after the reconnect")
    finally:
        _stop_all(tmp_path, probe, node, sim, server)



def _stop_all(tmp_path: Path, probe: Any, node: Any, sim: Any, server: Any) -> None:
    """Stop the graph and the server, then print every process log (shown by pytest on failure)."""
    node.stop()
    sim.stop()
    server.kill()
    server.wait(10)
    probe.close()
    for log in tmp_path.glob("*.log"):
        print(f"--- {log.name}\n{log.read_text()[-2000:]}")

class NaNEveryOtherChunk(Policy):
    """Wraps the scripted expert; every second chunk is NaN."""

    def __init__(self) -> None:
        from robot_learning.deploy.scripted import ExpertPolicy

        self.inner = ExpertPolicy("lift", control_hz=CONTROL_HZ)
        self.spec = self.inner.spec
        self.calls = 0

    # The node runs it in a child process (policy.isolation=process): send the recipe, not the expert's state.
    def __getstate__(self) -> dict[str, int]:
        return {"calls": self.calls}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__()  # type: ignore[misc]
        self.calls = state["calls"]

    def reset(self) -> None:
        self.inner.reset()

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        chunk = self.inner.predict_chunk(obs_history)
        return chunk * np.nan if self.calls % 2 == 0 else chunk


def test_nan_actions_are_rejected_never_published(rclpy_context: Any, tmp_path: Path) -> None:
    from robot_learning.deploy.config import load_deploy_config
    from ros_nodes.common import NodeProcess
    from ros_nodes.policy_node import make_executor, make_node

    cfg = load_deploy_config({"policy": {"scripted": "expert:lift"}, "safety": {"stale_timeout_s": 0.3}})
    policy = NaNEveryOtherChunk()
    node = make_node(cfg, policy=policy)  # before the sim starts, so a failure here leaves no process behind
    sim = NodeProcess("ros_nodes.sim_robot", sim_params(), env=rclpy_context.env, log_path=tmp_path / "sim.log")
    executor = make_executor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    probe = Probe()
    try:
        probe.wait_for(lambda: node.ctrl.safety.counts.get("bad_action", 0) >= 3, timeout=40, what="NaN rejections")
        # the probe subscribes after the node starts: wait until it has seen both a valid chunk and a hold
        probe.wait_for(lambda: {"policy", "hold"} <= set(probe.sources_since(0)), timeout=30,
                       what="both policy and hold actions")
        actions = probe.actions_since(0)
        assert len(actions) > 2
        assert all(np.all(np.isfinite(a)) for a in actions), "a NaN reached /action"
        assert node.ctrl.safety.counts["bad_action"] >= 3
        # malformed and out-of-order observations: rejected with topic and reason, the node keeps going
        from geometry_msgs.msg import PoseStamped
        from std_msgs.msg import Float64MultiArray

        from ros_nodes.common import numpy_to_float_array, numpy_to_pose, sensor_pub_qos

        pose_pub = probe.node.create_publisher(PoseStamped, "/ee_pose", sensor_pub_qos(10))
        priv_pub = probe.node.create_publisher(Float64MultiArray, "/sim/privileged_state", sensor_pub_qos(10))
        time.sleep(1.0)  # discovery
        pose_pub.publish(numpy_to_pose(np.array([0.5, 0, 0.2, 0, 0, 0, 1.0]), time.time() - 5.0))  # 5 s old
        nan_pose = numpy_to_pose(np.zeros(7), time.time() + 0.001)
        nan_pose.pose.position.x = float("nan")
        pose_pub.publish(nan_pose)
        priv_pub.publish(numpy_to_float_array(np.zeros(3)))  # wrong length
        probe.wait_for(lambda: len(node.ctrl.history.stats.rejected) >= 1 and node.rejections >= 3, timeout=10,
                       what="rejections of the bad observations")
        assert node.ctrl.history.stats.rejected.get("out_of_order", 0) >= 1
        n_before = len(probe.actions_since(0))
        time.sleep(0.5)
        assert len(probe.actions_since(0)) > n_before, "the node must keep ticking after bad input"
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        sim.stop()
        probe.close()


def test_node_refuses_a_policy_that_does_not_fit_the_robot(rclpy_context: Any) -> None:
    from robot_learning.deploy.config import load_deploy_config
    from robot_learning.deploy.scripted import ExpertPolicy
    from ros_nodes.policy_node import make_node

    cfg = load_deploy_config({"policy": {"scripted": "expert:lift"},
                              "robot_obs_shapes": {"joint_pos": [9], "camera_front": [96, 96, 3]}})
    with pytest.raises(ValueError, match="policy needs observation 'privileged_state'"):
        make_node(cfg, policy=ExpertPolicy("lift", control_hz=CONTROL_HZ))


def test_checkpoint_served_remotely_drives_the_sim_through_the_node(rclpy_context: Any, tmp_path: Path) -> None:
    """A (tiny, untrained) diffusion checkpoint: camera images over ROS -> node -> `rlstack serve` -> /action."""
    import torch

    from robot_learning.policies import PolicySpec, build_model
    from robot_learning.policies.checkpoint import ModelPolicy
    from ros_nodes.common import NodeProcess

    spec = PolicySpec(obs_shapes={"camera_front": (32, 32, 3), "joint_pos": (9,), "ee_pose": (7,)}, action_dim=5,
                      n_obs_steps=2, horizon=8, n_action_steps=4, control_hz=CONTROL_HZ)
    stats = {"joint_pos": {"min": [-3.0] * 9, "max": [3.0] * 9}, "ee_pose": {"min": [-1.0] * 7, "max": [1.0] * 7},
             "action": {"min": [-1.0] * 5, "max": [1.0] * 5}}
    torch.manual_seed(0)
    model = build_model("diffusion", {"encoder": {"width": 8, "keypoints": 4, "feature_dim": 8},
                                      "down_dims": [16, 32], "step_embed_dim": 16, "num_inference_steps": 4},
                        spec, stats)
    ckpt = tmp_path / "policy.pt"
    ModelPolicy(model).save(ckpt)

    port = free_port()
    cmd = [sys.executable, "-m", "robot_learning.cli", "serve", "--checkpoint", str(ckpt), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    sim = NodeProcess("ros_nodes.sim_robot", sim_params(), env=rclpy_context.env, log_path=tmp_path / "sim.log")
    cfg = {"policy": {"server": f"ws://127.0.0.1:{port}", "connect_wait_s": 60.0},
           "robot_obs_shapes": {"camera_front": [32, 32, 3], "joint_pos": [9], "ee_pose": [7], "gripper": [1]},
           "safety": {"stale_timeout_s": 0.4, "action_low": [-1.0] * 5, "action_high": [1.0] * 5}}
    node = NodeProcess("ros_nodes.policy_node", {"config_json": json.dumps(cfg)}, env=rclpy_context.env,
                       log_path=tmp_path / "policy.log")
    probe = Probe()
    try:
        probe.wait_for(lambda: probe.diagnostics.get("chunks", 0) >= 5, timeout=90, what="5 chunks from the server")
        d = probe.diagnostics
        assert d["inference_errors"] == 0 and d["rejected_observations"] == {}
        assert "policy" in probe.sources_since(0)
        actions = probe.actions_since(0)
        assert actions and all(np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1.0) for a in actions)
    finally:
        _stop_all(tmp_path, probe, node, sim, server)
