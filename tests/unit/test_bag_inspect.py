"""import-bag --dry-run, mcap CRC checks and the dropped-tick causes, on bags the tests write with rosbags."""

from __future__ import annotations

import argparse
import shlex
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from robot_learning.data import bag_import
from robot_learning.data.alignment import StreamConfig
from robot_learning.data.store import EpisodeStore

T0 = 1_700_000_000.0
CAM_HZ, JOINT_HZ, POSE_HZ, SECONDS = 29.97, 500.0, 7.0, 10.0
CAM_GAP = (3.0, 5.0)  # no camera frames stamped in this window (relative to T0)


def cam_times() -> np.ndarray:
    t = 0.004 + np.arange(int(SECONDS * CAM_HZ)) / CAM_HZ
    return t[(t < CAM_GAP[0]) | (t >= CAM_GAP[1])]


def pose_times() -> np.ndarray:
    t = 0.003 + np.arange(int(SECONDS * POSE_HZ) + 1) / POSE_HZ
    return t[t < SECONDS]


def write_three_stream_bag(path: Path, storage: str = "sqlite3") -> None:
    """The issue's 3-stream bag: camera 29.97 Hz with a 2 s gap, joints 500 Hz, pose 7 Hz, plus /chatter and success."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types

    def header(t: float):
        t += T0
        sec = int(t)
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9))),
                                        frame_id="")

    types = {"/joint_states": "sensor_msgs/msg/JointState", "/camera/front/image_raw": "sensor_msgs/msg/Image",
             "/ee_pose": "geometry_msgs/msg/PoseStamped", "/chatter": "std_msgs/msg/String",
             "/sim/success": "std_msgs/msg/Bool"}
    events = []
    for i in range(int(SECONDS * JOINT_HZ)):
        t = i / JOINT_HZ
        events.append((t + 0.001, "/joint_states", T["sensor_msgs/msg/JointState"](
            header=header(t), name=[f"j{k}" for k in range(7)], position=np.full(7, float(i)), velocity=np.zeros(7),
            effort=np.zeros(0))))
    for j, t in enumerate(cam_times()):
        img = np.full((8, 12, 3), j % 256, np.uint8)
        events.append((t + 0.002, "/camera/front/image_raw", T["sensor_msgs/msg/Image"](
            header=header(t), height=8, width=12, encoding="rgb8", is_bigendian=0, step=36, data=img.reshape(-1))))
    Point, Quat = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Quaternion"]
    for k, t in enumerate(pose_times()):
        pose = T["geometry_msgs/msg/Pose"](position=Point(x=float(k), y=0.0, z=0.0), orientation=Quat(x=0.0, y=0.0, z=0.0, w=1.0))
        events.append((t + 0.001, "/ee_pose", T["geometry_msgs/msg/PoseStamped"](header=header(t), pose=pose)))
    for k in range(5):
        events.append((k * 2.0 + 0.5, "/chatter", T["std_msgs/msg/String"](data=f"hello {k}")))
    events.append((SECONDS, "/sim/success", T["std_msgs/msg/Bool"](data=True)))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in types.items()}
        for t, topic, msg in sorted(events, key=lambda e: e[0]):
            writer.write(conns[topic], int((T0 + t) * 1e9), ts.serialize_cdr(msg, types[topic]))


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    bag_import.add_arguments(parser)
    return bag_import.run(parser.parse_args(argv))


def suggested_argv(out: str) -> list[str]:
    """The suggested command line printed by --dry-run, as argv after ``rlstack``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("rlstack data import-bag"))
    text = ""
    for line in lines[start:]:
        text += line.strip().removesuffix("\\") + " "
        if not line.endswith("\\"):
            break
    argv = shlex.split(text)
    assert argv[:3] == ["rlstack", "data", "import-bag"]
    return argv[1:]


