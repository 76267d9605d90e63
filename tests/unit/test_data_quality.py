"""Quality flags on hand-made episodes (pause, saturated action, stamp gap, NaN, dropped frames) and
the HTML report built from a real zarr store (the browser test is in tests/integration)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from robot_learning.data.quality import (
    QualityConfig,
    action_saturation,
    continuous_dims,
    dropped_frames,
    pause_lengths,
    state_coverage,
    store_quality,
)
from robot_learning.data.report import ReportConfig, build_report
from robot_learning.data.store import EpisodeMeta, EpisodeStore, StoreError

HZ = 10.0


def _episode(store: EpisodeStore, kind: str = "clean", n: int = 60, t0: float = 1.7e9, success: bool = True) -> int:
    """A smooth reaching episode at 10 Hz with one defect chosen by ``kind``."""
    rng = np.random.default_rng(len(store))
    t = np.arange(n) / HZ
    q = np.stack([np.sin(0.5 * t + d) for d in range(3)], axis=1).astype(np.float32)
    action = np.stack([0.8 * np.sin(0.7 * t + d) for d in range(3)] + [np.where(t < 3, 1.0, -1.0)], axis=1)
    tick = t0 + t
    cam = tick - 0.01
    frames = [np.clip(rng.normal(120, 30, (16, 16, 3)), 0, 255).astype(np.uint8) for _ in range(n)]
    if kind == "pause":
        q[20:45] = q[20]  # 2.4 s without motion
    if kind == "saturation":
        action[5:45, 0] = 1.0  # dim 0 clipped at the bound on 40/60 steps
    if kind == "gap":
        tick[30:] += 1.5  # the control loop stalled for 1.5 s
        cam[30:] += 1.5
    if kind == "nan":
        q[12, 1] = np.nan
    if kind == "dropped":
        cam[10:14] = cam[10]  # the camera repeated one frame 3 times
    if kind == "blank":
        frames = [np.zeros((16, 16, 3), np.uint8)] * n
    w = store.begin_episode(EpisodeMeta(task="reach", source="teleop", operator="ann" if success else "bob",
                                        rates={"step": HZ, "camera_front": HZ}, tags={"kind": kind}))
    for i in range(n):
        w.append({"camera_front": frames[i], "joint_pos": q[i], "action": action[i].astype(np.float32),
                  "gripper": np.float32(action[i, 3] > 0)},
                 {"step": tick[i], "camera_front": cam[i], "joint_pos": tick[i] - 0.002, "gripper": tick[i]})
    return w.commit(success=success)


KINDS = ("clean", "pause", "saturation", "gap", "nan", "dropped", "blank")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> EpisodeStore:
    s = EpisodeStore.open(tmp_path_factory.mktemp("quality") / "q.zarr", mode="w", image_codec="lossless",
                          allow_nonfinite=("joint_pos",))  # the "nan" episode must reach the report
    for k, kind in enumerate(KINDS):
        _episode(s, kind, t0=1.7e9 + 100 * k, success=k % 3 != 2)
    return s


def test_each_flag_fires_on_its_episode_only(store: EpisodeStore) -> None:
    qualities, problems = store_quality(store)
    assert problems == []
    kinds = {q.index: {f.kind for f in q.flags} for q in qualities}
    assert kinds == {0: set(), 1: {"pause"}, 2: {"saturation"}, 3: {"stamp_gap", "dropped_frames"},
                     4: {"nan"}, 5: {"dropped_frames"}, 6: set()}  # blank frames are judged from pixels, in the report
    pause = qualities[1]
    assert len(pause.pauses) == 1
    first, last, secs = pause.pauses[0]
    assert (first, last) == (20, 44) and secs == pytest.approx(2.4, abs=1e-6)
    # store-wide extremes as bounds: the 40 clipped steps (and maybe the one step at the true minimum)
    assert qualities[2].saturation["0"] == pytest.approx(40 / 60, abs=1.01 / 60)
    known, _ = store_quality(store, [2], QualityConfig(action_low=(-1.0,) * 4, action_high=(1.0,) * 4))
    assert known[0].saturation["0"] == pytest.approx(40 / 60)
    assert "3" not in qualities[2].saturation  # the binary gripper command is not "saturated"
    assert qualities[3].timing["step"].gaps == 1 and qualities[3].timing["camera_front"].gaps == 1
    assert qualities[3].dropped_frames["camera_front"] == 15  # the camera was silent through the stall too
    assert qualities[4].nonfinite == {"joint_pos": 1} and qualities[4].flags[0].step == 12
    assert qualities[5].dropped_frames["camera_front"] == 3
    assert qualities[0].timing["camera_front"].align_max_ms == pytest.approx(10.0, abs=1e-3)
    assert qualities[0].timing["step"].rate_hz == pytest.approx(HZ)


def test_thresholds_are_respected(store: EpisodeStore) -> None:
    strict, _ = store_quality(store, [1, 2], QualityConfig(min_pause_s=3.0, saturation_fraction=0.9))
    assert [q.flags for q in strict] == [[], []]
    with pytest.raises(ValueError, match="min_pause_s"):
        QualityConfig(min_pause_s=-1)


def test_single_figures() -> None:
    t = np.arange(30) / 10.0
    x = np.r_[np.arange(10), np.full(15, 9.0), np.arange(10, 15)].astype(float)
    assert pause_lengths(x, t, speed=0.01, min_duration=1.0) == [(9, 24, pytest.approx(1.5))]
    assert pause_lengths(x, t, speed=0.01, min_duration=2.0) == []
    a = np.c_[np.linspace(-1, 1, 20), np.r_[np.full(10, 1.0), np.full(10, -1.0)]]
    dims = continuous_dims(a)
    assert dims.tolist() == [True, False]
    share = action_saturation(a, a.min(0), a.max(0), dims=dims)
    assert share.tolist() == [pytest.approx(0.1), 0.0]
    stamps = np.array([0.0, 0.1, 0.2, 0.5, 0.5, 0.6])  # frames 0.3 and 0.4 never came (one step held 0.5)
    assert dropped_frames(stamps, 0.1) == 2
    assert dropped_frames(stamps[:3], 0.1) == 0


def test_state_coverage(store: EpisodeStore) -> None:
    cov = state_coverage(store, "joint_pos", bins=10)
    assert cov.counts.shape == (3, 10) and cov.counts.sum() == 3 * (7 * 60 - 1)  # the NaN row is dropped
    assert 0 < cov.occupied <= 1 and cov.projection.shape[1] == 2
    with pytest.raises(ValueError, match="not in"):
        state_coverage(store, "nope")


def test_report_html(store: EpisodeStore, tmp_path: Path) -> None:
    out = build_report(store, tmp_path / "r.html")
    page = out.path.read_text()
    assert out.episodes == 7 and out.flagged == 6 and out.notes == []
    for i in range(7):
        assert f'id="ep-{i}"' in page
    for i in (1, 2, 3, 4, 5, 6):
        assert f'href="#ep-{i}"' in page
    assert 'href="#ep-0"' not in page
    assert "blank_camera" in page and "0.71 (5/7, Wilson 95% CI" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 4
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 2 * 7
    assert "http://" not in page and "https://" not in page  # self-contained


def test_report_samples_thumbnails_and_says_so(store: EpisodeStore, tmp_path: Path) -> None:
    out = build_report(store, tmp_path / "r.html", ReportConfig(max_thumbnails=2, max_episodes=4))
    page = out.path.read_text()
    assert any("thumbnails for 2 of 7 episodes" in n for n in out.notes)
    assert any("quality analysed for 4 of 7" in n for n in out.notes)
    assert "thumbnails for 2 of 7 episodes" in page and page.count("not sampled") == 5
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 2 * 2


def test_report_partial_on_a_damaged_episode(store: EpisodeStore, tmp_path: Path) -> None:
    # corrupt the first camera chunk of episode 3: the report covers everything else and says what broke
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(store.uri, copy)
    info = store.episode(3)
    chunk = copy / "data" / "camera_front" / "c" / str(info.start) / "0" / "0" / "0"
    assert chunk.is_file()
    chunk.write_bytes(b"not a blosc frame")
    out = build_report(EpisodeStore.open(copy, mode="r"), tmp_path / "r.html")
    page = out.path.read_text()
    assert 'id="ep-3"' in page and "unreadable" in page
    assert len(re.findall(r'src="data:image/jpeg;base64,', page)) == 2 * 6


def test_report_on_an_empty_store_is_one_clear_error(tmp_path: Path) -> None:
    from robot_learning.cli import main

    EpisodeStore.open(tmp_path / "empty.zarr", mode="w")
    with pytest.raises(StoreError, match="no episodes"):
        build_report(str(tmp_path / "empty.zarr"), tmp_path / "r.html")
    assert main(["data", "report", str(tmp_path / "empty.zarr"), "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()
