"""End to end over real rclpy: sim_robot + scripted-expert teleop + recorder as separate processes
collect episodes into a zarr store (``rlstack collect`` logic)."""

from __future__ import annotations

import numpy as np
import pytest

from robot_learning.data.store import EpisodeStore
from ros_nodes.collect import load_config, run_collection

pytestmark = pytest.mark.integration

EPISODES = 3


def test_collect_expert_episodes_into_store(ros_env, tmp_path) -> None:
    store_path = tmp_path / "demo.zarr"
    cfg, _ = load_config([
        "robot=sim", "teleop=expert", f"episodes={EPISODES}", f"store={store_path}", "max_steps=60",
        f"domain_id={ros_env.domain_id}", f"log_dir={tmp_path / 'logs'}",
    ])
    results = run_collection(cfg, progress=False)
    assert len(results) == EPISODES
    assert [r["seed"] for r in results] == list(range(EPISODES))  # robot.seed=0, one seed per episode

    store = EpisodeStore.open(store_path, mode="r")
    assert len(store) == EPISODES
    half_period = 0.5 / cfg.robot.control_hz
    for i, r in enumerate(results):
        info = store.episode(i)
        assert r["committed"], r
        assert info.length == r["steps"] > 5
        assert info.success == r["success"]
        assert info.meta.source == "scripted" and info.meta.task == "lift"
        # the lift expert solves every seed of this short run; an episode stops after success is held
        assert info.success and info.length < 60
        ep = store.read_episode(i)
        step_t = ep["stamp/step"]
        assert np.all(np.diff(step_t) > 0)
        assert abs(np.diff(step_t).mean() - 1.0 / cfg.robot.control_hz) < 0.03  # one step per control period
        for cam in ("camera_front", "camera_wrist"):
            assert ep[cam].shape == (info.length, 96, 96, 3)
            assert ep[cam].std() > 1.0  # real rendered frames, not blanks
            err = np.abs(ep[f"stamp/{cam}"] - ep["stamp/joint_pos"])
            assert err.max() < half_period, f"{cam}: alignment error {err.max() * 1e3:.1f} ms"
        # each recorded action is the teleop's response to that step's observation
        assert np.all(ep["stamp/action"] > step_t)
        assert np.all(np.diff(ep["stamp/action"]) > 0)  # ... each action used by one step only
        assert np.all(ep["stamp/action"] - step_t < 1.5 / cfg.robot.control_hz)
        assert np.all(np.abs(ep["action"]) <= 1.0) and not ep["intervention"].any()
        # the lift succeeded: the gripper ends closed on the cube, raised above its start
        assert ep["ee_pose"][-1, 2] > ep["ee_pose"][0, 2] - 0.2
        for name, stats in r["streams"].items():
            assert stats["dropped"] == 0, (name, stats)
            # a step is dropped only if the teleop's answer took over 1.5 periods (a loaded machine)
            assert stats["missing_steps"] <= 1, (name, stats)
            if stats["received"] and name != "intervention":
                assert stats["align_err_max_ms"] < 1e3 * half_period, (name, stats)
