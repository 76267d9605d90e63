"""The camera node as a process: a video file -> sensor_msgs/Image (and CompressedImage) over rclpy."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ros_nodes.common import NodeProcess, compressed_to_numpy, image_to_numpy, recorder_sub_qos, stamp_to_sec
from tests.unit.test_ros_camera_source import write_video

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("encoding", ["rgb8", "jpeg"])
def test_camera_node_publishes_video_frames(rclpy_context, tmp_path, encoding) -> None:
    import rclpy
    from sensor_msgs.msg import CompressedImage, Image

    video = tmp_path / "clip.avi"
    write_video(video, frames=10)
    node = rclpy.create_node("camera_test")
    got: list[tuple[float, float, np.ndarray]] = []
    if encoding == "jpeg":
        node.create_subscription(CompressedImage, "/camera/test/image_raw/compressed",
                                 lambda m: got.append((time.time(), stamp_to_sec(m.header.stamp), compressed_to_numpy(m))),
                                 recorder_sub_qos())
    else:
        node.create_subscription(Image, "/camera/test/image_raw",
                                 lambda m: got.append((time.time(), stamp_to_sec(m.header.stamp), image_to_numpy(m))),
                                 recorder_sub_qos())
    cam = NodeProcess("ros_nodes.camera", {"name": "test", "source": str(video), "fps": 20.0, "loop": True,
                                           "encoding": encoding, "width": 64, "height": 48},
                      rclpy_context.env, tmp_path / "camera.log")
    try:
        end = time.time() + 30
        while len(got) < 25 and time.time() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
        assert cam.alive(), cam.log_text()
    finally:
        cam.stop()
        node.destroy_node()
    assert len(got) >= 25, cam.log_text()
    recv, stamps, imgs = zip(*got, strict=False)
    assert all(img.shape == (48, 64, 3) for img in imgs)
    dt = np.diff(stamps)
    assert np.all(dt > 0) and abs(np.median(dt) - 0.05) < 0.015  # paced at 20 fps
    assert all(r >= s for r, s in zip(recv, stamps, strict=False))  # stamped at capture, before arrival
    levels = np.array([round(np.median(img) / 10) for img in imgs])
    steps = np.diff(levels) % 10  # consecutive frames of the looping 10-frame clip
    assert np.all(steps == 1), levels
