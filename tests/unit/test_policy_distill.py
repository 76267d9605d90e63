"""One-step distillation: the student starts as its teacher, learns the teacher sampler's chunks,
and runs (eager and compiled) with one U-Net call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_learning.policies import PolicySpec, build_model, load_policy
from robot_learning.policies.checkpoint import ModelPolicy
from tests.unit.test_policy_models import PARAMS, SPEC, STATS, _batch, _model, _obs_history


def _teacher(tmp_path) -> str:
    path = tmp_path / "teacher.pt"
    ModelPolicy(_model("diffusion")).save(path)
    return str(path)


def test_student_starts_as_the_teacher_and_adopts_its_architecture(tmp_path) -> None:
    teacher = _teacher(tmp_path)
    # stats and architecture given here are wrong on purpose: the teacher's win
    other_stats = {"joint_pos": {"min": [-5.0] * 4, "max": [5.0] * 4}, "action": {"min": [-9.0] * 3, "max": [9.0] * 3}}
    student = build_model("diffusion_onestep", {"teacher": teacher, "down_dims": [8, 8]}, SPEC, other_stats)
    assert student.config.down_dims == PARAMS["diffusion"]["down_dims"] and student.sampler_name == "onestep"
    assert student.normalizer.stats["action"]["max"] == [0.2, 0.2, 1.0]
    ref = _model("diffusion").state_dict()
    for k, v in student.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # the teacher is no submodule: not in the weights, not in the optimizer's parameters
    assert not any(k.startswith("_teacher") for k in student.state_dict())


def test_distillation_learns_the_teacher_sampler_and_runs_in_one_call(tmp_path) -> None:
    teacher_path = _teacher(tmp_path)
    torch.manual_seed(0)
    student = build_model("diffusion_onestep", {"teacher": teacher_path}, SPEC, STATS).eval()  # no crop jitter
    batch = _batch(8)
    gen = torch.Generator().manual_seed(1)
    held_out_noise = torch.randn(8, SPEC.horizon, SPEC.action_dim, generator=gen)

    def gap() -> float:
        """Mean squared gap between the one-call chunk and the teacher's DDIM chunk on fixed noise."""
        with torch.no_grad():
            teacher = student.teacher(torch.device("cpu"))
            target = teacher.denoise(held_out_noise, teacher.encoder(batch["obs"])).clamp(-1, 1)
            t = torch.full((8,), student.config.num_train_timesteps - 1)
            return torch.mean((student.unet(held_out_noise, t, student.encoder(batch["obs"])) - target) ** 2).item()

    before = gap()
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3)
    for _ in range(80):
        opt.zero_grad()
        student(batch).backward()
        opt.step()
    after = gap()
    assert after < 0.5 * before, (before, after)

    path = tmp_path / "student.pt"
    ModelPolicy(student.eval()).save(path)
    (tmp_path / "teacher.pt").unlink()  # inference must not need the teacher
    eager = load_policy(path, inference_backend="eager", seed=3)
    compiled = load_policy(path, inference_backend="onnxruntime", seed=3)
    assert eager.model.num_inference_steps == 1
    calls = []
    hook = eager.model.unet.final.register_forward_hook(lambda *a: calls.append(1))  # once per U-Net pass
    a = eager.predict_chunk(_obs_history())
    hook.remove()
    assert len(calls) == 1 and a.shape == (8, 3)
    np.testing.assert_allclose(compiled.predict_chunk(_obs_history()), a, atol=1e-4)
    assert compiled.sample_chunks(_obs_history(), 4).shape == (4, 8, 3)


def test_bad_teachers(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="teacher checkpoint 'nope.pt' not found"):
        build_model("diffusion_onestep", {"teacher": "nope.pt"}, SPEC, STATS)(_batch())
    bc = tmp_path / "bc.pt"
    ModelPolicy(_model("bc")).save(bc)
    with pytest.raises(ValueError, match="is a 'bc' policy, not a diffusion policy"):
        build_model("diffusion_onestep", {"teacher": str(bc)}, SPEC, STATS)
    other = PolicySpec(obs_shapes=SPEC.obs_shapes, action_dim=3, n_obs_steps=2, horizon=16, n_action_steps=4)
    with pytest.raises(ValueError, match="horizon: checkpoint 8, policy config and store 16"):
        build_model("diffusion_onestep", {"teacher": _teacher(tmp_path)}, other, STATS)
    with pytest.raises(ValueError, match="needs a distilled policy"):
        _model("diffusion").configure_inference(sampler="onestep")
