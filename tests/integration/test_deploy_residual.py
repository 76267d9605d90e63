"""A composite residual checkpoint (frozen BC base + residual actor) through ``rlstack deploy`` unchanged:
the real policy node (base in its isolation process, the residual's per-step hook handed back to the
control thread) against the real sim_robot node over loopback rclpy.

The base is a BC network whose head is zeroed, so it plans exactly the middle of its action range (0)
at every step; the residual's last layer gives a known constant correction ``R``. Every executed
policy step in the recorded episode must then be ``R``: the hook ran on every control tick (not once
per chunk), at the control rate, with the frozen base encoder pickled into the control process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

HZ, IMAGE, STEPS = 10.0, 16, 30
R = np.array([0.1, -0.1, 0.05, 0.0, 0.2], dtype=np.float32)


def composite(path: Path) -> None:
    """Write base + residual as one composite checkpoint."""
    from robot_learning.policies import PolicySpec, build_model
    from robot_learning.policies.checkpoint import ModelPolicy
    from robot_learning.rl.residual import ResidualConfig, ResidualPolicy

    spec = PolicySpec(obs_shapes={"camera_front": (IMAGE, IMAGE, 3), "joint_pos": (9,), "gripper": (1,)},
                      action_dim=5, n_obs_steps=2, horizon=8, n_action_steps=4, control_hz=HZ)
    stats = {"joint_pos": {"min": [-3.0] * 9, "max": [3.0] * 9}, "gripper": {"min": [0.0], "max": [0.1]},
             "action": {"min": [-0.5] * 5, "max": [0.5] * 5}}
    torch.manual_seed(0)
    model = build_model("bc", {"encoder": {"width": 8, "keypoints": 4, "feature_dim": 8}, "hidden_dims": [32]},
                        spec, stats)
    with torch.no_grad():
        model.mlp[-1].weight.zero_()
        model.mlp[-1].bias.zero_()  # normalized 0 = the middle of the action range = 0 here
    residual = ResidualPolicy(ModelPolicy(model), ResidualConfig(encoder="base", action_scale=0.3, hidden_dims=[16]))
    assert residual.config.cameras == ["camera_front"]
    with torch.no_grad():
        residual.net.actor.net[-1].bias.copy_(torch.from_numpy(np.arctanh(R / 0.3)))
    residual.save(path)


def test_composite_residual_runs_through_the_policy_node(ros_env: Any, tmp_path: Path) -> None:
    from robot_learning.data.layout import CONTROL_SOURCES
    from robot_learning.data.store import EpisodeStore
    from ros_nodes.deploy import deploy_in_sim

    ckpt = tmp_path / "composite.pt"
    composite(ckpt)
    store = tmp_path / "rollouts.zarr"
    report = deploy_in_sim([f"deploy.policy.checkpoint={ckpt}", "task=lift", f"task.image_size={IMAGE}",
                            "task.cameras=[front]", f"task.control_hz={HZ}", "episodes=1", f"max_steps={STEPS}",
                            "robot.seed=5", "startup_timeout_s=300", f"domain_id={ros_env.domain_id}", f"log_dir={tmp_path}",
                            f"store={store}"])
    diag = report["diagnostics"]
    assert diag["inference_errors"] == 0, diag
    assert math.isfinite(diag["step_hook_ms"]) and diag["step_hook_ms"] < 1e3 / HZ, diag  # fits in one tick
    ep = EpisodeStore.open(str(store), mode="r").read_episode(0)
    sources = np.asarray([CONTROL_SOURCES[c] for c in ep["control_source"]])
    policy_steps = ep["action"][sources == "policy"]
    assert len(policy_steps) >= 0.5 * STEPS, (len(policy_steps), sources)
    np.testing.assert_allclose(policy_steps, np.broadcast_to(R, policy_steps.shape), atol=1e-5)
    dt = np.diff(ep["stamp/step"])
    assert abs(float(np.median(dt)) - 1.0 / HZ) < 0.02, dt  # one executed step per control tick
