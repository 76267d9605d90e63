"""validate / repair / merge / export-video / the `rlstack data` CLI on real stores on disk."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from robot_learning.cli import main as rlstack
from robot_learning.data.maintenance import export_video, merge, repair, validate
from robot_learning.data.store import EpisodeMeta, EpisodeStore
from robot_learning.data.synthetic import episode_digest, synthetic_step, write_episode


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "m.zarr"
    store = EpisodeStore.open(p, mode="w", image_codec="jpeg")
    rng = np.random.default_rng(0)
    write_episode(store, rng, 6, success=True, meta=EpisodeMeta(task="lift", source="teleop", operator="bo"))
    write_episode(store, rng, 4, success=False, meta=EpisodeMeta(task="lift", source="policy"))
    store.close()
    return p


def _abandon_half_episode(p, steps: int = 5) -> None:
    """What a killed writer leaves: rows written past the committed end, no index entry."""
    store = EpisodeStore.open(p, mode="a")
    w = store.begin_episode(EpisodeMeta(task="lift"))
    rng = np.random.default_rng(9)
    for t in range(steps):
        w.append(synthetic_step(rng, t), {"step": t * 0.1, "camera_front": t * 0.1, "joint_pos": t * 0.1,
                                          "joint_vel": t * 0.1, "ee_pose": t * 0.1, "gripper": t * 0.1})
    w._flush()
    store._release_lock()  # the process "dies" here: the kernel would drop the flock


def test_validate_and_repair_after_abandoned_writer(path):
    before = [episode_digest(EpisodeStore.open(path, "r").read_episode(i)) for i in range(2)]
    _abandon_half_episode(path)
    (path / "data" / "joint_pos" / "stray.partial").write_bytes(b"half a chunk")
    report = validate(EpisodeStore.open(path, mode="r"), deep=True)  # a reader changes nothing
    assert report.ok
    assert any("data/camera_front: 5 uncommitted rows" in w for w in report.warnings)
    assert any("stray.partial" in w for w in report.warnings)
    store = EpisodeStore.open(path, mode="a")  # the next writer cleans up: tails and temp files
    assert len(store) == 2
    assert any("data/camera_front: 5 uncommitted rows" in a for a in store.opened_cleanup)
    assert not (path / "data" / "joint_pos" / "stray.partial").exists()
    actions = repair(store)  # reports what opening did
    assert any("data/camera_front: 5 uncommitted rows" in a for a in actions)
    assert any("stray.partial" in a for a in actions)
    report = validate(store, deep=True)
    assert report.ok and not report.warnings
    assert [episode_digest(store.read_episode(i)) for i in range(2)] == before


def test_validate_finds_lost_chunk(path, capsys):
    (path / "data" / "camera_front" / "c" / "7" / "0" / "0" / "0").unlink()  # frame 1 of episode 1
    report = validate(EpisodeStore.open(path, "r"), deep=True)
    assert report.errors == ["data/camera_front: 1 chunk(s) missing, e.g. rows [(7, 8)]"]
    assert rlstack(["data", "validate", str(path), "--deep"]) == 1
    assert "ERROR: data/camera_front: 1 chunk(s) missing" in capsys.readouterr().out


def test_merge_copies_jpeg_bytes_and_compacts(path, tmp_path):
    src = EpisodeStore.open(path, "a")
    write_episode(src, np.random.default_rng(4), 3)
    src.delete_episode(1)
    dest = EpisodeStore.open(tmp_path / "dest.zarr", mode="w", image_codec="jpeg")
    assert merge([src, src], dest) == 4
    assert dest.data_end == 2 * (6 + 3)  # the deleted episode's rows are not copied
    for i, j in [(0, 0), (1, 1), (0, 2), (1, 3)]:
        assert episode_digest(src.read_episode(i)) == episode_digest(dest.read_episode(j))
        assert dest.episode(j).meta == src.episode(i).meta and dest.episode(j).start_time == src.episode(i).start_time
    lossless = EpisodeStore.open(tmp_path / "lossless.zarr", mode="w", image_codec="lossless")
    merge([src], lossless)  # a different codec: decoded then re-encoded, lossless keeps the decoded pixels
    assert np.array_equal(lossless.read_episode(0)["camera_front"], src.read_episode(0)["camera_front"])


def test_export_video(path, tmp_path):
    store = EpisodeStore.open(path, "r")
    out = export_video(store, 0, "front", tmp_path / "ep0.mp4")
    cap = cv2.VideoCapture(str(out))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    ok, frame = cap.read()
    cap.release()
    assert ok and frames == 6 and frame.shape == (48, 64, 3)
    assert fps == pytest.approx(10.0, rel=0.01)  # from the real camera stamps, 0.1 s apart


def test_cli_commands(path, tmp_path, capsys):
    assert rlstack(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "episodes   2, steps 10" in out and "0.50 (1/2, Wilson 95% CI" in out and "teleop" in out
    assert rlstack(["data", "stats", str(path), "--keys", "joint_pos", "--out", str(tmp_path / "s.json")]) == 0
    assert set(json.loads((tmp_path / "s.json").read_text())["joint_pos"]) >= {"min", "max", "mean", "std", "q01", "q99"}
    assert rlstack(["data", "export-video", str(path), "1", "--out", str(tmp_path / "v.mp4")]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0
    assert rlstack(["data", "merge", str(tmp_path / "all.zarr"), str(path), str(path)]) == 0
    assert len(EpisodeStore.open(tmp_path / "all.zarr", "r")) == 4
    assert rlstack(["data", "delete-episode", str(path), "0"]) == 0
    assert len(EpisodeStore.open(path, "r")) == 1
    assert rlstack(["data", "repair", str(path)]) == 0
    assert rlstack(["data", "validate", str(path)]) == 0
    capsys.readouterr()
    assert rlstack(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "no such store" in capsys.readouterr().err
    assert rlstack(["data", "delete-episode", str(path), "7"]) == 2
    assert "episode 7 out of range" in capsys.readouterr().err
    assert rlstack(["data", "export-video", str(path), "0", "--camera", "side"]) == 2
    assert "no camera 'camera_side'" in capsys.readouterr().err


def test_writer_killed_while_creating_first_arrays(tmp_path):
    import shutil

    p = tmp_path / "first.zarr"
    store = EpisodeStore.open(p, mode="w")
    w = store.begin_episode(EpisodeMeta(task="lift"))
    w.append(synthetic_step(np.random.default_rng(0), 0), {"step": 0.0, "camera_front": 0.0, "joint_pos": 0.0,
                                                           "joint_vel": 0.0, "ee_pose": 0.0, "gripper": 0.0})
    store._release_lock()  # "killed" ...
    shutil.rmtree(p / "data" / "ee_pose")  # ... before every array of the first episode existed
    store = EpisodeStore.open(p, mode="a")
    report = validate(store, deep=True)
    assert report.ok and any("data/ee_pose is missing" in w for w in report.warnings)
    write_episode(store, np.random.default_rng(1), 3)  # the next writer recreates the arrays
    assert validate(store, deep=True).ok and len(store) == 1


def test_corrupt_blosc_chunk_is_one_line_per_episode(tmp_path, capfd):
    p = tmp_path / "cb.zarr"
    store = EpisodeStore.open(p, mode="w", image_codec="lossless")
    for i in range(2):
        write_episode(store, np.random.default_rng(i), 6)
    store.close()
    (p / "data" / "joint_pos" / "c" / "0" / "0").write_bytes(b"garbage")
    assert rlstack(["data", "validate", str(p), "--deep"]) == 1
    out, err = capfd.readouterr()
    assert "ERROR: episode 0: unreadable" in out and "blosc" in out
    assert "Task was destroyed" not in out + err and len((out + err).strip().splitlines()) <= 4
