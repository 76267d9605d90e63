"""Parallel evaluation (spawned processes, mp4 videos) and demo generation into a real episode store."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from robot_learning.cli import main
from robot_learning.eval.sim_eval import evaluate
from sim.experts import ExpertAgentFactory

pytestmark = pytest.mark.integration


class ZeroAgent:
    """An agent that never moves: fails every lift episode."""

    def reset(self) -> None:
        pass

    def act(self, obs) -> np.ndarray:
        assert obs.data["joint_pos"].shape == (9,)
        return np.zeros(5)


def test_parallel_eval_matches_serial_and_writes_videos(tmp_path) -> None:
    factory = ExpertAgentFactory("push", quality=0.7, seed=3)
    kwargs = {"render": False}
    par = evaluate(factory, task="push", n_episodes=4, seed=20, n_procs=2, video_dir=tmp_path, n_videos=1,
                   robot_kwargs=kwargs, progress=False)
    ser = evaluate(factory, task="push", n_episodes=4, seed=20, n_procs=1, robot_kwargs=kwargs, progress=False)
    assert par.seeds == ser.seeds == [20, 21, 22, 23]
    assert [(e.success, e.length) for e in par.episodes] == [(e.success, e.length) for e in ser.episodes]
    assert par.n_procs == 2 and par.successes >= 3
    assert len(par.videos) == 1
    cap = cv2.VideoCapture(par.videos[0])
    n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    assert ok and frame.shape == (240, 320, 3) and n_frames == par.episodes[0].length + 1
    summary = par.summary()
    assert "Wilson 95% CI" in summary and "seeds 20-23" in summary and "mean episode length" in summary
    d = json.loads(par.to_json(tmp_path / "report.json").read_text())
    assert d["n_episodes"] == 4 and d["seeds"] == [20, 21, 22, 23] and len(d["ci95"]) == 2


def test_eval_of_a_policy_agent_that_fails() -> None:
    rep = evaluate(ZeroAgent, task="lift", n_episodes=2, n_procs=1, max_steps=5,
                   robot_kwargs={"cameras": ("front",), "image_size": 16}, progress=False)
    assert rep.successes == 0 and rep.mean_length == 5 and rep.ci95[0] == 0.0


def test_eval_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(ZeroAgent, task="juggle", n_episodes=1)
    with pytest.raises(ValueError, match="unknown domain randomization preset"):
        evaluate(ZeroAgent, task="lift", n_episodes=1, dr="wild")


def test_demos_command_writes_episode_store(tmp_path, capsys) -> None:
    from robot_learning.data.store import EpisodeStore

    out = tmp_path / "lift.zarr"
    rc = main(["sim", "demos", "--task", "lift", "--episodes", "2", "--quality", "1.0", "--out", str(out),
               "image_size=32", "cameras=[front]"])
    assert rc == 0
    assert "2 episode(s) written" in capsys.readouterr().out
    store = EpisodeStore.open(str(out), "r")
    assert len(store) == 2
    info = store.episodes()[1]
    assert info.success and info.meta.task == "lift" and info.meta.tags["seed"] == 1
    ep = store.read_episode(1)
    assert ep["camera_front"].shape[1:] == (32, 32, 3) and ep["action"].shape[1] == 5
    assert np.all(np.diff(ep["stamp/step"]) > 0) and np.all(ep["stamp/camera_front"] <= ep["stamp/step"])
    assert ep["done"][-1] and not ep["done"][:-1].any()


def test_cli_bad_task_is_a_clear_error(capsys) -> None:
    assert main(["sim", "demos", "--task", "juggle", "--out", "unused.zarr"]) == 2
    assert "unknown task 'juggle'" in capsys.readouterr().err


def test_rollout_command_writes_video(tmp_path, capsys) -> None:
    video = tmp_path / "push_t.mp4"
    assert main(["sim", "rollout", "--task", "push_t", "--seed", "1", "--video", str(video), "cameras=[]"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["success"] and info["coverage"] >= 0.85 and video.stat().st_size > 1000
