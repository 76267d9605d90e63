"""Bad input cannot poison a stream: declared shapes, joint order by name, future stamps, gaps
against the measured rate, raw high-rate samples kept (plain Python, no rclpy)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from robot_learning.data.alignment import EpisodeAligner, SampleError, StreamConfig, decode

T0 = 1_700_000_000.0
JOINTS = ["j1", "j2", "j3"]


def joint_msg(t: float, pos, names=JOINTS, vel=()) -> SimpleNamespace:
    sec = int(t)
    stamp = SimpleNamespace(sec=sec, nanosec=int(round((t - sec) * 1e9)))
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp), name=list(names), position=list(pos), velocity=list(vel))


def joint_stream(**kw) -> StreamConfig:
    return StreamConfig("joint", "/joint_states", "joint_state", **{"names": JOINTS, **kw})


def feed(al: EpisodeAligner, name: str, stamp, values, recv) -> str:
    try:
        al.add(name, stamp, values, recv)
        return ""
    except SampleError as exc:
        return exc.kind


def test_joint_states_are_mapped_by_name_and_mismatches_named() -> None:
    s = joint_stream()
    _t, v = decode(s, joint_msg(T0, [3.0, 1.0, 2.0], names=["j3", "j1", "j2"], vel=[30, 10, 20]))
    np.testing.assert_array_equal(v["joint_pos"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(v["joint_vel"], [10.0, 20.0, 30.0])
    notes: list[str] = []
    _t, v = decode(s, joint_msg(T0, [1, 2, 3, 9], names=["j1", "j2", "j3", "finger"]), notes)
    np.testing.assert_array_equal(v["joint_pos"], [1, 2, 3])
    assert notes and "extra joint names ['finger']" in notes[0]
    with pytest.raises(SampleError, match=r"lacks joint names \['j3'\]") as exc:
        decode(s, joint_msg(T0, [1, 2], names=["j1", "j2"]))
    assert exc.value.kind == "joint_names"
    with pytest.raises(SampleError, match="has 3 names but 2 positions") as exc:
        decode(s, joint_msg(T0, [1, 2]))
    assert exc.value.kind == "joint_lengths"
    with pytest.raises(SampleError, match="no joint names"):
        decode(s, joint_msg(T0, [1, 2, 3], names=[]))


def test_bad_first_message_does_not_fix_the_shape() -> None:
    cam = StreamConfig("camera_front", "/c", "image", height=4, width=6)
    al = EpisodeAligner([joint_stream(), cam], "joint", 10.0)
    assert feed(al, "camera_front", T0, {"camera_front": np.zeros((5, 6, 3), np.uint8)}, T0) == "shape"
    for i in range(1, 5):
        assert feed(al, "camera_front", T0 + i / 30, {"camera_front": np.zeros((4, 6, 3), np.uint8)}, T0 + i / 30) == ""
    assert al.stats["camera_front"].received == 4 and al.stats["camera_front"].rejected == 1


def test_undeclared_shape_is_voted_not_taken_from_the_first_sample() -> None:
    arr = StreamConfig("action", "/action", "float_array", mode="next")  # no dim declared
    al = EpisodeAligner([joint_stream(), arr], "joint", 10.0)
    feed(al, "action", None, {"action": np.zeros(7, np.float32)}, T0)  # a bad first message
    for i in range(1, 7):
        feed(al, "action", None, {"action": np.full(5, i, np.float32)}, T0 + i * 0.1)
    st = al.stats["action"]
    assert st.received == 6 and st.rejected == 1 and st.rejected_by == {"shape": 1}
    assert any("agreed by 5 samples" in text for _k, text in al.notes)


def test_future_stamp_is_rejected_and_never_blocks_later_samples() -> None:
    al = EpisodeAligner([joint_stream()], "joint", 10.0, max_future_s=0.5)
    vals = {"joint_pos": np.zeros(3, np.float32), "joint_vel": np.zeros(3, np.float32)}
    assert feed(al, "joint", T0, vals, T0) == ""
    assert feed(al, "joint", T0 + 60.0, vals, T0 + 0.01) == "future_stamp"
    kinds = [feed(al, "joint", T0 + k * 0.01, vals, T0 + k * 0.01 + 0.001) for k in range(2, 202)]
    assert kinds == [""] * 200
    st = al.stats["joint"]
    assert st.received == 201 and st.rejected_by == {"future_stamp": 1}
    assert "59.990 s ahead of the receive clock (limit 0.5 s)" in st.last_error
    assert len(al.flush()) == 21  # 0 .. 2.01 s at 10 Hz


def test_gaps_are_counted_against_the_measured_rate_not_jitter() -> None:
    vals = {"joint_pos": np.zeros(3, np.float32), "joint_vel": np.zeros(3, np.float32)}
    # a 100 Hz driver with no configured rate, 3 ms jitter and a publisher that stalls 12 ms, then catches up
    al = EpisodeAligner([joint_stream()], "joint", 10.0)
    rng = np.random.default_rng(0)
    stamps = T0 + np.arange(1000) * 0.01 + rng.uniform(0, 0.003, 1000)
    stamps[500:505] = stamps[505] - 0.0001 * np.arange(5, 0, -1)  # five frames late, sent in a burst
    for t in stamps:
        feed(al, "joint", float(t), vals, float(t))
    assert al.stats["joint"].gaps == 0, al.stats["joint"]
    assert 99 < al.stats["joint"].rate_hz < 101
    # a real hole: 30 frames missing
    al = EpisodeAligner([joint_stream()], "joint", 10.0)
    for i in [*range(100), *range(130, 200)]:
        feed(al, "joint", T0 + i * 0.01, vals, T0 + i * 0.01)
    assert al.stats["joint"].gaps == 30


def test_raw_samples_of_high_rate_streams_are_kept() -> None:
    al = EpisodeAligner([joint_stream(keep_raw=True)], "joint", 10.0)
    for i in range(500):  # 1 s at 500 Hz
        vals = {"joint_pos": np.full(3, i, np.float32), "joint_vel": np.zeros(3, np.float32)}
        feed(al, "joint", T0 + i / 500, vals, T0 + i / 500)
    raw = al.pop_raw()
    assert raw["joint_pos"][0].shape == (500, 3) and raw["joint_pos"][1].shape == (500,)
    np.testing.assert_array_equal(raw["joint_pos"][0][:, 0], np.arange(500))
    assert al.pop_raw() == {} and al.summary()["joint"]["raw"] == 500
    assert len(al.flush()) == 10  # the steps are still decimated to 10 Hz


def test_a_bursty_but_complete_500hz_stream_has_no_gaps() -> None:
    # the publisher stalls 10 ms every 20 ms of work, then sends what it owes in a burst (bench_recorder's driver)
    vals = {"joint_pos": np.zeros(3, np.float32), "joint_vel": np.zeros(3, np.float32)}
    al = EpisodeAligner([joint_stream(rate_hz=500.0)], "joint", 10.0)
    stamps = [T0 + i / 500 if i % 15 > 4 else T0 + (i - i % 15 + 5) / 500 - 1e-4 + 1e-5 * (i % 15)
              for i in range(5000)]  # frames 0-4 of every 15 are published late, in a burst before frame 5
    assert np.all(np.diff(stamps) > 0)
    for ts in stamps:
        feed(al, "joint", ts, vals, ts)
    # (interval-based counting would report 4 per stall, ~1300 here; edge effects leave a few)
    assert al.stats["joint"].received == 5000 and al.stats["joint"].gaps <= 5, al.stats["joint"]
