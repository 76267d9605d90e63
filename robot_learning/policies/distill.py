"""One-step diffusion policy by distillation: a student U-Net learns to map noise straight to the
chunk that its teacher's deterministic sampler (DDIM-10 by default) reaches from the same noise.

This is direct output distillation (Luhman & Luhman 2021, the simplest member of the family that
consistency distillation and RL-100's one-step policy belong to): a deterministic sampler is a fixed
function noise -> chunk, so one network call can regress it. The student starts as a copy of the
teacher (same architecture, weights, normalizer) and is trained by the ordinary training loop, so
it gets EMA, checkpoints, exact resume and DDP like any other policy:

    rlstack train policy=diffusion_onestep policy.params.teacher=runs/lift_dp/policy.pt \\
        data.store=data/lift.zarr out_dir=runs/lift_dp_1step

The teacher's U-Net predicts noise, the student's the chunk itself, so the first few hundred steps
mostly re-learn the output (loss ~0.8 -> ~0.01 on lift); from then on it refines the mapping.

The student's checkpoint is self-contained (``sampler: onestep``); the teacher file is read only
when the student is trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from robot_learning.config import to_dataclass
from robot_learning.policies.base import PolicySpec, check_spec_matches
from robot_learning.policies.diffusion import ONE_STEP, DiffusionConfig, DiffusionModel
from robot_learning.policies.registry import register_policy

# the student's own inference settings; everything else (architecture, schedule) is the teacher's
INFERENCE_FIELDS = ("sampler", "num_inference_steps", "inference_backend", "feature_cache")


@dataclass
class OneStepConfig(DiffusionConfig):
    """A distilled diffusion policy: the teacher's hyper-parameters plus the teacher's path."""

    teacher: str = ""  # diffusion checkpoint to distil (needed for training only)
    sampler: str = ONE_STEP
    num_inference_steps: int = 1


@register_policy("diffusion_onestep")
class OneStepDiffusionModel(DiffusionModel):
    """A diffusion policy whose U-Net, at the last timestep, returns the teacher sampler's chunk."""

    config_cls = OneStepConfig
    one_step_trained = True

    def __init__(self, spec: PolicySpec, config: OneStepConfig, stats: dict[str, Any]) -> None:
        teacher = _read_teacher(config.teacher, spec) if config.teacher and Path(config.teacher).is_file() else None
        if teacher is not None:
            # the student is the teacher's network: adopt its architecture and normalizer
            own = {k: getattr(config, k) for k in ("teacher", *INFERENCE_FIELDS)}
            arch = {k: v for k, v in teacher["policy_config"].items() if k not in INFERENCE_FIELDS}
            config = to_dataclass({**arch, **own}, OneStepConfig, where=f"teacher {config.teacher}")
            stats = teacher["normalizer"]
        super().__init__(spec, config, stats)
        if teacher is not None:
            # start from the teacher's weights; a resumed run or a loaded checkpoint overwrites them next
            self.load_state_dict(teacher["state_dict"])
        object.__setattr__(self, "_teacher_ckpt", teacher)  # plain data, not a submodule
        object.__setattr__(self, "_teacher", None)

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (policy worker processes) leave the teacher behind: inference does not need it."""
        state = super().__getstate__()
        state["_teacher"] = None
        state["_teacher_ckpt"] = None
        return state

    def teacher(self, device: torch.device) -> DiffusionModel:
        """The frozen teacher on ``device`` (kept out of this module's weights and checkpoints)."""
        if self._teacher_ckpt is None:
            raise FileNotFoundError(
                f"policy.params.teacher: teacher checkpoint '{self.config.teacher}' not found "
                "(a one-step policy is trained from a diffusion checkpoint)"
            )
        if self._teacher is None:
            from robot_learning.policies.checkpoint import model_from_checkpoint

            teacher = model_from_checkpoint(self._teacher_ckpt)
            teacher.configure_inference(inference_backend="eager")  # batched targets run eagerly
            object.__setattr__(self, "_teacher", teacher.eval().requires_grad_(False))
        return self._teacher.to(device)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """MSE between the one-call chunk and the teacher sampler's chunk from the same noise."""
        self.check_batch(batch)
        obs = batch["obs"]
        device = next(self.parameters()).device
        teacher = self.teacher(device)
        b = batch["action"].shape[0]
        noise = torch.randn(b, self.spec.horizon, self.spec.action_dim, device=device)
        with torch.no_grad():
            target = teacher.denoise(noise, teacher.encoder(obs)).clamp(-1.0, 1.0)
        t = torch.full((b,), self.config.num_train_timesteps - 1, dtype=torch.long, device=device)
        return F.mse_loss(self.unet(noise, t, self.encoder(obs)), target)

    def config_dict(self) -> dict[str, Any]:
        """Plain-data hyper-parameters (the teacher's, plus the teacher path and one-step sampler)."""
        return asdict(self.config)


def _read_teacher(path: str, spec: PolicySpec) -> dict[str, Any]:
    """The teacher checkpoint's plain data, checked to be a diffusion policy with the student's spec."""
    from robot_learning.policies.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt["policy_type"] != "diffusion":
        raise ValueError(f"policy.params.teacher: {path} is a '{ckpt['policy_type']}' policy, not a diffusion policy")
    try:
        check_spec_matches(PolicySpec.from_dict(ckpt["spec"]), spec, "policy config and store")
    except ValueError as exc:
        raise ValueError(f"policy.params.teacher {path}: {exc}") from exc
    return ckpt
