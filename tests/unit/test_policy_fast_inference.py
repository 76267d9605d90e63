"""Compiled inference backends and the per-frame feature cache of the diffusion policy, against the
eager reference, at toy size (real onnxruntime / TorchScript graphs, no mocks)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from robot_learning.policies import PolicySpec, build_model, load_policy
from robot_learning.policies import fast_inference as fi
from robot_learning.policies.checkpoint import ModelPolicy
from robot_learning.policies.unet import ConditionalUnet1D

SPEC = PolicySpec(obs_shapes={"camera_front": (32, 32, 3), "camera_wrist": (24, 24, 3), "joint_pos": (4,)},
                  action_dim=3, n_obs_steps=2, horizon=8, n_action_steps=4)
STATS = {"joint_pos": {"min": [-1.0] * 4, "max": [1.0] * 4}, "action": {"min": [-0.2, -0.2, -1.0], "max": [0.2, 0.2, 1.0]}}
PARAMS = {"encoder": {"width": 8, "keypoints": 4, "feature_dim": 8}, "down_dims": [16, 32], "step_embed_dim": 16,
          "num_inference_steps": 4}
ATOL = 1e-4


def _policy(backend: str, cache: bool = True, seed: int = 0) -> ModelPolicy:
    torch.manual_seed(0)
    model = build_model("diffusion", {**PARAMS, "inference_backend": backend, "feature_cache": cache}, SPEC, STATS)
    return ModelPolicy(model, seed=seed)


def _frames(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"camera_front": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
             "camera_wrist": rng.integers(0, 255, (24, 24, 3), dtype=np.uint8),
             "joint_pos": rng.uniform(-1, 1, 4).astype(np.float32)} for _ in range(n)]


def _history(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def _compiled(runner: object) -> bool:
    """Whether a runner is a compiled graph rather than the eager module it was built from."""
    return not isinstance(runner, (fi.CameraGraph, fi.DenoiseLoop, ConditionalUnet1D))


@pytest.fixture
def eager() -> ModelPolicy:
    return _policy("eager", cache=False)


@pytest.fixture(scope="module")
def compiled() -> dict[str, ModelPolicy]:
    """One policy per compiled backend, shared so that each camera graph is built once."""
    return {"onnxruntime": _policy("onnxruntime"), "torchscript": _policy("torchscript")}


@pytest.mark.parametrize("backend,sampler,steps", [
    ("onnxruntime", "ddim", 4), ("onnxruntime", "dpmsolver++", 5), ("onnxruntime", "ddpm", 12),
    ("torchscript", "ddim", 4),
])
def test_backend_matches_eager(eager: ModelPolicy, compiled: dict[str, ModelPolicy], backend: str, sampler: str,
                               steps: int) -> None:
    fast = compiled[backend]
    obs = _history(_frames(2))
    for p in (eager, fast):
        p.configure_inference(sampler=sampler, num_inference_steps=steps)
    for call in range(3 if backend == "torchscript" else 2):  # torchscript re-optimizes in its first runs
        eager.reseed(call)
        fast.reseed(call)
        np.testing.assert_allclose(fast.predict_chunk(obs), eager.predict_chunk(obs), atol=ATOL)
        # K candidate chunks in one batch (a different batch size than the graph was built with)
        np.testing.assert_allclose(fast.sample_chunks(obs, 5), eager.sample_chunks(obs, 5), atol=ATOL)
    engine = fast.model.inference_engine()
    assert engine.backend == backend
    runner, whole_loop = engine._sampler()
    assert whole_loop == (sampler != "ddpm") and _compiled(runner)
    assert all(_compiled(r) for r in engine.cameras.values())


def test_auto_picks_onnxruntime_on_cpu() -> None:
    assert fi.resolve_backend("auto", torch.device("cpu")) == "onnxruntime"
    assert fi.resolve_backend("auto", torch.device("cuda")) == "eager"
    with pytest.raises(ValueError, match="inference_backend: unknown 'tensorrt'"):
        fi.resolve_backend("tensorrt", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown inference_backend 'fast'"):
        _policy("eager").configure_inference(inference_backend="fast")
    with pytest.raises(ValueError, match="inference_backend"):
        build_model("diffusion", {**PARAMS, "inference_backend": 3.5}, SPEC, STATS).inference_engine()


def test_feature_cache_is_exact_and_encodes_only_new_frames(eager: ModelPolicy) -> None:
    fast = _policy("onnxruntime", cache=True)
    frames = _frames(6, seed=1)
    engine = fast.model.inference_engine()
    cache = engine.cache
    assert cache is not None
    for i in range(1, 6):  # re-plan every step: the older frame of each history was the newer one before
        obs = _history(frames[i - 1 : i + 1])
        eager.reseed(i)
        fast.reseed(i)
        misses = cache.misses
        np.testing.assert_allclose(fast.predict_chunk(obs), eager.predict_chunk(obs), atol=ATOL)
        assert cache.misses - misses == (4 if i == 1 else 2)  # 2 cameras x (2 frames first, then 1 new)
    # one changed pixel is a different frame, never a stale hit
    edited = _history(frames[4:6])
    edited["camera_front"][1, 3, 3, 0] ^= 1
    eager.reseed(9)
    fast.reseed(9)
    np.testing.assert_allclose(fast.predict_chunk(edited), eager.predict_chunk(edited), atol=ATOL)
    # a padded history (the first frame twice, as at an episode start) encodes that frame once
    fast.reset()
    misses = cache.misses
    fast.predict_chunk(_history([frames[0], frames[0]]))
    assert cache.misses - misses == 2  # reset() emptied the cache: 1 frame per camera
    assert engine is fast.model.inference_engine()  # reset keeps the compiled graphs


def test_rebuilds_when_weights_change(eager: ModelPolicy) -> None:
    fast = _policy("onnxruntime")
    obs = _history(_frames(2, seed=2))
    fast.predict_chunk(obs)
    first = fast.model.inference_engine()
    torch.manual_seed(5)
    other = build_model("diffusion", PARAMS, SPEC, STATS).state_dict()
    fast.model.load_state_dict(other)
    ref = _policy("eager", cache=False)
    ref.model.load_state_dict(other)
    fast.reseed(1)
    ref.reseed(1)
    np.testing.assert_allclose(fast.predict_chunk(obs), ref.predict_chunk(obs), atol=ATOL)
    assert fast.model.inference_engine() is not first


def test_falls_back_to_eager_with_a_warning(monkeypatch, caplog, eager: ModelPolicy) -> None:
    obs = _history(_frames(2, seed=3))
    monkeypatch.setattr(fi, "onnxruntime_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=fi.__name__):
        fast = _policy("onnxruntime")
        eager.reseed(0)
        np.testing.assert_allclose(fast.predict_chunk(obs), eager.predict_chunk(obs), atol=ATOL)
    assert fast.model.inference_engine().backend == "eager"
    assert "onnxruntime/onnx are not installed" in caplog.text
    monkeypatch.undo()

    def broken(*_args, **_kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(fi, "compile_module", broken)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=fi.__name__):
        fast = _policy("onnxruntime")
        eager.reseed(0)
        np.testing.assert_allclose(fast.predict_chunk(obs), eager.predict_chunk(obs), atol=ATOL)
    assert "exporter exploded" in caplog.text and "using eager" in caplog.text


def test_graph_that_disagrees_with_eager_is_refused(caplog) -> None:
    # 16 px images leave a 1 x 1 spatial-softmax map, where the exported linspace divides by zero
    # (NaN in onnxruntime); the build check must catch it and keep the eager encoder
    spec = PolicySpec(obs_shapes={"camera_front": (16, 16, 3), "joint_pos": (4,)}, action_dim=3, horizon=8)
    torch.manual_seed(0)
    fast = ModelPolicy(build_model("diffusion", {**PARAMS, "inference_backend": "onnxruntime"}, spec, STATS))
    torch.manual_seed(0)
    ref = ModelPolicy(build_model("diffusion", {**PARAMS, "inference_backend": "eager"}, spec, STATS))
    rng = np.random.default_rng(0)
    obs = {"camera_front": rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8),
           "joint_pos": rng.uniform(-1, 1, (2, 4)).astype(np.float32)}
    with caplog.at_level(logging.WARNING, logger=fi.__name__):
        np.testing.assert_allclose(fast.predict_chunk(obs), ref.predict_chunk(obs), atol=ATOL)
    assert "camera 'camera_front' encoder" in caplog.text and "differs from eager by nan" in caplog.text
    assert not _compiled(fast.model.inference_engine().cameras["camera_front"])


def test_checkpoint_without_backend_field_loads_with_auto(tmp_path) -> None:
    policy = _policy("eager", cache=False)
    path = tmp_path / "p.pt"
    policy.save(path)
    raw = torch.load(path, weights_only=True)
    for key in ("inference_backend", "feature_cache"):  # as written before these fields existed
        del raw["policy_config"][key]
    torch.save(raw, path)
    loaded = load_policy(path)
    assert loaded.model.inference_backend == "auto" and loaded.model.config.feature_cache
    obs = _history(_frames(2, seed=4))
    policy.reseed(0)
    np.testing.assert_allclose(loaded.predict_chunk(obs), policy.predict_chunk(obs), atol=ATOL)
    assert load_policy(path, inference_backend="eager").model.inference_backend == "eager"
