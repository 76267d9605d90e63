"""Residual RL: zero-init = base, bound, relabelling, TD error falls, bit-exact resume, composite round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_learning.policies.base import Policy, PolicySpec
from robot_learning.rl.critics import CriticConfig
from robot_learning.rl.residual import (
    BASE_ACTION_KEY,
    LearnerSettings,
    ResidualConfig,
    ResidualLearner,
    ResidualPolicy,
    relabel_residuals,
)

SPEC = PolicySpec(obs_shapes={"ee_pose": (7,), "gripper": (1,)}, action_dim=4, n_obs_steps=2, horizon=4,
                  n_action_steps=2)


class LinearBase(Policy):
    """A deterministic base whose chunk depends on the newest ee_pose and counts its calls."""

    spec = SPEC

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        self.calls += 1
        x = obs_history["ee_pose"][-1][:4]
        return np.stack([0.5 * np.tanh(x) + 0.01 * i + 0.1 * self.calls for i in range(SPEC.horizon)]).astype(np.float32)


def history(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"ee_pose": rng.standard_normal((2, 7)).astype(np.float32), "gripper": rng.uniform(size=(2, 1)).astype(np.float32)}


def test_zero_init_reproduces_base_and_bound_holds() -> None:
    rng = np.random.default_rng(0)
    policy = ResidualPolicy(LinearBase(), ResidualConfig(action_scale=0.1))
    for _ in range(5):
        planned = rng.uniform(-0.8, 0.8, 4).astype(np.float32)
        assert np.array_equal(policy.step_action(history(rng), planned, 0), planned)
    # push the last layer far: the residual saturates at +-action_scale, executed actions stay in [-1, 1]
    with torch.no_grad():
        last = policy.net.actor.net[-1]
        last.bias.fill_(50.0)
    planned = np.array([0.0, 0.95, -0.5, 0.2], dtype=np.float32)
    out = policy.step_action(history(rng), planned, 1)
    assert np.allclose(out - planned, [0.1, 0.05, 0.1, 0.1], atol=1e-6)
    assert out.max() <= 1.0


def test_relabel_targets_are_demo_minus_base_with_reset_per_episode() -> None:
    rng = np.random.default_rng(1)
    base = LinearBase()
    ep = {"ee_pose": rng.standard_normal((5, 7)).astype(np.float32), "gripper": np.zeros((5, 1), np.float32),
          "action": rng.uniform(-1, 1, (5, 4)).astype(np.float32)}
    base.calls = 99  # stale state from an earlier episode must not leak in
    planned, target = relabel_residuals(base, ep)
    # chunks re-planned every 2 steps from the history padded with the first frame
    expected = np.empty((5, 4), np.float32)
    for t, call in zip(range(0, 5, 2), range(1, 4), strict=True):
        x = ep["ee_pose"][t][:4]
        chunk = np.stack([0.5 * np.tanh(x) + 0.01 * i + 0.1 * call for i in range(4)])
        expected[t : t + 2] = chunk[: min(2, 5 - t)]
    assert np.allclose(planned, expected, atol=1e-6)
    assert np.allclose(target, ep["action"] - expected, atol=1e-6)


def fixed_batch(n: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    def obs() -> dict:
        return {"ee_pose": torch.randn(n, 2, 7, generator=g), "gripper": torch.rand(n, 2, 1, generator=g),
                BASE_ACTION_KEY: torch.rand(n, 2, 4, generator=g) * 2 - 1}
    return {"obs": obs(), "next_obs": obs(), "action": torch.rand(n, 4, generator=g) * 2 - 1,
            "reward": (torch.rand(n, generator=g) < 0.3).float(), "discount": torch.full((n,), 0.97)}


def learner(seed: int = 0, warmup: int = 0) -> ResidualLearner:
    torch.manual_seed(seed)
    policy = ResidualPolicy(LinearBase(), ResidualConfig(hidden_dims=[32, 32]))
    crit = CriticConfig(n_heads=4, hidden_dims=[32, 32], lr=1e-3)
    return ResidualLearner(policy, LearnerSettings(critic=crit, critic_warmup_updates=warmup, actor_lr=1e-3, seed=seed))


def test_one_update_reduces_td_error_on_a_fixed_batch() -> None:
    lr = learner()
    batch = fixed_batch()
    before = lr.td_error(batch)
    lr.update(batch)
    assert lr.td_error(batch) < before


def test_actor_waits_for_critic_warmup_then_moves() -> None:
    lr = learner(warmup=3)
    batch = fixed_batch()
    w0 = lr.policy.net.actor.net[-1].weight.clone()
    for _ in range(3):
        assert "actor_loss" not in lr.update(batch)
    assert torch.equal(lr.policy.net.actor.net[-1].weight, w0)
    assert "actor_loss" in lr.update(batch)
    assert not torch.equal(lr.policy.net.actor.net[-1].weight, w0)


def test_resume_is_bit_exact(tmp_path) -> None:
    a = learner()
    for i in range(3):
        a.update(fixed_batch(seed=i))
    torch.save(a.state_dict(), tmp_path / "state.pt")
    for i in range(3, 6):
        a.update(fixed_batch(seed=i))
    b = learner(seed=5)  # different init: everything must come from the file
    b.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for i in range(3, 6):
        b.update(fixed_batch(seed=i))
    for (k, x), (_, y) in zip(a.state_dict()["critic"].items(), b.state_dict()["critic"].items(), strict=True):
        assert torch.equal(x, y), k
    for (k, x), (_, y) in zip(a.policy.net.state_dict().items(), b.policy.net.state_dict().items(), strict=True):
        assert torch.equal(x, y), k


def test_nan_batch_is_refused() -> None:
    batch = fixed_batch()
    batch["reward"][3] = float("nan")
    with pytest.raises(ValueError, match="reward"):
        learner().update(batch)


def test_bad_observation_key_is_named() -> None:
    with pytest.raises(ValueError, match="joint_vel"):
        ResidualPolicy(LinearBase(), ResidualConfig(lowdim_keys=["joint_vel"]))


def test_composite_round_trip_in_a_fresh_process(tmp_path) -> None:
    """A trained-looking residual (camera encoder included) saves as one file that load_policy rebuilds."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from robot_learning.policies.checkpoint import ModelPolicy
    from tests.unit.test_policy_models import _model, _obs_history

    policy = ResidualPolicy(ModelPolicy(_model("bc"), seed=1), ResidualConfig(cameras=["camera_front"], hidden_dims=[16]))
    with torch.no_grad():
        for p in policy.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    policy.save(tmp_path / "res.pt")
    obs = _obs_history()
    chunk = policy.predict_chunk(obs)
    want = np.stack([policy.step_action(obs, chunk[i], i) for i in range(3)])
    assert not np.allclose(want, chunk[:3])  # the residual acts
    code = ("import json, numpy as np, sys; from robot_learning.policies import load_policy; "
            "from tests.unit.test_policy_models import _obs_history; p = load_policy(sys.argv[1]); o = _obs_history(); "
            "c = p.predict_chunk(o); print(json.dumps(np.stack([p.step_action(o, c[i], i) for i in range(3)]).tolist()))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "res.pt")], capture_output=True, text=True,
                         cwd=root, check=True).stdout
    assert np.allclose(np.array(json.loads(out)), want, atol=1e-6)


