"""Message conversions, QoS and the loopback environment (message classes only, no ROS graph)."""

from __future__ import annotations

import numpy as np
import pytest

from ros_nodes import common

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message packages not installed")


def test_image_round_trip_and_encodings() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    msg = common.numpy_to_image(img, 1_700_000_000.25, "camera_front")
    assert (msg.height, msg.width, msg.step, msg.encoding) == (48, 64, 192, "rgb8")
    assert common.stamp_to_sec(msg.header.stamp) == pytest.approx(1_700_000_000.25)
    np.testing.assert_array_equal(common.image_to_numpy(msg, (48, 64)), img)
    msg.encoding = "bgr8"
    np.testing.assert_array_equal(common.image_to_numpy(msg), img[:, :, ::-1])
    msg.encoding = "16UC1"
    with pytest.raises(ValueError, match="unsupported image encoding '16UC1'"):
        common.image_to_numpy(msg)
    msg.encoding = "rgb8"
    with pytest.raises(ValueError, match="image is 48x64, expected 96x96"):
        common.image_to_numpy(msg, (96, 96))
    msg.data = msg.data[:-10]
    with pytest.raises(ValueError, match="image data has"):
        common.image_to_numpy(msg)


def test_compressed_round_trip() -> None:
    img = np.full((24, 32, 3), (200, 100, 50), np.uint8)
    msg = common.numpy_to_compressed(img, 5.0)
    out = common.compressed_to_numpy(msg, (24, 32))
    assert np.abs(out.astype(int) - img).max() < 6  # JPEG, colour order preserved


def test_joint_pose_array_conversions() -> None:
    q = np.arange(9, dtype=np.float32)
    msg = common.numpy_to_joint_state(q, 2.5, velocity=-q)
    pos, vel = common.joint_state_to_numpy(msg)
    np.testing.assert_array_equal(pos, q)
    np.testing.assert_array_equal(vel, -q)
    msg.position[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        common.joint_state_to_numpy(msg)
    pose = np.array([0.1, 0.2, 0.3, 0, 0, 0, 1], np.float32)
    np.testing.assert_allclose(common.pose_to_numpy(common.numpy_to_pose(pose, 1.0)), pose)
    arr = common.numpy_to_float_array(np.arange(5.0), {"ee_pos": 3, "steps": 2})
    seg = common.float_array_segments(arr)
    np.testing.assert_array_equal(seg["ee_pos"], [0, 1, 2])
    np.testing.assert_array_equal(seg["steps"], [3, 4])
    with pytest.raises(ValueError, match="labels cover 4 values but the array has 5"):
        common.numpy_to_float_array(np.arange(5.0), {"a": 4})


def test_stamp_conversion_is_exact_to_the_nanosecond() -> None:
    for t in (0.0, 1.5, 1_700_000_000.123456789, 1_795_345_640.999_999_999):
        back = common.stamp_to_sec(common.sec_to_stamp(t))
        assert abs(back - t) < 1e-6


def test_qos_profiles() -> None:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

    rec = common.recorder_sub_qos()
    assert rec.history == HistoryPolicy.KEEP_ALL and rec.reliability == ReliabilityPolicy.RELIABLE
    assert common.recorder_sub_qos(latched=True).durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert common.latched_qos().durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert common.sensor_pub_qos().depth == 100


def test_loopback_env_and_params_file(tmp_path) -> None:
    env = common.loopback_env(42, base={"ROS_LOCALHOST_ONLY": "1", "PATH": "/bin"})
    assert env["ROS_DOMAIN_ID"] == "42" and env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_LOCALHOST_ONLY" not in env and env["PATH"] == "/bin"
    assert common.Path(env["FASTRTPS_DEFAULT_PROFILES_FILE"]).is_file()
    with pytest.raises(ValueError, match="ROS_DOMAIN_ID must be in 0..232"):
        common.loopback_env(300)
    import yaml

    path = common.write_params_file("rec", {"streams": ["a=/a:image"], "store": tmp_path / "s"}, tmp_path)
    body = yaml.safe_load(path.read_text())
    assert body == {"/**": {"ros__parameters": {"streams": ["a=/a:image"], "store": str(tmp_path / "s")}}}


def test_topic_contract() -> None:
    assert common.TOPICS.camera("front") == "/camera/front/image_raw"
    assert common.TOPICS.joint_states == "/joint_states" and common.TOPICS.action == "/action"