def test_dry_run_lists_topics_rates_gaps_and_a_mapping_that_imports(tmp_path, capsys) -> None:
    bag = tmp_path / "session"
    write_three_stream_bag(bag)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli([str(bag), "--dry-run", "--store", str(tmp_path / "never.zarr"), "--control-hz", "10"]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no store created
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  /")}
    assert rows["/joint_states"].split()[1:4] == ["sensor_msgs/msg/JointState", "5000", "500.00"]
    cam = cam_times()
    assert rows["/camera/front/image_raw"].split()[1:4] == ["sensor_msgs/msg/Image", str(len(cam)), "29.97"]
    before_gap, after_gap = cam[cam < CAM_GAP[0]][-1], cam[cam >= CAM_GAP[1]][0]
    assert f"{after_gap - before_gap:.2f} s at t={before_gap - 0.001:.2f} s" in rows["/camera/front/image_raw"]
    assert "12x8 rgb8" in rows["/camera/front/image_raw"]
    assert rows["/ee_pose"].split()[1:4] == ["geometry_msgs/msg/PoseStamped", str(len(pose_times())), "7.00"]
    assert "none" in rows["/ee_pose"] and "none" in rows["/joint_states"]  # no gaps there
    assert "/chatter" in rows and "not importable" in out and "/chatter" in out.split("not importable")[1]
    argv = suggested_argv(out)
    assert "--stream" in argv and "joint=/joint_states:joint_state:nearest:500" in argv
    assert "camera_front=/camera/front/image_raw:image:nearest:29.97:8x12" in argv
    assert "ee_pose=/ee_pose:pose:latest:7" in argv  # 7 Hz < 10 Hz control: held, not dropped
    assert argv[argv.index("--clock") + 1] == "joint" and argv[argv.index("--success-topic") + 1] == "/sim/success"
    assert not any("/chatter" in a for a in argv)
    # the suggestion, pasted with a real store, imports the bag
    from robot_learning.cli import main

    store = tmp_path / "real.zarr"
    argv[argv.index("--store") + 1] = str(store)
    assert main(argv) == 0, capsys.readouterr()
    ep = EpisodeStore.open(store, mode="r").episode(0)
    assert ep.success and ep.length > 70


def test_dry_run_on_a_bad_bag_exits_2(tmp_path, capsys) -> None:
    bag = tmp_path / "bad"
    write_three_stream_bag(bag)
    db = next(bag.glob("*.db3"))
    db.write_bytes(b"garbage" * 100)
    assert cli([str(bag), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "bad" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert cli([str(tmp_path / "nope"), "--dry-run"]) == 2
    assert "no such bag" in capsys.readouterr().err


def test_import_without_store_or_dry_run_is_exit_2(tmp_path, capsys) -> None:
    assert cli([str(tmp_path)]) == 2
    assert "--store PATH is required" in capsys.readouterr().err


def expected_drops() -> tuple[Counter, int]:
    """Per tick (every 50th joint stamp), which streams have no sample within 50 ms, and why."""
    cam, pose = cam_times(), pose_times()
    before_gap, after_gap = cam[cam < CAM_GAP[0]][-1], cam[cam >= CAM_GAP[1]][0]
    causes: Counter = Counter()
    ticks = np.arange(0, int(SECONDS * JOINT_HZ), 50) / JOINT_HZ
    for t in ticks:
        why = []
        if np.min(np.abs(cam - t)) > 0.05:
            assert before_gap < t < after_gap
            why.append(f"camera_front: gap of {after_gap - before_gap:.2f} s in its stamps at t={before_gap:.2f} s")
        if np.min(np.abs(pose - t)) > 0.05:
            why.append("pose: nearest sample more than 50 ms from the tick (stale)")
        if why:
            causes[" + ".join(why)] += 1
    return causes, len(ticks)


def test_summary_names_the_cause_of_every_dropped_tick(tmp_path, capsys) -> None:
    bag = tmp_path / "three"
    write_three_stream_bag(bag)
    streams = [StreamConfig("joint", "/joint_states", "joint_state", rate_hz=JOINT_HZ),
               StreamConfig("camera_front", "/camera/front/image_raw", "image", rate_hz=CAM_HZ, height=8, width=12),
               StreamConfig("pose", "/ee_pose", "pose", rate_hz=POSE_HZ)]
    store = tmp_path / "s.zarr"
    argv = [str(bag), "--store", str(store), "--clock", "joint", "--control-hz", "10"]
    assert cli(argv + [x for s in streams for x in ("--stream", s.to_param())]) == 0
    out = capsys.readouterr().out
    causes, ticks = expected_drops()
    dropped = sum(causes.values())
    assert causes and len(causes) == 3  # camera gap alone, pose alone, both
    assert f"  {dropped} of {ticks} control ticks dropped, by cause" in out, out
    for why, n in causes.items():
        assert f"    {n:>6}  {why}\n" in out, (why, n, out)
    assert "hint: pose (7 Hz) runs slower than the 10 Hz control rate" in out
    ep = EpisodeStore.open(store, mode="r").episode(0)
    assert ep.length == ticks - dropped
    assert ep.meta.tags["recorder"]["dropped_ticks"] == dict(causes)


# ------------------------------------------------------------------ mcap CRCs
def rewrite_with_crcs(bag: Path, compression: str) -> Path:
    """Rewrite the bag's mcap file as ``ros2 bag record`` writes it: chunk CRCs and a data-section CRC."""
    from mcap.reader import make_reader
    from mcap.writer import CompressionType, Writer

    path = next(bag.glob("*.mcap"))
    with open(path, "rb") as f:
        reader = make_reader(f)
        header = reader.get_header()
        summary = reader.get_summary()
        messages = [(c.id, m.log_time, m.data, m.publish_time, m.sequence) for _s, c, m in reader.iter_messages()]
    out = path.with_suffix(".tmp")
    with open(out, "wb") as f:
        w = Writer(f, compression=getattr(CompressionType, compression), enable_crcs=True, enable_data_crcs=True,
                   chunk_size=64 * 1024)
        w.start(profile=header.profile, library=header.library)
        schema_ids = {sid: w.register_schema(s.name, s.encoding, s.data) for sid, s in summary.schemas.items()}
        channel_ids = {cid: w.register_channel(c.topic, c.message_encoding, schema_ids[c.schema_id], c.metadata)
                       for cid, c in summary.channels.items()}
        for cid, log_time, data, publish_time, seq in messages:
            w.add_message(channel_ids[cid], log_time, data, publish_time, seq)
        w.finish()
    out.replace(path)
    return path


def chunk_offsets(path: Path) -> list[tuple[int, int]]:
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        return [(c.chunk_start_offset, c.chunk_length) for c in make_reader(f).get_summary().chunk_indexes]


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


STREAMS = [StreamConfig("joint", "/joint_states", "joint_state", rate_hz=JOINT_HZ),
           StreamConfig("camera_front", "/camera/front/image_raw", "image", rate_hz=CAM_HZ, height=8, width=12)]


def import_argv(bag: Path, store: Path) -> list[str]:
    return [str(bag), "--store", str(store), "--clock", "joint", "--control-hz", "10"] + [
        x for s in STREAMS for x in ("--stream", s.to_param())]


@pytest.mark.parametrize("compression", ["NONE", "ZSTD"])
def test_a_flipped_byte_inside_an_mcap_chunk_is_named(tmp_path, capsys, compression) -> None:
    bag = tmp_path / "crc"
    write_three_stream_bag(bag, "mcap")
    path = rewrite_with_crcs(bag, compression)
    assert cli(import_argv(bag, tmp_path / "ok.zarr")) == 0  # intact: imports, no warning
    assert "warning" not in capsys.readouterr().err
    chunks = chunk_offsets(path)
    assert len(chunks) > 2
    start, length = chunks[1]
    flip(path, start + length // 2)  # inside chunk 1's records (an image or joint payload)
    store = tmp_path / "new.zarr"
    assert cli(import_argv(bag, store)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{path}: chunk 1 at byte offset {start} " in err, err
    assert ("fails its CRC check" if compression == "NONE" else "chunk 1") in err
    assert not store.exists()
    assert cli([str(bag), "--dry-run"]) == 2 and f"chunk 1 at byte offset {start}" in capsys.readouterr().err
    from robot_learning.data.bag_inspect import verify_bag

    with pytest.raises(ValueError, match=f"chunk 1 at byte offset {start} "):
        verify_bag(path)  # the .mcap file itself, not its bag directory


def test_a_flipped_byte_outside_the_chunks_fails_the_data_section_crc(tmp_path, capsys) -> None:
    from mcap.reader import make_reader

    bag = tmp_path / "crc"
    write_three_stream_bag(bag, "mcap")
    path = rewrite_with_crcs(bag, "NONE")
    with open(path, "rb") as f:
        index = make_reader(f).get_summary().chunk_indexes[0]
    # the first timestamp of the chunk's first message index record (opcode, length, channel id, array length)
    flip(path, min(index.message_index_offsets.values()) + 1 + 8 + 2 + 4 + 3)
    assert cli(import_argv(bag, tmp_path / "s.zarr")) == 2
    err = capsys.readouterr().err
    assert "the data section" in err and "fails its CRC check" in err and len(err.strip().splitlines()) == 1, err


def test_an_mcap_without_crcs_is_imported_with_a_warning(tmp_path, capsys) -> None:
    bag = tmp_path / "nocrc"
    write_three_stream_bag(bag, "mcap")  # rosbags' writer stores no CRCs
    assert cli(import_argv(bag, tmp_path / "s.zarr")) == 0
    assert "written without CRCs; corruption inside its payloads cannot be detected" in capsys.readouterr().err
    assert cli([str(bag), "--dry-run"]) == 0
    assert "warning: " in capsys.readouterr().out


def test_dropped_tick_causes_are_per_gap_and_bounded() -> None:
    from robot_learning.data.alignment import MAX_DROP_CAUSES, EpisodeAligner

    streams = [StreamConfig("joint", "/j", "joint_position", rate_hz=100.0, dim=2),
               StreamConfig("cam", "/c", "pose", rate_hz=30.0)]
    al = EpisodeAligner(streams, "joint", 10.0, max_wait_s=float("inf"))
    seconds = MAX_DROP_CAUSES + 16  # one 0.5 s gap per second: more distinct gaps than causes kept
    events = [(i / 100, "joint", {"joint": np.zeros(2)}) for i in range(seconds * 100)]
    events += [(0.002 + k / 30, "cam", {"cam": np.zeros(7)}) for k in range(seconds * 30) if (k / 30) % 1.0 < 0.5]
    for t, name, values in sorted(events, key=lambda e: e[0]):
        al.add(name, T0 + t, values, recv_time=T0 + t + 0.001)
        al.pop_ready(now=T0 + t + 0.001)
    al.flush()
    # ticks at .6 .7 .8 .9 of every second have no frame within 50 ms; each gap is its own cause until the cap
    assert sum(al.drops.values()) == al.stats["cam"].missing_steps == 4 * seconds
    assert len(al.drops) == MAX_DROP_CAUSES + 1
    assert al.drops["other causes (cam missing)"] == 4 * (seconds - MAX_DROP_CAUSES)
    first = "cam: gap of 0.53 s in its stamps at t=0.47 s"
    assert al.drops[first] == 4, sorted(al.drops)[:3]
