"""Fast checks of the sim's contract: spec, validation, clipping, stamps, configs, coverage, reports."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from robot_learning.eval.report import EpisodeResult, EvalReport
from robot_learning.robot import Robot
from sim import DR_PRESETS, TASKS, make_env, make_expert, make_robot
from sim.assets import lowpoly_panda_urdf
from sim.config import load_task_config
from sim.randomization import sample_episode


@pytest.fixture(scope="module")
def robot():
    r = make_robot("lift", image_size=32, seed=0)
    yield r
    r.close()


def test_spec_matches_contract(robot) -> None:
    assert isinstance(robot, Robot)
    obs = robot.spec.observations
    assert set(obs) == {"camera_front", "camera_wrist", "joint_pos", "joint_vel", "ee_pose", "gripper"}
    assert obs["camera_front"].shape == (32, 32, 3) and obs["camera_front"].dtype == "uint8"
    assert obs["joint_pos"].shape == (9,) and obs["ee_pose"].shape == (7,) and obs["gripper"].shape == (1,)
    assert robot.spec.action_dim == 5 and robot.spec.control_hz == 10.0
    o = robot.reset(seed=1)
    for key, s in obs.items():
        s.check(o.data[key], where="reset: ")
        assert key in o.stamps


def test_injected_clock_stamps_and_sim_time() -> None:
    ticks = iter(range(100, 10_000))
    r = make_robot("lift", cameras=("front",), image_size=16, clock=lambda: float(next(ticks)))
    try:
        o = r.reset(seed=0)
        assert o.stamps["joint_pos"] < o.stamps["camera_front"]  # camera captured after proprio
        assert r.sim_time == 0.0
        r.act(np.zeros(5))
        r.act(np.zeros(5))
        assert r.sim_time == pytest.approx(0.2)
        assert r.observe().latest_stamp() > o.latest_stamp()
    finally:
        r.close()


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((1, 5)), np.array([0, 0, np.nan, 0, 0]), np.array([np.inf, 0, 0, 0, 0])])
def test_bad_actions_raise_and_server_survives(robot, bad) -> None:
    robot.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        robot.act(bad)
    robot.act(np.zeros(5))  # the physics client is still alive
    assert robot.observe().data["joint_pos"].shape == (9,)


def test_bad_seed_is_rejected(robot) -> None:
    with pytest.raises(ValueError, match="seed"):
        robot.reset(seed=-3)
    with pytest.raises(ValueError, match="seed"):
        robot.reset(seed=1.5)
    robot.reset(seed=np.int64(4))


def test_closed_robot_raises_clearly() -> None:
    r = make_robot("push", render=False)
    r.close()
    r.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        r.act(np.zeros(5))


def test_out_of_range_actions_are_clipped() -> None:
    a, b = make_robot("lift", render=False), make_robot("lift", render=False)
    try:
        a.reset(seed=2)
        b.reset(seed=2)
        for _ in range(3):
            a.act(np.array([7.0, -9.0, 3.0, 100.0, 5.0]))
            b.act(np.array([1.0, -1.0, 1.0, 1.0, 1.0]))
        np.testing.assert_array_equal(a.privileged_state(), b.privileged_state())
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "flip"}, "unknown task 'flip'"),
        ({"dr": "extreme"}, "unknown domain randomization preset 'extreme'"),
        ({"cameras": ("top",)}, "unknown camera 'top'"),
        ({"control_hz": 7.0}, "control_hz"),
        ({"action_mode": "joint"}, "action_mode"),
        ({"image_size": 2}, "image_size"),
    ],
)
def test_bad_constructor_arguments(kwargs, match) -> None:
    kwargs = {"task": "lift", **kwargs}
    with pytest.raises(ValueError, match=match):
        make_robot(**kwargs)


def test_bad_expert_arguments() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        make_expert("juggle")
    with pytest.raises(ValueError, match="quality"):
        make_expert("lift", quality=1.5)
    with pytest.raises(ValueError, match="unknown task"):
        make_env("juggle")


def test_registry_names() -> None:
    assert set(TASKS) == {"lift", "push", "push_t", "stack"}
    assert set(DR_PRESETS) == {"none", "light", "heavy", "real"}


def test_lowpoly_urdf_uses_collision_meshes() -> None:
    text = Path(lowpoly_panda_urdf()).read_text()
    assert "meshes/visual" not in text and "collision/link1.obj" in text


def test_gripper_gear_keeps_fingers_mirrored(robot) -> None:
    robot.reset(seed=0)
    for _ in range(5):
        robot.act(np.array([0, 0, 0, 0, -1.0]))
    q = robot.observe().data["joint_pos"]
    assert abs(q[7] - q[8]) < 1e-3
    assert robot.observe().data["gripper"][0] < 0.01


def test_push_t_coverage_geometry() -> None:
    r = make_robot("push_t", render=False)
    try:
        r.reset(seed=0)
        task = r.task
        task.place("tblock", (*task.goal_xy, 0.015), task.goal_yaw)
        assert task.coverage() == pytest.approx(1.0)
        assert task.success()
        task.place("tblock", (*task.goal_xy, 0.015), task.goal_yaw + math.pi)
        assert 0.05 < task.coverage() < 0.6  # flipped T overlaps only along the stem
        task.place("tblock", (task.goal_xy[0] + 0.2, task.goal_xy[1], 0.015), task.goal_yaw)
        assert task.coverage() == 0.0 and not task.success()
    finally:
        r.close()


def test_dr_sampling_is_seeded() -> None:
    preset = DR_PRESETS["heavy"]
    a = sample_episode(preset, np.random.default_rng(5), 3, ("front", "wrist"), 3)
    b = sample_episode(preset, np.random.default_rng(5), 3, ("front", "wrist"), 3)
    c = sample_episode(preset, np.random.default_rng(6), 3, ("front", "wrist"), 3)
    np.testing.assert_array_equal(a.colour_shift, b.colour_shift)
    assert a.friction_scale == b.friction_scale and a.friction_scale != c.friction_scale
    none = sample_episode(DR_PRESETS["none"], np.random.default_rng(5), 3, ("front",), 0)
    assert not none.colour_shift.any() and none.friction_scale == 1.0 and none.latency_steps == 0


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_configs_load(name) -> None:
    cfg = load_task_config(name)
    assert cfg.name == name and cfg.max_steps > 0
    assert load_task_config(name, ["image_size=48", "dr=light"]).robot_kwargs()["image_size"] == 48


def test_task_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="task.dr"):
        load_task_config("lift", ["dr=extreme"])
    with pytest.raises(ValueError, match="bogus"):
        load_task_config("lift", ["bogus=1"])
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task_config("nope")


def test_report_summary_and_json(tmp_path) -> None:
    eps = [EpisodeResult(seed=s, success=s % 4 != 0, length=10 + s, metrics={"coverage": 0.5}, max_metrics={"coverage": 0.9})
           for s in range(8)]
    rep = EvalReport(task="push_t", dr="none", episodes=eps, max_steps=300)
    assert rep.successes == 6 and rep.n_episodes == 8 and rep.seeds == list(range(8))
    lo, hi = rep.ci95
    assert lo < 0.75 < hi
    assert "6/8, Wilson 95% CI" in rep.summary() and "seeds 0-7" in rep.summary()
    assert rep.metric_means()["max_coverage"] == pytest.approx(0.9)
    back = EvalReport.from_json(rep.to_json(tmp_path / "r" / "report.json"))
    assert back.successes == 6 and back.mean_length == rep.mean_length
