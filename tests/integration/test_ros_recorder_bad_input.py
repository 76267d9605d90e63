"""The recorder process under bad input: NaN joints, wrong image size/encoding, out-of-order and
missing stamps, a stream that stops, and a SIGKILL mid-episode; a bad first message, a stamp 60 s in
the future and a driver publishing its joints in another order. It logs the reasons with their
figures, counts, keeps recording the valid messages after them, and never loses a committed episode."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from robot_learning.data.alignment import StreamConfig
from robot_learning.data.store import EpisodeStore
from ros_nodes.common import NodeProcess, numpy_to_float_array, numpy_to_image, numpy_to_joint_state

pytestmark = pytest.mark.integration

JOINTS = [f"joint{i + 1}" for i in range(7)]
STREAMS = [
    StreamConfig("joint", "/joint_states", "joint_state", rate_hz=20.0, names=JOINTS, keep_raw=True),
    StreamConfig("camera_front", "/camera/front/image_raw", "image", rate_hz=20.0, height=24, width=32),
    StreamConfig("action", "/action", "float_array", mode="next", dim=5),
]


class Driver:
    """A stand-in robot driver publishing the recorder's topics from the test process."""

    def __init__(self) -> None:
        import rclpy
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64MultiArray

        from ros_nodes.common import control_qos, sensor_pub_qos

        self.rclpy = rclpy
        self.node = rclpy.create_node("test_driver")
        self.joint = self.node.create_publisher(JointState, "/joint_states", sensor_pub_qos())
        self.cam = self.node.create_publisher(Image, "/camera/front/image_raw", sensor_pub_qos())
        self.action = self.node.create_publisher(Float64MultiArray, "/action", control_qos())
        self.k = 0
        self.status_times: list[float] = []
        from std_msgs.msg import String

        self.node.create_subscription(String, "/recorder/status", lambda _m: self.status_times.append(time.time()), 10)

    def wait_for_recorder(self, since: float, timeout: float = 30.0) -> None:
        """Wait for a status message from a recorder started at ``since`` (a killed one lingers in the graph)."""
        end = time.time() + timeout
        while time.time() < end and not any(t > since for t in self.status_times):
            self.rclpy.spin_once(self.node, timeout_sec=0.1)
        assert any(t > since for t in self.status_times), "recorder never published its status"

    def call(self, name: str, data: bool | None = None, timeout: float = 30.0) -> object:
        from std_srvs.srv import SetBool, Trigger

        srv = Trigger if data is None else SetBool
        from ros_nodes.common import call_service

        client = self.node.create_client(srv, name)
        return call_service(client, srv.Request() if data is None else srv.Request(data=data), timeout, node=self.node)

    def run(self, seconds: float, camera: bool = True, bad: dict | None = None, reorder: bool = False) -> None:
        """Publish joints and camera at 20 Hz, an action every 100 ms; inject ``bad`` once."""
        end = time.time() + seconds
        bad = dict(bad or {})
        while time.time() < end:
            t = time.time()
            q = np.full(7, 0.1 * self.k)
            if bad.pop("nan_joint", False):
                self.joint.publish(numpy_to_joint_state(np.full(7, np.nan), t))
            if bad.pop("old_joint", False):
                self.joint.publish(numpy_to_joint_state(q, t - 5.0))
            if bad.pop("unstamped_joint", False):
                self.joint.publish(numpy_to_joint_state(q, 0.0))
            if bad.pop("short_joint", False):  # 7 names, 6 positions
                self.joint.publish(numpy_to_joint_state(q[:6], t - 0.002, names=JOINTS))
            if bad.pop("future_joint", False):
                self.joint.publish(numpy_to_joint_state(q, t + 60.0, names=JOINTS))
            if reorder:  # another driver's order: the recorder maps by name to joint1..joint7
                q = 0.1 * self.k + np.arange(7.0)
                self.joint.publish(numpy_to_joint_state(q[::-1], t, names=JOINTS[::-1]))
            else:
                self.joint.publish(numpy_to_joint_state(q, t, names=JOINTS))
            if camera:
                if bad.pop("big_image", False):
                    self.cam.publish(numpy_to_image(np.zeros((48, 64, 3), np.uint8), t - 0.001))
                if bad.pop("bad_encoding", False):
                    msg = numpy_to_image(np.zeros((24, 32, 3), np.uint8), t - 0.0005)
                    msg.encoding = "32FC1"
                    self.cam.publish(msg)
                self.cam.publish(numpy_to_image(np.full((24, 32, 3), self.k % 255, np.uint8), t))
            self.rclpy.spin_once(self.node, timeout_sec=0.005)
            if self.k % 2 == 0:
                self.action.publish(numpy_to_float_array(np.full(5, 0.01 * self.k)))
            self.k += 1
            time.sleep(max(0.0, 0.05 - (time.time() - t)))

    def close(self) -> None:
        self.node.destroy_node()


def start_recorder(ros_env, store_path, log_path) -> NodeProcess:
    params = {"store": str(store_path), "streams": [s.to_param() for s in STREAMS], "clock": "joint",
              "control_hz": 10.0, "task": "test", "source": "teleop", "max_wait_s": 0.5, "max_future_s": 1.0}
    return NodeProcess("ros_nodes.recorder", params, ros_env.env, log_path)


