"""The Rerun view of a store: the .rrd written by ``rlstack data view --save`` holds the expected
entity paths and the stores' real capture stamps, read back with rerun's own RRD reader."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

rr = pytest.importorskip("rerun", reason="rerun-sdk is a dependency (pip install -e .)")

from robot_learning.cli import main  # noqa: E402
from robot_learning.data import view  # noqa: E402
from robot_learning.data.store import EpisodeMeta, EpisodeStore, StoreError  # noqa: E402
from robot_learning.data.synthetic import synthetic_step  # noqa: E402


def _write(store: EpisodeStore, n: int, t0: float, control_source: bool, seed: int) -> int:
    """A synthetic episode with two cameras on their own jittered stamps and a 100 Hz raw stream."""
    rng = np.random.default_rng(seed)
    w = store.begin_episode(EpisodeMeta(task="lift", source="teleop", operator="ann", rates={"step": 10.0},
                                        tags={"action_names": [f"a{d}" for d in range(7)]}))
    for t in range(n):
        step = synthetic_step(rng, t, cameras=("front", "wrist"), hw=(24, 32))
        if control_source:
            step["control_source"] = np.uint8(1 if 3 <= t < 6 else 0)
        tick = t0 + 0.1 * t
        w.append(step, {"step": tick, "camera_front": tick - 0.013 - 0.001 * (t % 3), "camera_wrist": tick - 0.021,
                        "joint_pos": tick - 0.001, "joint_vel": tick - 0.001, "ee_pose": tick - 0.002,
                        "gripper": tick - 0.001})
    hi_t = t0 + np.arange(10 * n) * 0.01
    w.append_stream("joint_states", rng.standard_normal((10 * n, 7)).astype(np.float32), hi_t)
    return w.commit(success=True)


def _read_rrd(path: Path) -> tuple[dict[str, list], dict[str, dict[str, np.ndarray]]]:
    """Entity path -> chunks, and entity path -> timeline -> int64 ns values (rerun's own reader)."""
    chunks: dict[str, list] = defaultdict(list)
    times: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for chunk in rr.chunk.RrdReader(path).stream():
        chunks[chunk.entity_path].append(chunk)
        batch = chunk.to_record_batch()
        for name in chunk.timeline_names:
            col = batch.column(name)
            times[chunk.entity_path][name].append(np.asarray(col.cast(pa.int64()).to_numpy(zero_copy_only=False)))
    return chunks, {e: {k: np.sort(np.concatenate(v)) for k, v in tl.items()} for e, tl in times.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> EpisodeStore:
    s = EpisodeStore.open(tmp_path_factory.mktemp("view") / "lift.zarr", mode="w", image_codec="jpeg")
    _write(s, 9, 1.8e9, control_source=True, seed=0)
    _write(s, 6, 1.8e9 + 50, control_source=True, seed=1)
    return s


def test_rrd_holds_entities_and_real_stamps(store: EpisodeStore, tmp_path: Path) -> None:
    out = tmp_path / "ep.rrd"
    assert main(["data", "view", store.uri, "0", "1", "--save", str(out)]) == 0
    chunks, times = _read_rrd(out)
    assert len(rr.chunk.RrdReader(out).blueprints()) == 1  # the default layout travels with the file
    for i in (0, 1):
        p = f"/episode_{i}"
        expected = {f"{p}/meta", f"{p}/camera/front", f"{p}/camera/wrist", f"{p}/joint_pos", f"{p}/joint_vel",
                    f"{p}/ee_pose", f"{p}/ee/trajectory", f"{p}/ee/position", f"{p}/gripper", f"{p}/action",
                    f"{p}/reward", f"{p}/done", f"{p}/terminal", f"{p}/intervention", f"{p}/control_source",
                    f"{p}/control_source/log", f"{p}/streams/joint_states"}
        assert expected <= set(chunks), expected - set(chunks)
        ep = store.read_episode(i)
        for entity, key in (("camera/front", "camera_front"), ("camera/wrist", "camera_wrist"),
                            ("joint_pos", "joint_pos"), ("ee_pose", "ee_pose"), ("action", "step")):
            got = times[f"{p}/{entity}"]["capture_time"]
            want = np.round(ep[f"stamp/{key}"] * 1e9).astype(np.int64)
            np.testing.assert_allclose(got, want, atol=1000)  # ns; float64 seconds carry ~0.2 us here
            assert times[f"{p}/{entity}"]["step"].tolist() == list(range(len(ep["stamp/step"])))
        _values, raw_t = store.read_stream(i, "joint_states")
        stream = times[f"{p}/streams/joint_states"]
        np.testing.assert_allclose(stream["capture_time"], np.round(raw_t * 1e9), atol=1000)
        assert stream["joint_states_sample"].tolist() == list(range(len(raw_t)))  # its own timeline
    # the camera column is the stored frame (JPEG again, so close, not exact)
    batch = chunks["/episode_0/camera/front"][0].to_record_batch()
    blob = np.asarray(batch.column("EncodedImage:blob").to_pylist()[0][0], dtype=np.uint8)
    frame = cv2.imdecode(blob, cv2.IMREAD_COLOR)[..., ::-1]
    stored = store.read_episode(0, ["camera_front"])["camera_front"][0]
    assert frame.shape == stored.shape and np.abs(frame.astype(int) - stored).mean() < 6
    # control source is logged by name at each change: policy, human at step 3, policy at step 6
    log = chunks["/episode_0/control_source/log"][0].to_record_batch()
    assert log.column("TextLog:text").to_pylist() == [["policy"], ["human"], ["policy"]]
    meta = chunks["/episode_0/meta"][0].to_record_batch().column("TextDocument:text").to_pylist()[0][0]
    assert "operator | ann" in meta and "task | lift" in meta


def test_without_control_source_or_intervention(tmp_path: Path) -> None:
    s = EpisodeStore.open(tmp_path / "plain.zarr", mode="w")
    rng = np.random.default_rng(0)
    w = s.begin_episode(EpisodeMeta(task="push"))
    for t in range(5):
        step = {"joint_pos": rng.standard_normal(3).astype(np.float32), "action": rng.standard_normal(2).astype(np.float32)}
        w.append(step, {"step": 10.0 + 0.1 * t, "joint_pos": 10.0 + 0.1 * t})
    w.commit(success=False)
    out = view.save(str(tmp_path / "plain.zarr"), tmp_path / "p.rrd")
    chunks, _ = _read_rrd(out)
    assert {"/episode_0/joint_pos", "/episode_0/action", "/episode_0/meta"} <= set(chunks)
    assert not any("control_source" in e or "intervention" in e or "camera" in e for e in chunks)


def test_recording_in_memory_for_notebooks(store: EpisodeStore, tmp_path: Path) -> None:
    rec = view.recording(store, [1])  # buffered until a sink is set
    rec.save(str(tmp_path / "nb.rrd"))
    rec.flush()
    rec.disconnect()
    chunks, _ = _read_rrd(tmp_path / "nb.rrd")
    assert "/episode_1/camera/front" in chunks and "/episode_0/camera/front" not in chunks


def test_no_display_saves_instead(store: EpisodeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["data", "view", store.uri, "1"]) == 0
    assert (tmp_path / "lift_ep1.rrd").stat().st_size > 0
    assert "no display here" in capsys.readouterr().out


def test_bad_input_is_one_line_exit_2(store: EpisodeStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.zarr"
    EpisodeStore.open(empty, mode="w")
    cases = [([str(empty), "--save", str(tmp_path / "a.rrd")], "no episodes"),
             ([store.uri, "7", "--save", str(tmp_path / "b.rrd")], "out of range"),
             ([str(tmp_path / "nope.zarr"), "--save", str(tmp_path / "c.rrd")], "no such store"),
             # nothing listens on port 9: one line, not minutes of botocore retries
             (["s3://bucket/lift.zarr", "--save", str(tmp_path / "d.rrd"), "--storage-option",
               "endpoint_url=http://127.0.0.1:9", "--storage-option", "key=k", "--storage-option", "secret=s"],
              "cannot reach the store")]
    for argv, message in cases:
        assert main(["data", "view", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.glob("*.rrd"))
    with pytest.raises(StoreError, match="no episodes"):
        view.recording(str(empty))
