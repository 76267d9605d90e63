"""Policy networks, normalizer, encoder pieces and checkpoints at toy size (random tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_learning.policies import PolicySpec, build_model, load_policy
from robot_learning.policies.checkpoint import ModelPolicy, read_checkpoint
from robot_learning.policies.encoders import center_crop, random_crop
from robot_learning.policies.normalizer import Normalizer
from robot_learning.policies.unet import ConditionalUnet1D

SPEC = PolicySpec(obs_shapes={"camera_front": (16, 16, 3), "joint_pos": (4,)}, action_dim=3, n_obs_steps=2,
                  horizon=8, n_action_steps=4)
STATS = {"joint_pos": {"min": [-1.0] * 4, "max": [1.0] * 4}, "action": {"min": [-0.2, -0.2, -1.0], "max": [0.2, 0.2, 1.0]}}
TINY_ENC = {"width": 8, "keypoints": 4, "feature_dim": 8}
PARAMS = {
    "diffusion": {"encoder": TINY_ENC, "down_dims": [16, 32], "step_embed_dim": 16, "num_inference_steps": 4},
    "bc": {"encoder": TINY_ENC, "hidden_dims": [32]},
    "bc_gmm": {"encoder": TINY_ENC, "hidden_dims": [32], "head": "gmm", "n_modes": 3},
    "bc_gmm_shared": {"encoder": TINY_ENC, "hidden_dims": [32], "head": "gmm", "n_modes": 3, "std": "shared",
                      "mean_loss": "mse"},
}


def _model(name: str):
    torch.manual_seed(0)
    return build_model("bc" if name.startswith("bc") else name, PARAMS[name], SPEC, STATS)


def _batch(b: int = 4) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "obs": {"camera_front": torch.randint(0, 255, (b, 2, 16, 16, 3), dtype=torch.uint8, generator=g),
                "joint_pos": torch.rand(b, 2, 4, generator=g) * 2 - 1},
        "action": (torch.rand(b, 9, 3, generator=g) * 2 - 1) * torch.tensor([0.2, 0.2, 1.0]),
    }


def _obs_history() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"camera_front": rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8),
            "joint_pos": rng.uniform(-1, 1, (2, 4)).astype(np.float32)}


@pytest.mark.parametrize("name", ["diffusion", "bc", "bc_gmm", "bc_gmm_shared"])
def test_loss_backward_and_sampling_shapes(name: str) -> None:
    model = _model(name)
    loss = model(_batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    policy = ModelPolicy(model)
    chunk = policy.predict_chunk(_obs_history())
    assert chunk.shape == (8, 3) and np.isfinite(chunk).all()
    # actions come back in raw units, inside the training range
    assert np.all(np.abs(chunk) <= np.array([0.2, 0.2, 1.0]) + 1e-5)
    chunks = policy.sample_chunks(_obs_history(), 5)
    assert chunks.shape == (5, 8, 3)


def test_diffusion_samples_differ_and_seed_reproduces() -> None:
    policy = ModelPolicy(_model("diffusion"), seed=3)
    a = policy.sample_chunks(_obs_history(), 4)
    assert not np.allclose(a[0], a[1])  # k candidates are distinct samples
    policy.reseed(3)
    np.testing.assert_array_equal(policy.sample_chunks(_obs_history(), 4), a)


@pytest.mark.parametrize("sampler,steps", [("ddim", 3), ("dpmsolver++", 5), ("ddpm", 100)])
def test_diffusion_samplers(sampler: str, steps: int) -> None:
    policy = ModelPolicy(_model("diffusion"))
    policy.configure_inference(sampler=sampler, num_inference_steps=steps)
    assert np.isfinite(policy.predict_chunk(_obs_history())).all()
    with pytest.raises(ValueError, match="unknown sampler"):
        policy.configure_inference(sampler="euler")


def test_shared_std_gmm_fits_two_modes_not_their_average() -> None:
    """Same observation, two demonstrated chunks (+a / -a): samples land on the modes, not on 0."""
    model = _model("bc_gmm_shared").eval()
    batch = _batch(8)
    batch["obs"] = {k: v[:1].expand_as(v).clone() for k, v in batch["obs"].items()}
    sign = torch.tensor([1.0, -1.0] * 4)[:, None, None]
    batch["action"] = sign * torch.tensor([0.15, -0.1, 0.8]).expand(8, 9, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model(batch).backward()
        opt.step()
    obs = {k: v[:1] for k, v in batch["obs"].items()}
    with torch.no_grad():
        chunks = model.sample_actions(obs, k=64, generator=torch.Generator().manual_seed(0))[0, :, :, 2]
    first = chunks.mean(-1)  # z of each candidate, averaged over the chunk
    assert (first.abs() > 0.4).all(), first  # every candidate near one of the modes (+-0.8), none at 0
    assert 0.2 < (first > 0).float().mean() < 0.8  # both modes sampled


def test_bc_learns_a_fixed_batch() -> None:
    model = _model("bc").eval()  # centre crop: a fixed input to memorise
    batch = _batch(8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(batch).item()
    for _ in range(130):
        opt.zero_grad()
        loss = model(batch)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


@pytest.mark.parametrize("name", ["diffusion", "bc_gmm", "bc_gmm_shared"])
def test_checkpoint_round_trip(tmp_path, name: str) -> None:
    model = _model(name)
    policy = ModelPolicy(model, seed=7)
    expected = policy.predict_chunk(_obs_history())
    path = tmp_path / "policy.pt"
    policy.save(path)
    # plain data only: loads with weights_only=True and carries spec, config and normalizer
    raw = torch.load(path, weights_only=True)
    assert raw["spec"] == SPEC.to_dict() and raw["normalizer"]["action"]["max"] == [0.2, 0.2, 1.0]
    loaded = load_policy(path, device="cpu", seed=7)
    assert loaded.spec == SPEC
    np.testing.assert_allclose(loaded.predict_chunk(_obs_history()), expected, atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_load_policy_overrides_sampler(tmp_path) -> None:
    ModelPolicy(_model("diffusion")).save(tmp_path / "p.pt")
    policy = load_policy(tmp_path / "p.pt", sampler="ddpm", num_inference_steps=20)
    assert policy.model.sampler_name == "ddpm" and policy.model.num_inference_steps == 20


def test_bad_checkpoints(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_policy(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an rlstack policy checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable policy checkpoint"):
        load_policy(tmp_path / "junk.pt")


def test_observation_mismatch_errors_name_the_key() -> None:
    policy = ModelPolicy(_model("bc"))
    obs = _obs_history()
    with pytest.raises(ValueError, match="key 'joint_pos': expected shape \\(2, 4\\), got \\(2, 5\\)"):
        policy.predict_chunk({**obs, "joint_pos": np.zeros((2, 5), np.float32)})
    with pytest.raises(ValueError, match="missing key 'camera_front'"):
        policy.predict_chunk({"joint_pos": obs["joint_pos"]})
    with pytest.raises(ValueError, match="image key 'camera_front' must be uint8"):
        policy.predict_chunk({**obs, "camera_front": obs["camera_front"].astype(np.float32)})
    with pytest.raises(ValueError, match="'joint_pos' contains NaN"):
        policy.predict_chunk({**obs, "joint_pos": np.full((2, 4), np.nan, np.float32)})


def test_batch_mismatch_error() -> None:
    batch = _batch()
    batch["action"] = batch["action"][:, :8]
    with pytest.raises(ValueError, match="action: expected \\(B, 9, 3\\)"):
        _model("diffusion")(batch)


def test_normalizer_maps_range_and_constant_dims() -> None:
    norm = Normalizer({"x": {"min": [0.0, 5.0, -2.0], "max": [10.0, 5.0, 2.0]}})
    x = torch.tensor([[0.0, 5.0, -2.0], [10.0, 5.0, 2.0], [5.0, 5.0, 0.0]])
    y = norm.normalize("x", x)
    torch.testing.assert_close(y, torch.tensor([[-1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(norm.unnormalize("x", y), x)
    # a model output anywhere in [-1, 1] comes back inside the data's range: a constant dim as its constant
    out = norm.unnormalize("x", torch.tensor([[1.0, 0.7, -1.0], [-1.0, -1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[10.0, 5.0, -2.0], [0.0, 5.0, 2.0]]))
    assert "constant_x" not in norm.state_dict()  # derived from the stats: old checkpoints load unchanged
    with pytest.raises(ValueError, match="key 'y' contain NaN"):
        Normalizer({"y": {"min": [float("nan")], "max": [1.0]}})
    with pytest.raises(KeyError, match="no statistics for key 'z'"):
        norm.normalize("z", x)


def test_random_crop_takes_real_windows() -> None:
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    out = random_crop(images, 6, 7, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 6, 7)
    for n in range(2):
        top = int(out[n, 0, 0, 0] // 10 % 10)
        left = int(out[n, 0, 0, 0] % 10)
        torch.testing.assert_close(out[n], images[n, :, top : top + 6, left : left + 7])
    torch.testing.assert_close(center_crop(images, 6, 6), images[:, :, 2:8, 2:8])


def test_unet_shapes_and_horizon_check() -> None:
    net = ConditionalUnet1D(action_dim=3, global_cond_dim=5, down_dims=(8, 16, 32), step_embed_dim=8)
    out = net(torch.randn(2, 12, 3), torch.tensor([1, 50]), torch.randn(2, 5))
    assert out.shape == (2, 12, 3)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 10, 3), torch.tensor(1), torch.randn(2, 5))


def test_unknown_policy_type_and_bad_params() -> None:
    with pytest.raises(ValueError, match="unknown policy type 'vae'"):
        build_model("vae", {}, SPEC, STATS)
    with pytest.raises(ValueError, match="policy.params"):
        build_model("diffusion", {"down_dimz": [8]}, SPEC, STATS)
    with pytest.raises(ValueError, match="lack the action key"):
        build_model("bc", PARAMS["bc"], SPEC, {"joint_pos": STATS["joint_pos"]})


def test_unet_factored_film_equals_each_blocks_own_layer() -> None:
    """The U-Net computes all FiLM layers as one product split by input; it must equal Linear(Mish(cond)) per block."""
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=3, global_cond_dim=7, down_dims=(8, 16), n_groups=2, step_embed_dim=8).eval()
    for p in net.parameters():  # non-trivial weights everywhere (zero-initialised biases would hide an offset error)
        torch.nn.init.normal_(p, std=0.3)
    t = torch.tensor([3, 71])
    g = torch.randn(2, 7)
    cond = torch.cat([net.step_embed(t), g], dim=-1)
    want = []
    for blk in net.film_blocks():
        scale, shift = blk.film(cond).chunk(2, dim=1)
        want.append(torch.cat([1 + scale, shift], dim=1))
    got = net.step_film(t) + net.obs_film(g)
    torch.testing.assert_close(got, torch.cat(want, dim=1), rtol=1e-5, atol=1e-5)
    assert len(net.film_blocks()) == 2 * 2 + 2 + 2 * 1


def test_dpmsolver_clips_its_x0_like_diffusers_thresholding_capped_at_one() -> None:
    """Without clipping, DPM-Solver++'s first step (almost no signal left) saturates every chunk."""
    from diffusers import DPMSolverMultistepScheduler

    from robot_learning.policies.diffusion import ClippedDPMSolver

    cfg = {"num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2", "thresholding": True, "sample_max_value": 1.0}
    ours, ref = ClippedDPMSolver(**cfg), DPMSolverMultistepScheduler(**cfg)
    x0 = torch.randn(4, 16, 5) * 3
    torch.testing.assert_close(ours._threshold_sample(x0), ref._threshold_sample(x0))
    model = build_model("diffusion", {"sampler": "dpmsolver++"}, SPEC, STATS)
    assert isinstance(model.inference_scheduler, ClippedDPMSolver) and model.inference_scheduler.config.thresholding


@pytest.mark.parametrize("field,value", [("head", "flow"), ("std", "tied"), ("mean_loss", "l1"), ("n_modes", 0), ("sample_std_scale", -1.0)])
def test_bc_rejects_bad_head_settings(field: str, value: object) -> None:
    params = {**PARAMS["bc_gmm_shared"], field: value}
    with pytest.raises(ValueError, match=f"policy.params.{field}"):
        build_model("bc", params, SPEC, STATS)


def test_gmm_sample_std_scale_zero_samples_mode_means() -> None:
    torch.manual_seed(0)
    model = build_model("bc", {**PARAMS["bc_gmm_shared"], "sample_std_scale": 0.0}, SPEC, STATS).eval()
    obs = {k: v[:1] for k, v in _batch(1)["obs"].items()}
    with torch.no_grad():
        chunks = model.sample_actions(obs, k=32, generator=torch.Generator().manual_seed(0))[0]
    assert len({tuple(c.flatten().tolist()) for c in chunks}) <= 3  # at most n_modes distinct candidates
