"""``camera`` node: an OpenCV ``VideoCapture`` source (device index, path, URL or video file) -> Image.

Each frame is stamped with its capture time: the wall clock right after ``grab()`` returns (the
driver has the frame then), before the slower ``retrieve()`` decode. A video file plays at ``fps``
(paced by the node), loops if ``loop`` is set, and otherwise stops publishing at its end.

    python -m ros_nodes.camera --ros-args -p name:=front -p source:=0 -p fps:=30.0 -p width:=640 -p height:=480
    python -m ros_nodes.camera --ros-args -p name:=front -p source:=demo.mp4 -p encoding:=jpeg
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class CameraSettings:
    """Parameters of one camera."""

    source: str = "0"  # device index ("0"), /dev/videoN, file path or URL (rtsp://, http://)
    width: int = 0  # requested capture size; 0 = the device's default
    height: int = 0
    fps: float = 30.0
    encoding: str = "rgb8"  # rgb8 (sensor_msgs/Image) or jpeg (sensor_msgs/CompressedImage)
    jpeg_quality: int = 90
    loop: bool = False  # video files: start again at the end

    def __post_init__(self) -> None:
        if self.encoding not in ("rgb8", "jpeg"):
            raise ValueError(f"camera: encoding '{self.encoding}' (choose rgb8 or jpeg)")
        if self.fps <= 0:
            raise ValueError(f"camera: fps must be > 0, got {self.fps}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"camera: jpeg_quality must be in 1..100, got {self.jpeg_quality}")


class CameraSource:
    """OpenCV capture without ROS: ``read()`` -> (RGB frame, capture time) or None at the end."""

    def __init__(self, settings: CameraSettings) -> None:
        import cv2

        self.cv2 = cv2
        self.settings = settings
        src: int | str = int(settings.source) if settings.source.isdigit() else settings.source
        self.cap = cv2.VideoCapture(src)
        if not self.cap.isOpened():
            raise RuntimeError(f"camera: cannot open source '{settings.source}' (device index, file or URL)")
        if settings.width and settings.height:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, settings.width)
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, settings.height)
        self.cap.set(cv2.CAP_PROP_FPS, settings.fps)
        self.is_file = isinstance(src, str) and "://" not in src and not src.startswith("/dev/")
        self.frames = 0

    def read(self) -> tuple[np.ndarray, float] | None:
        """Next frame as uint8 HxWx3 RGB with its capture time; None when the source has ended."""
        if not self.cap.grab():
            if self.is_file and self.settings.loop and self.frames:
                self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
                if not self.cap.grab():
                    return None
            else:
                return None
        stamp = time.time()
        ok, bgr = self.cap.retrieve()
        if not ok or bgr is None:
            return None
        if self.settings.width and self.settings.height and bgr.shape[:2] != (self.settings.height, self.settings.width):
            # Devices that cannot do the requested size, and video files, are resized here.
            bgr = self.cv2.resize(bgr, (self.settings.width, self.settings.height), interpolation=self.cv2.INTER_AREA)
        self.frames += 1
        return self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB), stamp

    def close(self) -> None:
        """Release the device."""
        self.cap.release()


def make_node() -> Any:
    """Build the rclpy node (parameters from the command line / params file)."""
    import threading

    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage, Image

    from ros_nodes.common import TOPICS, numpy_to_compressed, numpy_to_image, sensor_pub_qos

    class CameraNode(Node):
        """Capture thread -> publisher; paced at ``fps`` for files, at the device's rate for cameras."""

        def __init__(self) -> None:
            super().__init__("camera")
            self.cam_name = self.declare_parameter("name", "front").value
            self.settings = CameraSettings(
                source=str(self.declare_parameter("source", "0").value),
                width=int(self.declare_parameter("width", 0).value),
                height=int(self.declare_parameter("height", 0).value),
                fps=float(self.declare_parameter("fps", 30.0).value),
                encoding=self.declare_parameter("encoding", "rgb8").value,
                jpeg_quality=int(self.declare_parameter("jpeg_quality", 90).value),
                loop=bool(self.declare_parameter("loop", False).value),
            )
            self.source = CameraSource(self.settings)
            qos = sensor_pub_qos(int(self.declare_parameter("queue_depth", 100).value))
            if self.settings.encoding == "jpeg":
                self.pub = self.create_publisher(CompressedImage, TOPICS.camera_compressed(self.cam_name), qos)
            else:
                self.pub = self.create_publisher(Image, TOPICS.camera(self.cam_name), qos)
            self.published = 0
            self._stop = threading.Event()
            self.thread = threading.Thread(target=self._run, daemon=True, name="capture")
            self.thread.start()
            self.get_logger().info(f"camera '{self.cam_name}': {self.settings.source} -> {self.pub.topic_name} "
                                   f"@ {self.settings.fps} fps ({self.settings.encoding})")

        def _run(self) -> None:
            period = 1.0 / self.settings.fps
            next_t = time.monotonic()
            frame_id = f"camera_{self.cam_name}"
            while not self._stop.is_set():
                if self.source.is_file:  # a file has no clock of its own: pace it
                    next_t += period
                    time.sleep(max(0.0, next_t - time.monotonic()))
                got = self.source.read()
                if got is None:
                    self.get_logger().warning(f"camera '{self.cam_name}': source ended after {self.source.frames} frames")
                    return
                img, stamp = got
                if self.settings.encoding == "jpeg":
                    msg = numpy_to_compressed(img, stamp, frame_id, self.settings.jpeg_quality)
                else:
                    msg = numpy_to_image(img, stamp, frame_id)
                self.pub.publish(msg)
                self.published += 1

        def close(self) -> None:
            """Stop capturing and release the device."""
            self._stop.set()
            self.thread.join(timeout=2.0)
            self.source.close()

    return CameraNode()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m ros_nodes.camera --ros-args -p source:=0``."""
    from ros_nodes.common import run_node_main

    return run_node_main(make_node, argv)


if __name__ == "__main__":
    sys.exit(main())
