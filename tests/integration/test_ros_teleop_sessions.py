"""A person drives ``rlstack collect`` under real rclpy against the sim robot standing in for a driver:
keyboard teleop typed into a real terminal (tmux), and a ROS ``sensor_msgs/Joy`` teleop. Both record
and commit episodes through the same operator workflow (begin, move, success, end)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robot_learning.data.store import EpisodeStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
COMMON = ["robot=sim", "task=lift", "task.image_size=32", "startup_timeout_s=120"]


def _wait(pred, timeout: float, what: str, log=lambda: "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


@pytest.mark.timeout(400)
def test_keyboard_teleop_in_a_terminal_records_and_commits(ros_env, tmp_path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed to drive the keyboard teleop through a terminal (apt-get install tmux)")
    store = tmp_path / "kb.zarr"
    session = f"rlstack_kb_{ros_env.domain_id}"
    cmd = [sys.executable, "-m", "robot_learning.cli", "collect", *COMMON, "teleop=keyboard", "episodes=2",
           f"store={store}", f"domain_id={ros_env.domain_id}"]
    script = tmp_path / "run.sh"
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in ros_env.env.items()
                      if k.startswith(("ROS_", "FAST", "RMW_", "PYTHON", "PATH", "LD_", "HOME")))
    script.write_text(f"{exports}cd {shlex.quote(str(ROOT))}\n{shlex.join(cmd)} 2>&1 | tee {tmp_path}/out.txt\n"
                      f"echo EXIT=${{PIPESTATUS[0]}} >> {tmp_path}/out.txt\nsleep 30\n")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "220", "-y", "50", f"bash {script}"], check=True)
    out = tmp_path / "out.txt"

    def text() -> str:
        return out.read_text(errors="replace") if out.exists() else ""

    def keys(*k: str) -> None:
        for key in k:
            subprocess.run(["tmux", "send-keys", "-t", session, "-l", key], check=True)
            time.sleep(0.15)

    try:
        _wait(lambda: "idle (0 committed)" in text(), 180, "the graph to come up", text)
        time.sleep(1.0)
        for episode in range(2):
            keys("b")
            _wait(lambda: "REC" in text().rsplit("idle", 1)[-1], 30, f"episode {episode} to start", text)
            keys(*("w" * 12), *("r" * 6), " ", "i", "y")  # move +x, +z, close the gripper, take over, success
            time.sleep(1.0)
            keys("n")
            _wait(lambda e=episode: f"idle ({e + 1} committed)" in text() or "EXIT=" in text(), 60,
                  f"episode {episode} to be committed", text)
        _wait(lambda: "EXIT=" in text(), 60, "rlstack collect to return", text)
        assert "EXIT=0" in text(), text()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    s = EpisodeStore.open(store, mode="r")
    assert len(s) == 2, text()
    for i in range(2):
        info, ep = s.episode(i), s.read_episode(i)
        assert info.success and info.length >= 5, info
        assert (ep["action"][:, 0] > 0.5).any()  # the w key moved +x
        assert (ep["action"][:, -1] == -1.0).any()  # space closed the gripper
        assert ep["intervention"].any()
        assert ep["joint_pos"].shape[1:] == (9,) and ep["camera_front"].shape[1:] == (32, 32, 3)


@pytest.mark.timeout(400)
def test_joy_topic_teleop_records_and_commits(rclpy_context, tmp_path) -> None:
    import rclpy
    from sensor_msgs.msg import Joy
    from std_msgs.msg import String

    store = tmp_path / "joy.zarr"
    log = open(tmp_path / "collect.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "robot_learning.cli", "collect", *COMMON, "teleop=joy",
                             "episodes=2", f"store={store}", f"domain_id={rclpy_context.domain_id}"],
                            env=rclpy_context.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    node = rclpy.create_node("test_joy_operator")
    pub = node.create_publisher(Joy, "/joy", 10)
    status: dict = {}
    import json

    node.create_subscription(String, "/recorder/status", lambda m: status.update(json.loads(m.data)), 10)

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)

    def joy(axes=(), buttons=(), seconds: float = 0.3) -> None:
        msg = Joy(axes=[0.0] * 8, buttons=[0] * 11)
        for i, v in axes:
            msg.axes[i] = v
        for b in buttons:
            msg.buttons[b] = 1
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # the joy node republishes at ~20 Hz while a stick is held
            msg.header.stamp = node.get_clock().now().to_msg()
            pub.publish(msg)
            spin(0.05)

    def wait(pred, timeout, what) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not pred():
            spin(0.2)
            assert proc.poll() is None or pred(), (tmp_path / "collect.log").read_text()
        assert pred(), f"timed out waiting for {what}: {status}\n{(tmp_path / 'collect.log').read_text()}"

    try:
        wait(lambda: "committed" in status and pub.get_subscription_count() > 0, 180, "the graph")
        for episode in range(2):
            joy(buttons=[7]), joy()  # start: begin
            wait(lambda: status.get("recording"), 30, f"episode {episode} to start")
            joy(axes=[(1, 1.0), (4, 0.5)], seconds=1.5)  # left stick forward, right stick up
            joy(buttons=[5]), joy()  # RB: gripper
            joy(buttons=[3]), joy()  # Y: intervention
            joy(buttons=[0]), joy()  # A: success
            joy(buttons=[6]), joy()  # back: end + commit
            wait(lambda e=episode: status.get("committed", 0) >= e + 1 and not status.get("recording"), 60,
                 f"episode {episode} to be committed")
        assert proc.wait(60) == 0, (tmp_path / "collect.log").read_text()
    finally:
        node.destroy_node()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        log.close()
    s = EpisodeStore.open(store, mode="r")
    assert len(s) == 2
    for i in range(2):
        ep = s.read_episode(i)
        assert s.episode(i).success
        assert np.isclose(ep["action"][:, 0], 1.0).any() and np.isclose(ep["action"][:, 2], 0.5).any()
        assert (ep["action"][:, -1] == -1.0).any() and ep["intervention"].any()


@pytest.mark.timeout(400)
def test_external_robot_driven_by_a_twist_teleop_and_services(rclpy_context, tmp_path) -> None:
    """The README's real-robot command with the sim robot standing in for the driver, driven by a
    geometry_msgs/Twist teleop (teleop_twist_keyboard's topic) and the workflow services."""
    import json

    import rclpy
    from geometry_msgs.msg import Twist
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger

    from ros_nodes.common import NodeProcess, call_service

    driver = NodeProcess("ros_nodes.sim_robot", {
        "task": "lift", "cameras": ["front"], "image_size": 32, "control_hz": 10.0, "dr": "none", "seed": 0,
        "task_flags": [""], "autostart": True}, rclpy_context.env, tmp_path / "driver.log")
    store = tmp_path / "real.zarr"
    log = open(tmp_path / "collect.log", "w")  # noqa: SIM115
    joints = "[" + ",".join(f"joint{i + 1}" for i in range(7)) + "]"
    proc = subprocess.Popen([sys.executable, "-m", "robot_learning.cli", "collect", "robot=external", "teleop=twist",
                             "task=lift", "episodes=1", f"store={store}", f"domain_id={rclpy_context.domain_id}",
                             f"robot.joint_names={joints}", "robot.image_hw=[32,32]", "startup_timeout_s=120"],
                            env=rclpy_context.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    node = rclpy.create_node("test_twist_operator")
    pub = node.create_publisher(Twist, "/cmd_vel", 10)
    status: dict = {}
    node.create_subscription(String, "/recorder/status", lambda m: status.update(json.loads(m.data)), 10)

    def call(name: str, data: bool | None = None):
        srv = Trigger if data is None else SetBool
        return call_service(node.create_client(srv, name), srv.Request() if data is None else srv.Request(data=data),
                            60, node=node)

    def twist(vx: float, wz: float, seconds: float) -> None:
        msg = Twist()
        msg.linear.x, msg.angular.z = vx, wz
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # teleop_twist_* republish while a key / stick is held
            pub.publish(msg)
            rclpy.spin_once(node, timeout_sec=0.05)

    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and not ("committed" in status and pub.get_subscription_count() > 0):
            rclpy.spin_once(node, timeout_sec=0.2)
            assert proc.poll() is None, (tmp_path / "collect.log").read_text()
        assert call("/recorder/start").success
        twist(0.25, -0.5, 1.5)  # 0.25 m/s forward, turning: half of full scale
        assert call("/teleop/gripper", False).success  # close
        assert call("/teleop/intervention", True).success
        twist(0.0, 0.0, 0.5)
        assert call("/recorder/mark_success", True).success
        resp = call("/recorder/stop")
        assert resp.success, resp.message
        assert proc.wait(60) == 0, (tmp_path / "collect.log").read_text()
    finally:
        node.destroy_node()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        log.close()
        driver.stop()
    s = EpisodeStore.open(store, mode="r")
    assert len(s) == 1 and s.episode(0).success
    ep = s.read_episode(0)
    assert np.isclose(ep["action"][:, 0], 0.5).any() and np.isclose(ep["action"][:, 3], -0.5).any()
    assert (ep["action"][:, -1] == -1.0).any() and ep["intervention"].any()
    raw, raw_t = s.read_stream(0, "joint_pos")  # robot=external keeps the driver's raw joint samples
    assert raw.shape[1:] == (7,) and len(raw_t) >= s.episode(0).length