def test_recorder_survives_bad_input_and_a_kill(rclpy_context, tmp_path) -> None:
    store_path = tmp_path / "rec.zarr"
    rec = start_recorder(rclpy_context, store_path, tmp_path / "recorder.log")
    drv = Driver()
    try:
        assert drv.call("/recorder/start").success
        time.sleep(0.5)  # let the publishers match the recorder's subscriptions
        drv.run(1.0)
        drv.run(1.0, bad={"nan_joint": True, "old_joint": True, "unstamped_joint": True,
                          "big_image": True, "bad_encoding": True})
        drv.run(1.5, camera=False)  # the camera stops ...
        drv.run(1.0)  # ... and comes back
        assert drv.call("/recorder/mark_success", True).success
        resp = drv.call("/recorder/stop")
        assert resp.success, resp.message
        summary = json.loads(resp.message)
        joint, cam = summary["streams"]["joint"], summary["streams"]["camera_front"]
        assert joint["rejected"] == 3 and cam["rejected"] == 2, summary
        assert cam["missing_steps"] > 0  # steps without a camera frame are dropped, not invented
        assert cam["gaps"] > 0 and joint["lost"] == 0
        drops = summary["dropped_ticks"]  # each dropped tick with its cause: here the camera's pause
        assert sum(n for why, n in drops.items() if why.startswith("camera_front")) == cam["missing_steps"], drops
        assert rec.alive()
        log = rec.log_text()
        for text in ("contains NaN", "out-of-order stamp", "missing or invalid header stamp",
                     "expected 24x32", "unsupported image encoding '32FC1'", "stopped publishing"):
            assert text in log, f"'{text}' not logged:\n{log}"

        store = EpisodeStore.open(store_path, mode="r")
        assert len(store) == 1 and store.episode(0).success
        ep = store.read_episode(0)
        assert ep["camera_front"].shape[1:] == (24, 32, 3) and np.isfinite(ep["joint_pos"]).all()
        assert summary["steps"] == store.episode(0).length > 20, summary
        assert store.episode(0).meta.tags["recorder"]["dropped_ticks"] == drops
        assert "dropped control ticks: camera_front" in rec.log_text()

        # killed mid-episode: the committed episode survives, the next recorder appends after it
        assert drv.call("/recorder/start").success
        drv.run(1.5)
        rec.proc.send_signal(signal.SIGKILL)
        rec.proc.wait(10)
        store = EpisodeStore.open(store_path, mode="r")
        assert len(store) == 1 and store.read_episode(0)["joint_pos"].shape == ep["joint_pos"].shape
        rec.stop()
        since = time.time()
        rec = start_recorder(rclpy_context, store_path, tmp_path / "recorder2.log")
        drv.wait_for_recorder(since)
        assert drv.call("/recorder/start").success
        time.sleep(0.5)
        drv.run(1.0)
        resp = drv.call("/recorder/stop")
        assert resp.success, resp.message
        store = EpisodeStore.open(store_path, mode="r")
        assert len(store) == 2
        np.testing.assert_array_equal(store.read_episode(0)["joint_pos"], ep["joint_pos"])
    finally:
        drv.close()
        rec.stop()


def test_bad_first_message_future_stamp_and_reordered_names(rclpy_context, tmp_path) -> None:
    store_path = tmp_path / "rec.zarr"
    rec = start_recorder(rclpy_context, store_path, tmp_path / "recorder.log")
    drv = Driver()
    try:
        assert drv.call("/recorder/start").success
        time.sleep(0.5)
        # the episode's first joint state has 7 names and 6 positions, its first frame is 48x64
        drv.run(1.0, bad={"short_joint": True, "big_image": True})
        drv.run(1.0, bad={"future_joint": True})  # one joint state stamped 60 s ahead
        drv.run(1.5, reorder=True)  # the driver now publishes joint7..joint1
        resp = drv.call("/recorder/stop")
        assert resp.success, resp.message
        summary = json.loads(resp.message)
        joint, cam = summary["streams"]["joint"], summary["streams"]["camera_front"]
        assert joint["rejected_by"] == {"joint_lengths": 1, "future_stamp": 1}, joint
        assert cam["rejected_by"] == {"image_size": 1}, cam
        assert joint["received"] >= 60 and cam["received"] >= 60, summary  # ~70 valid of each in 3.5 s
        assert joint["gaps"] == 0 and joint["raw"] == joint["received"]
        log = rec.log_text()
        for text in ("has 7 names but 6 positions", "s ahead of the receive clock (limit 1 s)",
                     "image is 48x64, expected 24x32"):
            assert text in log, f"'{text}' not logged:\n{log}"
        assert "stopped publishing" not in log and "is the clock stream" not in log
        store = EpisodeStore.open(store_path, mode="r")
        ep = store.read_episode(0)
        assert store.episode(0).length == summary["steps"] >= 30, summary
        last = ep["joint_pos"][-1]  # recorded in the configured order whatever order the driver used
        np.testing.assert_allclose(last - last[0], np.arange(7.0), atol=1e-5)
        raw, raw_t = store.read_stream(0, "joint_pos")
        assert raw.shape == (joint["received"], 7) and np.all(np.diff(raw_t) > 0)
    finally:
        drv.close()
        rec.stop()
