"""Shared RL parts: critic ensemble, subset-min targets, Polyak targets, TD3/SAC actor updates, UTD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_learning.rl.actors import (
    DeterministicActor,
    TanhGaussianActor,
    Temperature,
    UTDSchedule,
    sac_actor_loss,
    td3_actor_loss,
    td3_target_action,
)
from robot_learning.rl.critics import (
    BatchedLayerNorm,
    BatchedLinear,
    CriticConfig,
    CriticEnsemble,
    make_target,
    polyak_update,
    subset_min,
    td_loss,
    td_target,
)

F_DIM, A_DIM, B = 6, 2, 64


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"f": torch.randn(B, F_DIM, generator=g), "a": torch.rand(B, A_DIM, generator=g) * 2 - 1,
            "f2": torch.randn(B, F_DIM, generator=g), "r": torch.rand(B, generator=g),
            "d": torch.where(torch.rand(B, generator=g) < 0.2, 0.0, 0.99)}


def test_ensemble_heads_are_independent_networks_computed_in_one_pass() -> None:
    torch.manual_seed(0)
    critic = CriticEnsemble(F_DIM, A_DIM, CriticConfig(n_heads=5, hidden_dims=[32, 32]))
    b = _batch()
    q = critic(b["f"], b["a"])
    assert q.shape == (5, B) and not torch.allclose(q[0], q[1])  # heads differ
    # head 3 alone, as a plain MLP with its own slice of the batched weights
    x = torch.cat([b["f"], b["a"]], -1)
    layers = list(critic.net)
    for layer in layers:
        if isinstance(layer, BatchedLinear):
            x = x @ layer.weight[3] + layer.bias[3]
        elif isinstance(layer, BatchedLayerNorm):
            x = torch.nn.functional.layer_norm(x, x.shape[-1:]) * layer.weight[3] + layer.bias[3]
        else:
            x = layer(x)
    torch.testing.assert_close(q[3], x.squeeze(-1))
    with pytest.raises(ValueError, match="target_subset"):
        CriticEnsemble(F_DIM, A_DIM, CriticConfig(n_heads=2, target_subset=3))
    with pytest.raises(ValueError, match="critic expects"):
        critic(b["f"][:, :3], b["a"])


def test_subset_min_takes_the_min_over_a_random_subset() -> None:
    q = torch.tensor([[1.0, 5.0], [2.0, 0.0], [3.0, 7.0], [4.0, 9.0]])
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        out = subset_min(q, 2, g)
        pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
        assert any(torch.equal(out, torch.minimum(q[i], q[j])) for i, j in pairs)
        seen.add(tuple(out.tolist()))
    assert len(seen) > 2  # subsets really vary
    assert subset_min(q, 4).tolist() == [1.0, 0.0]


def test_one_critic_update_reduces_the_td_error_on_a_fixed_batch_and_terminal_rows_do_not_bootstrap() -> None:
    torch.manual_seed(0)
    critic = CriticEnsemble(F_DIM, A_DIM, CriticConfig(n_heads=4, hidden_dims=[64, 64]))
    target_net = make_target(critic)
    b = _batch()
    g = torch.Generator().manual_seed(1)
    target = td_target(target_net, b["f2"], b["a"], b["r"], b["d"], generator=g)
    terminal = b["d"] == 0
    torch.testing.assert_close(target[terminal], b["r"][terminal])  # discount 0: reward only
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    before = td_loss(critic, b["f"], b["a"], target).item()
    for _ in range(5):
        opt.zero_grad()
        td_loss(critic, b["f"], b["a"], target).backward()
        opt.step()
    after = td_loss(critic, b["f"], b["a"], target).item()
    assert after < 0.8 * before
    assert all(not p.requires_grad for p in target_net.parameters())


def test_polyak_moves_the_target_by_tau() -> None:
    src, tgt = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    w0 = tgt.weight.detach().clone()
    polyak_update(tgt, src, 0.25)
    torch.testing.assert_close(tgt.weight, 0.75 * w0 + 0.25 * src.weight.detach())
    polyak_update(tgt, src, 1.0)
    torch.testing.assert_close(tgt.weight, src.weight.detach())
    with pytest.raises(ValueError, match="tau"):
        polyak_update(tgt, src, 0.0)


def test_polyak_on_a_parameterless_module_moves_its_buffers_and_refuses_mismatches() -> None:
    class Stats(torch.nn.Module):
        def __init__(self, v: float) -> None:
            super().__init__()
            self.register_buffer("mean", torch.full((3,), v))
            self.register_buffer("count", torch.tensor(int(v)))

    tgt, src = Stats(0.0), Stats(4.0)
    polyak_update(tgt, src, 0.25)  # no parameters at all (e.g. features of low-dim keys only)
    torch.testing.assert_close(tgt.mean, torch.full((3,), 1.0))
    assert int(tgt.count) == 4  # integer buffers are copied
    polyak_update(torch.nn.Identity(), torch.nn.Identity(), 0.5)  # nothing to move, no error
    with pytest.raises(ValueError, match="differ"):
        polyak_update(torch.nn.Identity(), torch.nn.Linear(2, 2), 0.5)


def test_td3_and_sac_actor_updates_raise_q() -> None:
    torch.manual_seed(0)
    critic = CriticEnsemble(F_DIM, A_DIM, CriticConfig(n_heads=3, hidden_dims=[32])).requires_grad_(False)
    f = _batch()["f"]
    for actor, loss_fn in [(DeterministicActor(F_DIM, A_DIM, (32,)), lambda a: td3_actor_loss(a, critic, f)),
                           (TanhGaussianActor(F_DIM, A_DIM, (32,)),
                            lambda a: sac_actor_loss(a, critic, f, torch.tensor(0.0))[0])]:
        opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
        before = loss_fn(actor).item()
        for _ in range(20):
            opt.zero_grad()
            loss_fn(actor).backward()
            opt.step()
        assert loss_fn(actor).item() < before


def test_residual_actor_starts_at_zero_and_respects_its_bound() -> None:
    actor = DeterministicActor(F_DIM, A_DIM, (32,), action_scale=0.1, zero_init_last=True)
    f = _batch()["f"]
    assert torch.count_nonzero(actor(f)) == 0
    torch.nn.init.normal_(actor.net[-1].weight, std=100.0)
    assert actor(f).abs().max() <= 0.1 + 1e-6
    base = torch.full((B, A_DIM), 0.95)
    a = td3_target_action(actor, f, noise_std=0.2, base_action=base)
    assert a.max() <= 1.0 and (a - base).abs().max() <= 0.1 + 1e-6


def test_tanh_gaussian_log_prob_matches_a_monte_carlo_density() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(1, 1, (8,), action_scale=0.5)
    f = torch.zeros(20000, 1)
    a, logp = actor(f)
    assert a.abs().max() < 0.5
    hist, edges = np.histogram(a.detach().numpy().ravel(), bins=40, density=True)
    centers = torch.tensor((edges[:-1] + edges[1:]) / 2, dtype=torch.float32)
    # the density at sampled points should agree with the histogram where the mass is
    order = torch.argsort(a.ravel())
    dens = logp.exp()[order].detach().numpy()
    pos = np.searchsorted(a.ravel()[order].detach().numpy(), centers.numpy())
    pos = np.clip(pos, 0, len(dens) - 1)
    mask = hist > 0.2 * hist.max()
    np.testing.assert_allclose(dens[pos][mask], hist[mask], rtol=0.25)


def test_temperature_and_utd_schedule() -> None:
    temp = Temperature(2, init=0.2)
    low_entropy_logp = torch.full((8,), 5.0)  # entropy far below target: alpha must grow
    temp.loss(low_entropy_logp).backward()
    assert temp.log_alpha.grad < 0
    utd = UTDSchedule(0.5)
    assert [utd.updates_for(1) for _ in range(4)] == [0, 1, 0, 1]
    assert UTDSchedule(4).updates_for(3) == 12
    with pytest.raises(ValueError, match="utd"):
        UTDSchedule(0)


def test_shared_rl_config_validates_and_names_bad_keys() -> None:
    from omegaconf import OmegaConf

    from robot_learning.config import config_dir
    from robot_learning.rl.config import validate_parts

    cfg = OmegaConf.load(config_dir() / "rl" / "parts.yaml")
    parts = validate_parts(cfg)
    assert parts.critic.n_heads == 10 and parts.replay.ratios == {"demo": 0.5, "online": 0.5}
    with pytest.raises(ValueError, match="replay.reward: 'dense'"):
        validate_parts(OmegaConf.merge(cfg, {"replay": {"reward": "dense"}}))
    with pytest.raises(ValueError, match="n_headz"):
        validate_parts(OmegaConf.merge(cfg, {"critic": {"n_headz": 3}}))
    with pytest.raises(ValueError, match="target_subset"):
        validate_parts(OmegaConf.merge(cfg, {"critic": {"n_heads": 1}}))


def test_learner_resume_is_bit_exact(tmp_path) -> None:
    """Kill after k updates, restore the train state, continue: the same weights as an uninterrupted run."""
    from robot_learning.train.checkpointing import load_train_state, save_train_state

    def make():
        torch.manual_seed(0)
        critic = CriticEnsemble(F_DIM, A_DIM, CriticConfig(n_heads=3, hidden_dims=[16]))
        return critic, make_target(critic), torch.optim.Adam(critic.parameters(), lr=1e-3), np.random.default_rng(1)

    data = _batch()

    def update(critic, target, opt, rng) -> None:
        idx = torch.from_numpy(rng.integers(0, B, 16))
        noise = torch.randn(16, A_DIM) * 0.1  # global torch RNG: restored too
        y = td_target(target, data["f2"][idx], data["a"][idx] + noise, data["r"][idx], data["d"][idx])
        opt.zero_grad()
        td_loss(critic, data["f"][idx], data["a"][idx], y).backward()
        opt.step()
        polyak_update(target, critic, 0.1)

    ref = make()
    for _ in range(8):
        update(*ref)
    run = make()
    for _ in range(5):
        update(*run)
    save_train_state(tmp_path / "state.pt", 5, {"critic": run[0], "target": run[1], "opt": run[2]}, {"replay": run[3]},
                     extra={"env_steps": 50})
    for _ in range(2):
        update(*run)  # work after the checkpoint that the kill loses
    resumed = make()
    info = load_train_state(tmp_path / "state.pt", {"critic": resumed[0], "target": resumed[1], "opt": resumed[2]},
                            {"replay": resumed[3]})
    assert info == {"step": 5, "extra": {"env_steps": 50}}
    for _ in range(3):
        update(*resumed)
    for a, b in zip(ref[0].state_dict().values(), resumed[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ref[1].state_dict().values(), resumed[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no state for 'actor'"):
        load_train_state(tmp_path / "state.pt", {"actor": resumed[0]})
