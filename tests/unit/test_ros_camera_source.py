"""The camera node's capture logic on a real video file (OpenCV), without ROS."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ros_nodes.camera import CameraSettings, CameraSource


def write_video(path, frames: int = 12, hw: tuple[int, int] = (48, 64)) -> None:
    """MJPG video whose frame i is uniformly grey level 10*i (survives JPEG)."""
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (hw[1], hw[0]))
    assert w.isOpened()
    for i in range(frames):
        w.write(np.full((*hw, 3), 10 * i, np.uint8))
    w.release()


def test_reads_file_frames_in_order_with_capture_stamps(tmp_path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path)
    src = CameraSource(CameraSettings(source=str(path), width=32, height=24))
    before = time.time()
    frames = []
    while (got := src.read()) is not None:
        frames.append(got)
    src.close()
    assert len(frames) == 12
    imgs, stamps = zip(*frames, strict=False)
    assert all(img.shape == (24, 32, 3) and img.dtype == np.uint8 for img in imgs)  # resized as asked
    levels = [int(np.median(img)) for img in imgs]
    assert all(abs(lv - 10 * i) <= 3 for i, lv in enumerate(levels)), levels
    assert before <= stamps[0] and all(b > a for a, b in zip(stamps, stamps[1:], strict=False))


def test_loop_restarts_a_file(tmp_path) -> None:
    path = tmp_path / "clip.avi"
    write_video(path, frames=3)
    src = CameraSource(CameraSettings(source=str(path), loop=True))
    levels = [int(np.median(src.read()[0])) for _ in range(7)]
    assert [round(lv / 10) for lv in levels] == [0, 1, 2, 0, 1, 2, 0]


def test_bad_settings_and_sources_are_named() -> None:
    with pytest.raises(ValueError, match="encoding 'h264'"):
        CameraSettings(encoding="h264")
    with pytest.raises(RuntimeError, match="cannot open source '/nonexistent/video.mp4'"):
        CameraSource(CameraSettings(source="/nonexistent/video.mp4"))
