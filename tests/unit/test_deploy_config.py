"""The deploy config composes from configs/ and bad values are errors naming the key."""

from __future__ import annotations

import pytest

from robot_learning.deploy.config import DeployConfig, load_deploy_config
from ros_nodes.deploy import load_configs


def test_default_config_composes_and_validates() -> None:
    run_cfg, node_cfg, _ = load_configs(["deploy.policy.scripted=expert:lift", "episodes=3"])
    assert run_cfg.episodes == 3 and run_cfg.robot.kind == "sim"
    assert node_cfg.policy.kind() == "scripted" and node_cfg.policy.isolation == "process"
    assert node_cfg.scheduler.blend == "latest" and len(node_cfg.safety.joint_low) == 7
    assert node_cfg.stream_for("camera_wrist").topic == "/camera/wrist/image_raw"
    _, ens, _ = load_configs(["deploy=ensemble"])
    assert ens.scheduler.blend == "temporal_ensemble"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["deploy.scheduler.blend=average"], "scheduler.blend"),
        (["deploy.takeover=never"], "takeover"),
        (["deploy.safety.workspace_low=[0,0]"], "workspace_low"),
        (["deploy.safety.stale_timeout_s=abc"], "stale_timeout_s"),
        (["robot.kind=mars"], "robot.kind"),
        (["deploy.policy.isolation=fork"], "policy.isolation: 'fork'"),
        (["deploy.policy.process_timeout_s=0"], "policy.process_timeout_s"),
        (["deploy.control_priority=120"], "control_priority: 120"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_configs(overrides)


def test_policy_source_must_be_exactly_one() -> None:
    cfg = load_deploy_config({"policy": {"checkpoint": "a.pt", "server": "ws://x:1"}})
    with pytest.raises(ValueError, match="exactly one"):
        cfg.policy.kind()
    with pytest.raises(ValueError, match="no topic known for observation key 'tactile'"):
        DeployConfig().stream_for("tactile")


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="blnd"):
        load_deploy_config({"scheduler": {"blnd": "latest"}})
