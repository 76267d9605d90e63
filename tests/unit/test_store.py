"""Episode store: layout, round trip, timestamps, metadata, bad input, repair and delete (real zarr on disk)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from robot_learning.data.store import EpisodeMeta, EpisodeStore, StoreError
from robot_learning.data.synthetic import episode_digest, synthetic_step, write_episode


def _step(t: int = 0) -> dict:
    return synthetic_step(np.random.default_rng(t), t)


def _stamps(t: float) -> dict:
    return {"step": t, "camera_front": t - 0.01, "joint_pos": t, "joint_vel": t, "ee_pose": t, "gripper": t}


@pytest.fixture
def store(tmp_path):
    s = EpisodeStore.open(tmp_path / "s.zarr", mode="w", image_codec="lossless")
    rng = np.random.default_rng(0)
    write_episode(s, rng, 12, success=True, meta=EpisodeMeta(task="lift", source="teleop", operator="ann"))
    write_episode(s, rng, 7, success=False, meta=EpisodeMeta(task="push", source="policy", policy_id="p1"))
    write_episode(s, rng, 9, success=True, meta=EpisodeMeta(task="lift", source="scripted",
                                                            rates={"camera_front": 30.0}, tags={"k": "v"}))
    yield s
    s.close()


def test_layout_and_roundtrip(store, tmp_path):
    root = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert root.attrs["robot_learning_store"]["schema_version"] == 1
    assert root.attrs["robot_learning_store"]["image_codec"] == "lossless"
    assert list(root["meta/episode_ends"][:]) == [12, 19, 28]
    assert root["data/joint_pos"].shape == (28, 7)
    assert root["data/camera_front"].chunks == (1, 48, 64, 3)
    assert len(store) == 3
    ep = store.read_episode(1)
    assert ep["camera_front"].shape == (7, 48, 64, 3) and ep["camera_front"].dtype == np.uint8
    # lossless: exactly the frames written, replayed from the same seed
    rng = np.random.default_rng(0)
    [synthetic_step(rng, t) for t in range(12)]
    expected = [synthetic_step(rng, t) for t in range(7)]
    assert np.array_equal(ep["camera_front"], np.stack([e["camera_front"] for e in expected]))
    assert np.array_equal(ep["action"], np.stack([e["action"] for e in expected]))
    assert ep["reward"].dtype == np.float32 and ep["done"].dtype == bool


def test_real_stamps_stored_per_stream(store):
    ep = store.read_episode(0)
    step = ep["stamp/step"]
    assert np.allclose(np.diff(step), 0.1)
    assert np.allclose(ep["stamp/camera_front"], step - 0.004)
    assert np.allclose(ep["stamp/joint_pos"], step - 0.001)
    assert "stamp/action" not in ep  # action defaults to the step stamp
    assert set(store.stamp_keys) >= {"step", "camera_front", "joint_pos", "joint_vel", "ee_pose", "gripper"}


def test_metadata_and_filters(store):
    infos = store.episodes()
    assert [(e.start, e.end, e.length) for e in infos] == [(0, 12, 12), (12, 19, 7), (19, 28, 9)]
    assert infos[0].meta.operator == "ann" and infos[1].meta.policy_id == "p1"
    assert infos[2].meta.rates == {"camera_front": 30.0} and infos[2].meta.tags == {"k": "v"}
    assert infos[0].duration == pytest.approx(1.1)
    assert [e.index for e in store.episodes(success=True)] == [0, 2]
    assert [e.index for e in store.episodes(source="policy")] == [1]
    assert [e.index for e in store.episodes(task="lift", success=True)] == [0, 2]
    assert [e.index for e in store.episodes(source=["teleop", "policy"])] == [0, 1]


def test_bad_dtype_shape_missing_key_name_key_and_step(store):
    before = [episode_digest(store.read_episode(i)) for i in range(len(store))]
    w = store.begin_episode(EpisodeMeta(task="lift"))
    w.append(_step(0), _stamps(0.0))
    bad = dict(_step(1), joint_pos=np.zeros(6, np.float32))
    with pytest.raises(StoreError, match=r"step 1: key 'joint_pos' has shape \(6,\)"):
        w.append(bad, _stamps(0.1))
    with pytest.raises(StoreError, match=r"step 1: image key 'camera_front' has dtype float32"):
        w.append(dict(_step(1), camera_front=np.zeros((48, 64, 3), np.float32)), _stamps(0.1))
    with pytest.raises(StoreError, match=r"step 1: key 'action' has dtype <U1"):
        w.append(dict(_step(1), action=np.array(["a"] * 7)), _stamps(0.1))
    with pytest.raises(StoreError, match=r"step 1: missing key\(s\) \['gripper'\]"):
        w.append({k: v for k, v in _step(1).items() if k != "gripper"}, _stamps(0.1))
    with pytest.raises(StoreError, match="missing capture stamp for stream 'camera_front'"):
        w.append(_step(1), {"step": 0.1, "joint_pos": 0.1})
    with pytest.raises(StoreError, match="went backwards"):
        w.append(_step(1), _stamps(-1.0))
    assert len(w) == 1  # rejected steps stored nothing
    w.append(_step(1), _stamps(0.1))
    w.commit(success=True)
    assert [episode_digest(store.read_episode(i)) for i in range(3)] == before
    assert store.episode(3).length == 2


def test_bad_meta_and_empty_commit(store):
    with pytest.raises(StoreError, match="source must be one of"):
        store.begin_episode(EpisodeMeta(task="lift", source="dream"))
    with pytest.raises(StoreError, match=r"rates\['cam'\]"):
        store.begin_episode(EpisodeMeta(task="lift", rates={"cam": -1.0}))
    with pytest.raises(StoreError, match="tags must be plain JSON"):
        store.begin_episode(EpisodeMeta(task="lift", tags={"seed": object()}))
    w = store.begin_episode(EpisodeMeta(task="lift"))
    with pytest.raises(StoreError, match="already being written"):
        store.begin_episode(EpisodeMeta(task="lift"))
    with pytest.raises(StoreError, match="no steps"):
        w.commit()
    w.discard()
    assert len(store) == 3


def test_add_episode_mismatched_lengths(store):
    data = {k: np.stack([v] * 5) for k, v in _step().items()}
    data["action"] = data["action"][:4]
    stamps = {k: np.arange(5, dtype=float) for k in ("step", "camera_front", "joint_pos", "joint_vel", "ee_pose", "gripper")}
    with pytest.raises(StoreError, match="key 'action' has 4 steps but 'camera_front' has 5"):
        store.add_episode(EpisodeMeta(task="lift"), data, stamps, success=True)
    data["action"] = np.concatenate([data["action"], data["action"][:1]])
    assert store.add_episode(EpisodeMeta(task="lift"), data, stamps, success=True) == 3


def test_non_store_paths(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        EpisodeStore.open(tmp_path / "missing.zarr", mode="r")
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(StoreError, match="is a file"):
        EpisodeStore.open(tmp_path / "file.txt", mode="a")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not an episode store"):
        EpisodeStore.open(other, mode="a")
    zarr.create_group(tmp_path / "plain.zarr").attrs["x"] = 1
    with pytest.raises(StoreError, match="not an episode store"):
        EpisodeStore.open(tmp_path / "plain.zarr", mode="r")
    with pytest.raises(StoreError, match="refusing to overwrite"):
        EpisodeStore.open(other, mode="w")
    assert (other / "notes.txt").read_text() == "x"


def test_second_writer_is_refused(store, tmp_path):
    with pytest.raises(StoreError, match=r"another writer holds the store \(.writer.lock, pid \d+ \(this process"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    with pytest.raises(StoreError, match="not overwriting"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="w")
    w = store.begin_episode(EpisodeMeta(task="lift"))
    w.discard()
    assert len(EpisodeStore.open(tmp_path / "s.zarr", mode="r")) == 3  # readers are never refused
    store.close()
    with pytest.raises(StoreError, match="no longer holds the writer lock"):
        store.begin_episode(EpisodeMeta(task="lift"))
    other = EpisodeStore.open(tmp_path / "s.zarr", mode="a")  # released at close
    other.begin_episode(EpisodeMeta(task="lift")).discard()
    other.close()


def test_high_rate_stream(tmp_path):
    s = EpisodeStore.open(tmp_path / "h.zarr", mode="w")
    for e in range(2):
        w = s.begin_episode(EpisodeMeta(task="lift", rates={"joint_pos_500hz": 500.0}))
        for t in range(3):
            w.append(_step(t), _stamps(t * 0.1))
            w.append_stream("joint_pos_500hz", np.full((50, 7), e * 10 + t, np.float64), t * 0.1 + np.arange(50) / 500)
        w.commit()
    values, stamps = s.read_stream(1, "joint_pos_500hz")
    assert values.shape == (150, 7) and values[0, 0] == 10 and values[-1, 0] == 12
    assert np.allclose(np.diff(stamps)[:49], 1 / 500)
    with pytest.raises(StoreError, match="stream 'joint_pos_500hz'"):
        w = s.begin_episode(EpisodeMeta(task="lift"))
        w.append_stream("joint_pos_500hz", np.zeros((5, 6)), np.zeros(5))
    w.discard()


def test_delete_episode_keeps_others_bit_identical(store):
    digests = [episode_digest(store.read_episode(i)) for i in range(3)]
    store.delete_episode(1)
    assert len(store) == 2
    assert [episode_digest(store.read_episode(i)) for i in range(2)] == [digests[0], digests[2]]
    store.delete_episode(1)  # the last one: its rows are truncated
    assert store.data_end == 12
    assert zarr.open_array(store._zstore, path="data/action").shape[0] == 12
    write_episode(store, np.random.default_rng(5), 4)
    assert store.episode(1).start == 12 and episode_digest(store.read_episode(0)) == digests[0]


def test_index_is_single_json_document(store, tmp_path):
    meta = json.loads((tmp_path / "s.zarr" / "meta" / "zarr.json").read_text())
    index = meta["attributes"]["index"]
    assert index["data_end"] == 28 and len(index["episodes"]) == 3


def test_jpeg_codec_roundtrip(tmp_path):
    s = EpisodeStore.open(tmp_path / "j.zarr", mode="w", image_codec="jpeg")
    write_episode(s, np.random.default_rng(1), 3)
    frame = s.read_episode(0)["camera_front"][0]
    ref = synthetic_step(np.random.default_rng(1), 0)["camera_front"]
    assert frame.shape == ref.shape
    assert np.abs(frame.astype(int) - ref).mean() < 6  # lossy but close
    s.close()
    assert EpisodeStore.open(tmp_path / "j.zarr", mode="a", image_codec="lossless").image_codec == "jpeg"


def test_newer_schema_version_is_refused(store, tmp_path):
    root = zarr.open_group(tmp_path / "s.zarr", mode="r+")
    root.attrs["robot_learning_store"] = dict(root.attrs["robot_learning_store"], schema_version=99)
    with pytest.raises(StoreError, match="schema version 99; this code reads version 1"):
        EpisodeStore.open(tmp_path / "s.zarr", mode="r")
