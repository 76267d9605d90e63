"""Diffusion policy: observation features condition a 1-D U-Net that denoises action chunks.

Noise schedules come from ``diffusers``: DDPM for training, DDIM / DPM-Solver++ (or DDPM itself)
for inference with a configurable number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from robot_learning.policies.base import PolicySpec
from robot_learning.policies.encoders import EncoderConfig
from robot_learning.policies.model import ACTION_STATS_KEY, PolicyModel
from robot_learning.policies.unet import ConditionalUnet1D

SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}


@dataclass
class DiffusionConfig:
    """Diffusion policy hyper-parameters (widths chosen for CPU inference; see bench_policy.py)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # or "sample", "v_prediction"
    sampler: str = "ddim"  # inference: ddim | dpmsolver++ | ddpm
    num_inference_steps: int = 10


class DiffusionModel(PolicyModel):
    """Conditional denoising of action chunks."""

    policy_type = "diffusion"
    config_cls = DiffusionConfig

    def __init__(self, spec: PolicySpec, config: DiffusionConfig, stats: dict[str, Any]) -> None:
        super().__init__(spec, config, stats)
        if config.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"policy.params.prediction_type: unknown '{config.prediction_type}'")
        self.unet = ConditionalUnet1D(
            action_dim=spec.action_dim,
            global_cond_dim=self.encoder.out_dim,
            down_dims=tuple(config.down_dims),
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
            step_embed_dim=config.step_embed_dim,
        )
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            clip_sample=True,
            prediction_type=config.prediction_type,
        )
        self.configure_inference(sampler=config.sampler, num_inference_steps=config.num_inference_steps)

    def configure_inference(self, **options: Any) -> None:
        """Choose the inference sampler (``sampler``) and its step count (``num_inference_steps``)."""
        unknown = set(options) - {"sampler", "num_inference_steps"}
        if unknown:
            raise ValueError(f"diffusion policy has no inference options {sorted(unknown)}")
        sampler = options.get("sampler") or self.config.sampler
        steps = int(options.get("num_inference_steps") or self.config.num_inference_steps)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps={steps} outside [1, {self.config.num_train_timesteps}]")
        self.sampler_name, self.num_inference_steps = sampler, steps
        self.inference_scheduler = SAMPLERS[sampler].from_config(self.train_scheduler.config)
        self.inference_scheduler.set_timesteps(steps)

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Denoising loss at a random diffusion step per sample."""
        self.check_batch(batch)
        cond = self.encoder(batch["obs"])
        clean = self.target_actions(batch)
        noise = torch.randn_like(clean)
        t = torch.randint(0, self.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
        noisy = self.train_scheduler.add_noise(clean, noise, t)
        pred = self.unet(noisy, t, cond)
        if self.config.prediction_type == "epsilon":
            target = noise
        elif self.config.prediction_type == "sample":
            target = clean
        else:
            target = self.train_scheduler.get_velocity(clean, noise, t)
        return F.mse_loss(pred, target)

    def sample_actions(
        self, obs: dict[str, torch.Tensor], k: int = 1, generator: torch.Generator | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        """Run the reverse process for ``k`` chunks per observation, all in one batch."""
        cond = self.encoder(obs)  # each frame encoded once, shared by the k samples
        b = cond.shape[0]
        cond = cond.repeat_interleave(k, dim=0)
        x = torch.randn((b * k, self.spec.horizon, self.spec.action_dim), generator=generator, device=cond.device)
        sched = self.inference_scheduler
        sched.set_timesteps(self.num_inference_steps)
        for t in sched.timesteps:
            pred = self.unet(x, t.to(cond.device), cond)
            x = sched.step(pred, t, x, generator=generator).prev_sample
        x = x.clamp(-1.0, 1.0)
        return self.normalizer.unnormalize(ACTION_STATS_KEY, x).reshape(b, k, self.spec.horizon, -1)