def test_residual_on_a_wrapper_base_runs_the_base_hook_first() -> None:
    """A residual on a perturbed base sees (and at zero-init executes) the base's offset action; relabelling too."""
    from robot_learning.policies.perturbed import PerturbedPolicy

    offset = np.array([0.3, 0.0, -0.2, 0.0])
    biased = PerturbedPolicy(LinearBase(), offset=offset)
    policy = ResidualPolicy(biased, ResidualConfig())
    rng = np.random.default_rng(2)
    planned = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    assert np.allclose(policy.step_action(history(rng), planned, 0), planned + offset, atol=1e-6)
    assert np.allclose(policy.step_hook().step_action(history(rng), planned, 0), planned + offset, atol=1e-6)
    ep = {"ee_pose": rng.standard_normal((4, 7)).astype(np.float32), "gripper": np.zeros((4, 1), np.float32),
          "action": np.zeros((4, 4), np.float32)}
    plain, _ = relabel_residuals(LinearBase(), ep)
    shifted, target = relabel_residuals(biased, ep)
    assert np.allclose(shifted, np.clip(plain + offset, -1, 1), atol=1e-6)
    assert np.allclose(target, -shifted, atol=1e-6)


def test_from_scratch_drops_the_base_actions_and_relabels_demos_as_targets(tmp_path) -> None:
    """from_scratch=true: the base acts 0 (perturbed scale=0), the zero-init actor starts at 0, the demo is the target;
    a residual-sized bound or the pull towards the base is refused for it."""
    from robot_learning.policies.perturbed import PerturbedConfig, PerturbedPolicy
    from robot_learning.rl.finetune import load_config

    dropped = PerturbedPolicy(LinearBase(), PerturbedConfig(scale=0.0))
    policy = ResidualPolicy(dropped, ResidualConfig(action_scale=1.0))
    rng = np.random.default_rng(3)
    planned = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    assert np.allclose(policy.step_action(history(rng), planned, 0), 0.0)
    demo = rng.uniform(-0.9, 0.9, (4, 4)).astype(np.float32)
    ep = {"ee_pose": rng.standard_normal((4, 7)).astype(np.float32), "gripper": np.zeros((4, 1), np.float32),
          "action": demo}
    base_actions, target = relabel_residuals(dropped, ep)
    assert np.allclose(base_actions, 0.0) and np.allclose(target, demo, atol=1e-6)
    common = ["base=unused", f"out_dir={tmp_path}", "from_scratch=true"]
    cfg, _ = load_config([*common, "residual.action_scale=1.0", "residual_penalty=0"])
    assert cfg.from_scratch
    with pytest.raises(ValueError, match="from_scratch=true.*action_scale >= 1"):
        load_config([*common, "residual.action_scale=0.1", "residual_penalty=0"])
    with pytest.raises(ValueError, match="residual_penalty=0"):
        load_config([*common, "residual.action_scale=1.0"])


