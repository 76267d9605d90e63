"""Stream alignment (plain Python, no rclpy): steps from the clock stream, nearest/next/latest picks,
alignment error, bad-input rejection, stale streams."""

from __future__ import annotations

import numpy as np
import pytest

from robot_learning.data.alignment import EpisodeAligner, SampleError, StreamConfig

T0 = 1_700_000_000.0
JOINTS = [f"joint{i + 1}" for i in range(7)]


def streams(cam_rate: float = 30.0) -> list[StreamConfig]:
    return [
        StreamConfig("joint", "/joint_states", "joint_state", rate_hz=500.0, names=JOINTS),
        StreamConfig("camera_front", "/camera/front/image_raw", "image", rate_hz=cam_rate, height=4, width=6),
        StreamConfig("action", "/action", "float_array", mode="next", dim=5),
        StreamConfig("intervention", "/intervention", "bool", mode="latest"),
    ]


def joint(v: float) -> dict[str, np.ndarray]:
    return {"joint_pos": np.full(7, v, np.float32), "joint_vel": np.zeros(7, np.float32)}


def image(v: int) -> dict[str, np.ndarray]:
    return {"camera_front": np.full((4, 6, 3), v % 256, np.uint8)}


def feed_session(al: EpisodeAligner, seconds: float, cam_offset: float = 0.0) -> list:
    """500 Hz joints, 30 Hz camera, one action 5 ms after each 10 Hz step, in time order."""
    events = []
    for i in range(int(seconds * 500)):
        events.append((T0 + i / 500, "joint", joint(i)))
    for i in range(int(seconds * 30)):
        events.append((T0 + cam_offset + i / 30, "camera_front", image(i)))
    for k in range(int(seconds * 10)):
        events.append((T0 + k / 10 + 0.005, "action", {"action": np.full(5, k, np.float32)}))
    events.sort(key=lambda e: e[0])
    out = []
    for t, name, values in events:
        stamp = None if name == "action" else t
        al.add(name, stamp, values, recv_time=t + 0.001)
        out += al.pop_ready(now=t + 0.001)
    return out + al.flush()


def test_steps_follow_control_clock_and_pick_nearest() -> None:
    al = EpisodeAligner(streams(), clock="joint", control_hz=10.0)
    steps = feed_session(al, 2.0)
    assert len(steps) == 20  # 2 s of a 500 Hz clock decimated to 10 Hz
    assert al.stats["action"].missing_steps == 0
    dts = np.diff([s.t for s in steps])
    assert np.allclose(dts, 0.1, atol=1e-6)
    for k, s in enumerate(steps):
        assert s.data["action"][0] == k  # the action sent after observation k
        assert abs(s.stamps["camera_front"] - s.t) <= 0.5 / 30 + 1e-9
        assert s.stamps["joint_pos"] == s.t
        assert not bool(s.data["intervention"])
    summary = al.summary()
    assert summary["camera_front"]["align_err_max_ms"] <= 1000 * 0.5 / 30 + 1e-6
    assert summary["joint"]["align_err_max_ms"] == 0.0
    assert summary["camera_front"]["dropped"] == 0 and summary["camera_front"]["gaps"] == 0


def test_late_action_still_pairs_with_its_step_and_a_missing_one_drops_a_step() -> None:
    al = EpisodeAligner(streams(), clock="joint", control_hz=10.0)
    lat = {0: 0.01, 1: 0.105, 2: 0.01, 3: None, 4: 0.01}  # step 1 answered after obs 2; step 3 never
    events = []
    for k in range(5):
        events += [(T0 + k / 10, "joint", joint(k)), (T0 + k / 10, "camera_front", image(k))]
        if lat[k] is not None:
            events.append((T0 + k / 10 + lat[k], "action", {"action": np.full(5, k, np.float32)}))
    for t, name, values in sorted(events, key=lambda e: e[0]):
        al.add(name, None if name == "action" else t, values, t)
    steps = al.flush()
    # each action is used once, in order: step 1 keeps its late answer. A skipped answer cannot be told
    # from a late one by timing alone: step 3 takes step 4's answer and step 4 is dropped (documented).
    assert [int(s.data["joint_pos"][0]) for s in steps] == [0, 1, 2, 3]
    assert [int(s.data["action"][0]) for s in steps] == [0, 1, 2, 4]
    assert al.stats["action"].missing_steps == 1


