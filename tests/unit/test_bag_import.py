"""rosbag2 import: bags written with ``rosbags`` (sqlite3 and mcap) become aligned episodes."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from robot_learning.data import bag_import
from robot_learning.data.alignment import StreamConfig
from robot_learning.data.store import EpisodeStore

T0 = 1_700_000_000.0
STREAMS = [
    StreamConfig("joint", "/joint_states", "joint_state", rate_hz=100.0),
    StreamConfig("camera_front", "/camera/front/image_raw", "image", rate_hz=30.0, height=24, width=32),
    StreamConfig("action", "/action", "float_array", mode="next"),
    StreamConfig("intervention", "/intervention", "bool", mode="latest"),
]


def write_bag(path, storage: str, seconds: float = 3.0, nan_at: int = 55) -> None:
    """100 Hz joints, 30 Hz images (pixel value = frame index), 10 Hz actions 5 ms after each step."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]

    def header(t: float):
        sec = int(t)
        return Header(stamp=Time(sec=sec, nanosec=int(round((t - sec) * 1e9))), frame_id="")

    events = []
    for i in range(int(seconds * 100)):
        t = T0 + i / 100
        pos = np.full(7, np.nan if i == nan_at else i, np.float64)
        msg = T["sensor_msgs/msg/JointState"](header=header(t), name=[f"j{k}" for k in range(7)], position=pos,
                                              velocity=np.zeros(7), effort=np.zeros(0))
        events.append((t + 0.001, "/joint_states", msg))
    for i in range(int(seconds * 30)):
        t = T0 + 0.004 + i / 30
        img = np.full((24, 32, 3), i, np.uint8)
        msg = T["sensor_msgs/msg/Image"](header=header(t), height=24, width=32, encoding="rgb8", is_bigendian=0,
                                         step=96, data=img.reshape(-1))
        events.append((t + 0.002, "/camera/front/image_raw", msg))
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    for k in range(int(seconds * 10)):
        msg = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.full(5, k, np.float64))
        events.append((T0 + k / 10 + 0.005, "/action", msg))
    events.append((T0 - 1.0, "/intervention", T["std_msgs/msg/Bool"](data=False)))
    events.append((T0 + 2.05, "/intervention", T["std_msgs/msg/Bool"](data=True)))
    events.append((T0 + seconds, "/sim/success", T["std_msgs/msg/Bool"](data=True)))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    types = {"/joint_states": "sensor_msgs/msg/JointState", "/camera/front/image_raw": "sensor_msgs/msg/Image",
             "/action": "std_msgs/msg/Float64MultiArray", "/intervention": "std_msgs/msg/Bool",
             "/sim/success": "std_msgs/msg/Bool"}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in types.items()}
        for t, topic, msg in sorted(events, key=lambda e: e[0]):
            writer.write(conns[topic], int(t * 1e9), ts.serialize_cdr(msg, types[topic]))


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_import_bag_aligns_like_the_recorder(tmp_path, storage) -> None:
    bag = tmp_path / f"session_{storage}"
    write_bag(bag, storage)
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    r = bag_import.import_bag(bag, store, STREAMS, "joint", 10.0, task="lift", success_topic="/sim/success")
    assert r.episode == 0 and r.success
    assert r.streams["joint"]["rejected"] == 1 and "NaN" in r.rejected_examples[0]
    assert r.steps == 30 and r.streams["action"]["missing_steps"] == 0
    assert r.streams["camera_front"]["align_err_max_ms"] <= 1000 / 60 + 1e-3
    ep = store.read_episode(0)
    assert store.episode(0).length == 30 and store.episode(0).success
    step_t = ep["stamp/step"]
    np.testing.assert_allclose(np.diff(step_t), 0.1, atol=1e-6)
    np.testing.assert_array_equal(ep["action"][:, 0], np.arange(30))  # the response to each step
    # the camera frame nearest to each step: frame index round((t - 0.004) * 30)
    expect = np.round((step_t - T0 - 0.004) * 30).clip(0).astype(np.uint8)
    np.testing.assert_array_equal(ep["camera_front"][:, 0, 0, 0], expect)
    assert not ep["intervention"][:20].any() and ep["intervention"][21:].all()