def test_demo_bc_needs_demos_and_a_non_negative_weight(tmp_path) -> None:
    from robot_learning.rl.finetune import load_config

    common = ["base=unused", f"out_dir={tmp_path}"]
    assert load_config([*common, "demo_bc=0.4", "demos=d.zarr"])[0].demo_bc == 0.4
    with pytest.raises(ValueError, match="demo_bc=0.4.*demos="):
        load_config([*common, "demo_bc=0.4"])
    with pytest.raises(ValueError, match="must be >= 0"):
        load_config([*common, "demo_bc=-1", "demos=d.zarr"])
    with pytest.raises(ValueError, match="demo_bc_decay_updates must be >= 0"):
        load_config([*common, "demo_bc=0.4", "demos=d.zarr", "demo_bc_decay_updates=-5"])
    assert load_config([*common, "demo_bc=0.4", "demos=d.zarr", "demo_bc_decay_updates=100"])[0] \
        .demo_bc_decay_updates == 100


def test_the_best_evaluated_policy_is_kept_and_ties_go_to_the_later_one(tmp_path) -> None:
    from types import SimpleNamespace

    from robot_learning.rl.finetune import Finetuner

    holder = SimpleNamespace(out=tmp_path, eval_rows=[], cfg=SimpleNamespace(keep_eval_policies=True))

    def evaluated(steps: int, rate: float) -> None:  # what _report does: policy.pt written, then kept
        (tmp_path / "policy.pt").write_text(f"policy at {steps}")
        row = {"env_steps": steps, "rate": rate}
        holder.eval_rows.append(row)
        Finetuner._keep_policy(holder, row)

    for steps, rate in [(0, 0.1), (100, 0.6), (200, 0.4), (300, 0.6), (400, 0.5)]:
        evaluated(steps, rate)
    assert (tmp_path / "policy_best.pt").read_text() == "policy at 300"
    assert sorted(p.name for p in (tmp_path / "policies").iterdir()) == [
        f"policy_{s}.pt" for s in (0, 100, 200, 300, 400)]
    assert (tmp_path / "policies" / "policy_200.pt").read_text() == "policy at 200"
    assert not list(tmp_path.glob("*.tmp*"))
