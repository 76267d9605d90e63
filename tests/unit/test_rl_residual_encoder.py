"""Residual on a trained base with its frozen image encoder: resolution, cached features, the pull towards the base."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_learning.policies.checkpoint import ModelPolicy
from robot_learning.rl.critics import CriticConfig
from robot_learning.rl.features import feature_key
from robot_learning.rl.replay import camera_features
from robot_learning.rl.residual import (
    BASE_ACTION_KEY,
    LearnerSettings,
    ResidualConfig,
    ResidualLearner,
    ResidualPolicy,
)
from tests.unit.test_policy_models import _model, _obs_history


def residual(config: ResidualConfig | None = None) -> ResidualPolicy:
    torch.manual_seed(0)
    return ResidualPolicy(ModelPolicy(_model("bc")), config or ResidualConfig(hidden_dims=[16]))


def test_auto_uses_the_frozen_base_encoder_and_stores_only_the_residual() -> None:
    policy = residual()
    assert policy.config.encoder == "base" and policy.config.cameras == ["camera_front"]
    assert policy.encoder is policy.base.model.encoder
    keys = list(policy.own_state_dict())
    assert keys and not any("encoder" in k or "camera" in k for k in keys), keys  # the base's weights stay the base's
    obs = _obs_history()
    planned = policy.predict_chunk(obs)[0]
    assert np.array_equal(policy.step_action(obs, planned, 0), np.clip(planned, -1, 1))  # zero-init: the base
    own = residual(ResidualConfig(encoder="own", hidden_dims=[16]))
    assert own.encoder is None and own.config.cameras == []


def test_base_encoder_on_a_base_without_one_is_a_clear_error() -> None:
    from tests.unit.test_rl_residual import LinearBase

    with pytest.raises(ValueError, match="encoder=base needs a trained base"):
        ResidualPolicy(LinearBase(), ResidualConfig(encoder="base"))
    assert ResidualPolicy(LinearBase(), ResidualConfig()).config.encoder == "own"  # auto falls back
    with pytest.raises(ValueError, match="encoder='conv'"):
        ResidualPolicy(LinearBase(), ResidualConfig(encoder="conv"))


def test_cached_camera_features_give_the_same_features_as_images() -> None:
    policy = residual()
    frames = torch.from_numpy(np.random.default_rng(3).integers(0, 255, (6, 2, 16, 16, 3), dtype=np.uint8))
    cached = camera_features(policy.encoder, "camera_front")(None, {"camera_front": frames.reshape(-1, 16, 16, 3).numpy()})
    base = torch.rand(6, 3) * 2 - 1
    joints = torch.rand(6, 2, 4)
    with_images = policy.net.features({"camera_front": frames, "joint_pos": joints}, base)
    with_cache = policy.net.features({feature_key("camera_front"): torch.from_numpy(cached).reshape(6, 2, -1),
                                      "joint_pos": joints}, base)
    torch.testing.assert_close(with_images, with_cache)
    assert with_images.shape == (6, policy.net.features.dim)


def batch(n: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def obs() -> dict:
        return {"joint_pos": torch.rand(n, 2, 4, generator=g) * 2 - 1, feature_key("camera_front"): torch.randn(n, 2, 8, generator=g),
                BASE_ACTION_KEY: torch.rand(n, 2, 3, generator=g) - 0.5}
    return {"obs": obs(), "next_obs": obs(), "action": torch.rand(n, 3, generator=g) - 0.5,
            "reward": (torch.rand(n, generator=g) < 0.3).float(), "discount": torch.full((n,), 0.97)}


def test_learner_with_frozen_features_updates_and_the_penalty_pulls_the_residual_to_zero() -> None:
    def run(penalty: float) -> float:
        policy = residual(ResidualConfig(hidden_dims=[16], action_scale=0.2))
        with torch.no_grad():
            policy.net.actor.net[-1].bias.fill_(1.0)  # a residual far from the base
        learner = ResidualLearner(policy, LearnerSettings(critic=CriticConfig(n_heads=2, hidden_dims=[16], lr=1e-3),
                                                          actor_lr=3e-3, residual_penalty=penalty))
        assert not list(learner.critic_features.parameters())  # parameterless: polyak_update must cope
        b = batch()
        for _ in range(60):
            learner.update(b)
        with torch.no_grad():
            return float(policy.net(b["obs"], b["obs"][BASE_ACTION_KEY][:, -1]).abs().mean())

    start = 0.2 * np.tanh(1.0)
    assert run(100.0) < 0.5 * start  # the pull dominates: back towards the base
    assert run(100.0) < run(0.0)


def test_demo_bc_weight_fades_linearly_after_the_critic_warm_up() -> None:
    policy = residual(ResidualConfig(hidden_dims=[16], action_scale=1.0))
    learner = ResidualLearner(policy, LearnerSettings(critic=CriticConfig(n_heads=2, hidden_dims=[16]), demo_bc=0.4,
                                                      critic_warmup_updates=10, demo_bc_decay_updates=20))
    weights = {}
    for updates in (0, 10, 20, 30, 40):
        learner.updates = updates
        weights[updates] = learner.demo_bc_weight()
    assert weights == pytest.approx({0: 0.4, 10: 0.4, 20: 0.2, 30: 0.0, 40: 0.0})
    constant = ResidualLearner(policy, LearnerSettings(critic=CriticConfig(n_heads=2, hidden_dims=[16]), demo_bc=0.4))
    constant.updates = 10_000
    assert constant.demo_bc_weight() == 0.4
    b = {**batch(), "bc_mask": torch.arange(32) < 16}
    learner.updates = 30  # faded out: the demo term no longer changes the actor loss
    q = torch.full((32,), -2.0)
    base = b["obs"][BASE_ACTION_KEY][:, -1]
    delta = torch.ones_like(base)
    assert float(learner._actor_loss(q, base, delta, b)) == pytest.approx(1.0)  # -Q / mean|Q| only


def test_demo_bc_pulls_the_executed_action_on_demo_rows_towards_the_demo() -> None:
    def run(weight: float, mask: torch.Tensor) -> float:
        policy = residual(ResidualConfig(hidden_dims=[16], action_scale=1.0))
        learner = ResidualLearner(policy, LearnerSettings(critic=CriticConfig(n_heads=2, hidden_dims=[16], lr=1e-3),
                                                          actor_lr=3e-3, demo_bc=weight))
        b = {**batch(), "bc_mask": mask}
        for _ in range(150):
            learner.update(b)
        with torch.no_grad():
            base = b["obs"][BASE_ACTION_KEY][:, -1]
            err = (base + policy.net(b["obs"], base) - b["action"]).pow(2).sum(-1)
        return float(err[mask].mean())  # the demo rows' error

    half = torch.arange(32) < 16
    start = float((batch()["obs"][BASE_ACTION_KEY][:, -1] - batch()["action"]).pow(2).sum(-1)[half].mean())
    demo_err = run(100.0, half)
    assert demo_err < 0.3 * start  # the demo rows' executed action moves to the demonstrated one
    assert demo_err < run(0.0, half)
    with pytest.raises(ValueError, match="bc_mask"):
        policy = residual(ResidualConfig(hidden_dims=[16]))
        learner = ResidualLearner(policy, LearnerSettings(critic=CriticConfig(n_heads=2, hidden_dims=[16]), demo_bc=1.0))
        for _ in range(3):
            learner.update(batch())
