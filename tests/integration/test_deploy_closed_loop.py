"""Closed-loop deployment over real rclpy: the sim_robot node and the policy node as processes.

The policy is the sim's scripted expert reading the privileged-state topic (a real ``Policy``),
so the whole chain — subscriptions, observation history, async inference, scheduling, safety
layer, /action, sim physics — has to work for the task to be solved.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

CONTROL_HZ = 10.0
# The e-stop topic of the contract: sim_robot stops too while it reads true, the policy node latches
# a hold until its reset service is called.
ESTOP_TOPIC = "/estop"


def sim_params(seed: int = 0) -> dict[str, Any]:
    return {"task": "lift", "cameras": ["front"], "image_size": 32, "control_hz": CONTROL_HZ, "seed": seed}


def policy_params(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "policy": {"scripted": "expert:lift", "control_hz": CONTROL_HZ},
        "safety": {"stale_timeout_s": 0.3, "action_low": [-1.0] * 5, "action_high": [1.0] * 5},
        "scheduler": {"blend": "latest"},
    }
    cfg.update(overrides)
    return {"config_json": json.dumps(cfg)}


class Probe:
    """An in-test rclpy node recording what the graph publishes."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Float64MultiArray, String
        from std_srvs.srv import Trigger

        from ros_nodes.common import control_qos, latched_qos, sensor_pub_qos, stamp_to_sec

        self.node = rclpy.create_node("deploy_probe")
        self.success = False
        self.actions: list[tuple[float, np.ndarray]] = []
        self.sources: list[tuple[float, str]] = []
        self.diagnostics: dict[str, Any] = {}
        self.last_obs_stamp = 0.0
        self.lock = threading.Lock()
        n = self.node
        n.create_subscription(Bool, "/sim/success", self._on_success, sensor_pub_qos(10))
        n.create_subscription(Float64MultiArray, "/action", self._on_action, control_qos())
        n.create_subscription(String, "/policy_node/control_source", self._on_source, control_qos())
        n.create_subscription(String, "/policy_node/diagnostics", self._on_diag, control_qos())
        n.create_subscription(JointState, "/joint_states",
                              lambda m: setattr(self, "last_obs_stamp", stamp_to_sec(m.header.stamp)), sensor_pub_qos(10))
        self.pub_estop = n.create_publisher(Bool, ESTOP_TOPIC, latched_qos())
        self.pub_intervention = n.create_publisher(Bool, "/intervention", latched_qos())
        self.reset_estop = n.create_client(Trigger, "/policy_node/reset_estop")
        self.sim_reset = n.create_client(Trigger, "/sim_robot/reset")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_success(self, msg: Any) -> None:
        self.success = self.success or bool(msg.data)

    def _on_action(self, msg: Any) -> None:
        with self.lock:
            self.actions.append((time.time(), np.asarray(msg.data, dtype=float)))

    def _on_source(self, msg: Any) -> None:
        with self.lock:
            self.sources.append((time.time(), msg.data))

    def _on_diag(self, msg: Any) -> None:
        self.diagnostics = json.loads(msg.data)

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; diagnostics: {self.diagnostics}")

    def call(self, client: Any, timeout: float = 10.0) -> Any:
        from std_srvs.srv import Trigger

        from ros_nodes.common import call_service

        return call_service(client, Trigger.Request(), timeout)

    def sources_since(self, t: float) -> list[str]:
        with self.lock:
            return [s for ts, s in self.sources if ts >= t]

    def actions_since(self, t: float) -> list[np.ndarray]:
        with self.lock:
            return [a for ts, a in self.actions if ts >= t]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def graph(rclpy_context: Any, tmp_path: Path):
    """Start sim_robot and return (probe, start_policy_node(params) -> NodeProcess, sim process)."""
    from ros_nodes.common import NodeProcess

    procs: list[NodeProcess] = []
    sim = NodeProcess("ros_nodes.sim_robot", sim_params(), env=rclpy_context.env, log_path=tmp_path / "sim.log")
    procs.append(sim)
    probe = Probe()

    def start_policy(params: dict[str, Any], name: str = "policy_node") -> NodeProcess:
        proc = NodeProcess("ros_nodes.policy_node", params, env=rclpy_context.env,
                           log_path=tmp_path / f"{name}.log", name=name)
        procs.append(proc)
        return proc

    try:
        yield probe, start_policy, sim
    finally:
        for proc in reversed(procs):
            proc.stop()
        probe.close()
        for log in tmp_path.glob("*.log"):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")