def test_bad_samples_are_rejected_named_and_counted() -> None:
    al = EpisodeAligner(streams(), clock="joint", control_hz=10.0)
    al.add("joint", T0, joint(0), T0)
    with pytest.raises(SampleError, match="joint.*out-of-order"):
        al.add("joint", T0 - 0.01, joint(1), T0)
    with pytest.raises(SampleError, match="missing or invalid header stamp"):
        al.add("camera_front", 0.0, image(0), T0)
    with pytest.raises(SampleError, match="camera_front.*has shape .5, 6, 3., the configuration declares .4, 6, 3."):
        al.add("camera_front", T0, image(0), T0)
        al.add("camera_front", T0 + 0.03, {"camera_front": np.zeros((5, 6, 3), np.uint8)}, T0)
    assert al.stats["joint"].rejected == 1
    assert al.stats["camera_front"].rejected == 2
    summary = al.summary()["camera_front"]
    assert "configuration declares" in summary["last_error"]
    assert summary["rejected_by"] == {"bad_stamp": 1, "shape": 1}


def test_gaps_counted_from_stamps() -> None:
    al = EpisodeAligner(streams(), clock="joint", control_hz=10.0)
    for i in (0, 1, 2, 6, 7):  # frames 3, 4, 5 never came
        al.add("camera_front", T0 + i / 30, image(i), T0 + i / 30)
    assert al.stats["camera_front"].gaps == 3


def test_stopped_stream_does_not_block_forever() -> None:
    al = EpisodeAligner(streams(), clock="joint", control_hz=10.0, max_wait_s=0.5)
    al.add("camera_front", T0, image(0), T0)
    al.add("joint", T0 + 0.01, joint(0), T0 + 0.01)
    al.add("action", None, {"action": np.zeros(5, np.float32)}, T0 + 0.02)
    assert al.pop_ready(now=T0 + 0.1) == []  # camera may still send a closer frame
    steps = al.pop_ready(now=T0 + 0.6)  # camera silent: resolve with what there is
    assert len(steps) == 1 and steps[0].stamps["camera_front"] == T0


def test_samples_before_start_are_ignored() -> None:
    al = EpisodeAligner(streams(), clock="joint", control_hz=10.0, start_time=T0 + 1.0)
    al.add("joint", T0 + 0.5, joint(0), T0 + 0.5)
    assert al.stats["joint"].received == 0 and not al.pending


def test_stream_config_param_round_trip_and_errors() -> None:
    s = StreamConfig("camera_wrist", "/camera/wrist/image_raw", "image", "nearest", 30.0, True, 480, 640)
    assert StreamConfig.from_param(s.to_param()) == s
    j = StreamConfig("joint", "/joint_states", "joint_state", names=["a", "b"], keep_raw=True)
    assert StreamConfig.from_param(j.to_param()) == j
    assert StreamConfig.from_param("c=/c:image:nearest:30:48x64:0") == StreamConfig(
        "c", "/c", "image", rate_hz=30.0, height=48, width=64, reliable=False)
    assert StreamConfig.from_param("action=/action:float_array:next").mode == "next"
    with pytest.raises(ValueError, match="unknown type 'imag'"):
        StreamConfig.from_param("x=/x:imag")
    with pytest.raises(ValueError, match="bad stream spec"):
        StreamConfig.from_param("no-equals-sign")
    with pytest.raises(ValueError, match="clock stream 'nope'"):
        EpisodeAligner(streams(), clock="nope", control_hz=10.0)


def test_clock_at_control_rate_makes_every_message_a_step() -> None:
    s = streams()
    s[0] = StreamConfig("joint", "/joint_states", "joint_state", rate_hz=10.0, names=JOINTS)
    al = EpisodeAligner(s, clock="joint", control_hz=10.0)
    for t in (0.0, 0.13, 0.16, 0.3):  # jittery ticks, one only 30 ms after the previous
        al.add("joint", T0 + t, joint(t), T0 + t)
    assert len(al.pending) == 4