def test_import_bag_cli_reports_bad_bags(tmp_path, capsys) -> None:
    bag = tmp_path / "good"
    write_bag(bag, "sqlite3", seconds=1.0)
    parser = argparse.ArgumentParser()
    bag_import.add_arguments(parser)
    specs = [s.to_param() for s in STREAMS]
    argv = [str(bag), str(tmp_path / "missing_bag"), "--store", str(tmp_path / "s.zarr"), "--clock", "joint",
            "--control-hz", "10", "--success"] + [x for s in specs for x in ("--stream", s)]
    assert bag_import.run(parser.parse_args(argv)) == 2  # one bag missing
    out, err = capsys.readouterr()
    assert "episode 0, 10 steps" in out and "missing_bag: no such bag" in err
    assert len(EpisodeStore.open(tmp_path / "s.zarr", mode="r")) == 1


def test_import_bag_rejects_wrong_topic_type(tmp_path) -> None:
    bag = tmp_path / "b"
    write_bag(bag, "sqlite3", seconds=0.5)
    wrong = [StreamConfig("joint", "/joint_states", "pose"), *STREAMS[1:]]
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    with pytest.raises(ValueError, match="/joint_states has type sensor_msgs/msg/JointState"):
        bag_import.import_bag(bag, store, wrong, "joint", 10.0)
    assert len(store) == 0


def test_rlstack_data_import_bag_dispatches_here(tmp_path, capsys) -> None:
    from robot_learning.cli import main

    bag = tmp_path / "m"
    write_bag(bag, "mcap", seconds=1.0)
    store = tmp_path / "cli.zarr"
    specs = [s.to_param() for s in STREAMS]
    rc = main(["data", "import-bag", str(bag), "--store", str(store), "--success-topic", "/sim/success", "--clock",
               "joint", "--control-hz", "10"] + [x for s in specs for x in ("--stream", s)])
    assert rc == 0, capsys.readouterr()
    assert "episode 0, 10 steps, success=True" in capsys.readouterr().out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_corrupt_bags_are_one_line_errors_with_exit_code_2(tmp_path, capsys, storage) -> None:
    bag = tmp_path / "bad"
    write_bag(bag, storage, seconds=0.5)
    data = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])  # truncated
    specs = [s.to_param() for s in STREAMS]
    store = tmp_path / "new.zarr"
    parser = argparse.ArgumentParser()
    bag_import.add_arguments(parser)
    argv = [str(bag), "--store", str(store), "--clock", "joint", "--control-hz", "10"]
    assert bag_import.run(parser.parse_args(argv + [x for s in specs for x in ("--stream", s)])) == 2
    err = capsys.readouterr().err
    assert "bad" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not store.exists()  # a failed import into a new path leaves no empty store


def test_missing_topics_are_named(tmp_path) -> None:
    bag = tmp_path / "b"
    write_bag(bag, "sqlite3", seconds=0.5)
    more = [*STREAMS, StreamConfig("camera_wrist", "/camera/wrist/image_raw", "image")]
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    with pytest.raises(ValueError, match=r"lacks topic\(s\) \['/camera/wrist/image_raw'\]"):
        bag_import.import_bag(bag, store, more, "joint", 10.0)
    assert len(store) == 0


def test_keep_raw_streams_are_stored_unresampled(tmp_path) -> None:
    bag = tmp_path / "raw"
    write_bag(bag, "mcap", seconds=1.0, nan_at=-1)
    raw = [StreamConfig("joint", "/joint_states", "joint_state", rate_hz=100.0, keep_raw=True), *STREAMS[1:]]
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    r = bag_import.import_bag(bag, store, raw, "joint", 10.0)
    values, stamps = store.read_stream(r.episode, "joint_pos")
    assert len(values) == r.streams["joint"]["raw"] >= 90 and values.shape[1] == 7  # ~100 Hz kept, not 10 Hz
    assert np.all(np.diff(stamps) > 0)