def test_policy_node_closes_the_loop_and_solves_lift(graph: Any) -> None:
    probe, start_policy, _sim = graph
    node = start_policy(policy_params())
    probe.wait_for(lambda: probe.success, timeout=60, what="/sim/success to become true")
    assert node.alive()
    probe.wait_for(lambda: probe.diagnostics.get("chunks", 0) > 5, timeout=5, what="diagnostics")
    d = probe.diagnostics
    assert 8.0 < d["loop_hz"] < 12.0
    assert d["inference_p50_ms"] < 100
    assert "policy" in probe.sources_since(0)


def test_watchdog_holds_within_one_period_and_estop_latches_until_reset(graph: Any) -> None:
    probe, start_policy, sim = graph
    start_policy(policy_params())
    probe.wait_for(lambda: "policy" in probe.sources_since(time.time() - 0.5), timeout=40, what="policy control")
    # -- watchdog: freeze the robot process, so no observation arrives any more
    os.kill(sim.pid, signal.SIGSTOP)
    try:
        time.sleep(0.2)  # let the last in-flight observation land
        last = probe.last_obs_stamp
        deadline = last + 0.3 + 1.0 / CONTROL_HZ  # stale timeout + one control period
        time.sleep(max(0.0, deadline - time.time()) + 0.5)
        held = probe.actions_since(deadline + 0.02)  # 20 ms delivery allowance
        assert len(held) >= 3
        assert all(np.all(a[:4] == 0.0) for a in held), "robot must hold (zero motion) once observations stop"
        assert set(probe.sources_since(deadline + 0.02)) == {"hold"}
        assert "stale_observation" in probe.diagnostics.get("last_problem", "") or probe.diagnostics["holds"].get(
            "stale_observation", 0) > 0
    finally:
        os.kill(sim.pid, signal.SIGCONT)
    probe.wait_for(lambda: "policy" in probe.sources_since(time.time() - 0.3), timeout=10,
                   what="policy control after observations resume")
    # -- e-stop latches: releasing the topic is not enough, the reset service is
    from std_msgs.msg import Bool

    probe.pub_estop.publish(Bool(data=True))
    probe.wait_for(lambda: probe.sources_since(time.time() - 0.25)[-2:] == ["estop", "estop"], timeout=5,
                   what="estop")
    refused = probe.call(probe.reset_estop)
    assert not refused.success and "still reads true" in refused.message
    probe.pub_estop.publish(Bool(data=False))
    time.sleep(0.5)
    assert set(probe.sources_since(time.time() - 0.3)) == {"estop"}, "e-stop must stay latched"
    assert probe.call(probe.reset_estop).success
    probe.wait_for(lambda: "policy" in probe.sources_since(time.time() - 0.3), timeout=10,
                   what="policy control after reset_estop")
    # -- takeover: the node yields /action to the operator and says so
    probe.pub_intervention.publish(Bool(data=True))
    probe.wait_for(lambda: probe.sources_since(time.time() - 0.25)[-2:] == ["human", "human"], timeout=5,
                   what="human control")
    t = time.time()
    time.sleep(0.5)
    assert probe.actions_since(t) == [], "the node must not publish /action while the operator drives"
    probe.pub_intervention.publish(Bool(data=False))
    probe.wait_for(lambda: "policy" in probe.sources_since(time.time() - 0.3), timeout=10, what="hand-back")


def test_rlstack_deploy_runs_sim_episodes_and_reports_a_rate(ros_env: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "robot_learning.cli", "deploy", "deploy.policy.scripted=expert:lift",
           "robot.cameras=[front]", "robot.image_size=32", "episodes=2", "max_steps=100",
           f"domain_id={ros_env.domain_id}", f"log_dir={tmp_path}", f"store={tmp_path / 'rollouts.zarr'}"]
    out = subprocess.run(cmd, env=ros_env.env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "deploy_report.json").read_text())
    seeds = report["seeds"]  # as sim_robot's reset service assigned them, from robot.seed on
    assert len(seeds) == 2 and seeds[1] == seeds[0] + 1 and seeds[0] >= 1000
    assert f"deploy lift: success {report['rate']}" in out.stdout
    assert "Wilson 95% CI" in report["rate"] and f"seeds {seeds[0]}-{seeds[1]}" in report["rate"]
    assert report["episodes"] == 2 and report["successes"] >= 1  # the clean expert solves lift
    assert report["diagnostics"]["inference_errors"] == 0
    # every deployed episode is data: source=policy, per-step control_source, the sim's label
    from robot_learning.data.store import EpisodeStore

    store = EpisodeStore.open(str(tmp_path / "rollouts.zarr"), mode="r")
    infos = store.episodes()
    assert len(infos) == 2 and all(i.meta.source == "policy" and i.meta.policy_id == "expert:lift" for i in infos)
    assert [i.success for i in infos] == [bool(s) for s in report["per_episode_success"]]
    assert all(i.meta.tags["labelled_by"] == "service" for i in infos)
    assert "control_source" in store.read_episode(0)
