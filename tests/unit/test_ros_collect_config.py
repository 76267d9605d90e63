"""``rlstack collect`` configuration: Hydra groups, validation messages, node parameters."""

from __future__ import annotations

import argparse

import pytest

from robot_learning.data.alignment import StreamConfig
from ros_nodes.collect import add_arguments, load_config, node_params, run


def test_default_graph_and_group_overrides() -> None:
    cfg, _ = load_config(["robot=sim", "teleop=expert", "episodes=3", "store=/tmp/x.zarr"])
    assert cfg.episodes == 3 and cfg.robot.kind == "sim" and cfg.teleop.mode == "expert"
    names = [s.name for s in cfg.all_streams()]
    assert names[:2] == ["joint", "gripper"] and "action" in names and "intervention" in names
    params = node_params(cfg)
    assert set(params) == {"sim_robot", "teleop", "recorder"}
    assert params["recorder"]["source"] == "scripted" and params["recorder"]["control_hz"] == 10.0
    specs = [StreamConfig.from_param(p) for p in params["recorder"]["streams"]]
    assert specs == cfg.all_streams()  # the parameter form round-trips
    ext, _ = load_config(["robot=external", "teleop=keyboard"])
    assert "sim_robot" not in node_params(ext) and node_params(ext)["recorder"]["source"] == "teleop"


@pytest.mark.parametrize("overrides, message", [
    (["robot=external"], "teleop=expert needs robot=sim"),
    (["episodes=0"], "episodes=0"),
    (["recorder.clock=nope"], "recorder.clock='nope'"),
    (["teleop.mode=joystick"], "teleop.mode='joystick'"),
    (["max_steps=ten"], "max_steps"),
])
def test_bad_config_is_named(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(overrides)


def test_bad_stream_in_config_is_named() -> None:
    with pytest.raises(ValueError, match="unknown type 'video'"):
        load_config(["+recorder.streams=[{name: x, topic: /x, type: video}]"])


def test_run_reports_bad_config_without_starting_anything(capsys) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["episodes=-1"])) == 2
    assert "episodes=-1" in capsys.readouterr().err
    assert run(parser.parse_args(["--print-config", "task=push"])) == 0
    assert "task: push" in capsys.readouterr().out


def test_operator_status_line() -> None:
    from ros_nodes.collect import status_line

    assert "waiting for the recorder" in status_line({})
    assert "idle (2 committed)" in status_line({"recording": False, "committed": 2})
    line = status_line({"recording": True, "committed": 2, "steps": 41, "stalled": ["camera_front"], "streams": {
        "joint": {"rate_hz": 499.7, "dropped": 0, "missing_steps": 0, "align_err_max_ms": 0.0},
        "camera_front": {"rate_hz": 29.9, "dropped": 3, "missing_steps": 2, "align_err_max_ms": 12.34}}})
    assert line == ("episode 2 REC | steps 41 | joint 500 Hz | camera_front 30 Hz drop 5 | align 12.3 ms"
                    " | STALLED camera_front")


def test_sim_camera_streams_follow_the_task_cameras() -> None:
    from robot_learning.data.collect_config import load_config

    cfg, _ = load_config(["task.cameras=[front]"])
    names = [s.name for s in cfg.all_streams()]
    assert "camera_front" in names and "camera_wrist" not in names
