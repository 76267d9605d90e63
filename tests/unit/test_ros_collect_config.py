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
