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
from robot_learning.policies.fast_inference import BACKENDS, ONE_STEP, DiffusionInference, reverse_process
from robot_learning.policies.model import ACTION_STATS_KEY, PolicyModel
from robot_learning.policies.registry import register_policy
from robot_learning.policies.unet import ConditionalUnet1D


class ClippedDPMSolver(DPMSolverMultistepScheduler):
    """DPM-Solver++ with its x0 prediction clipped to [-1, 1], like DDIM's ``clip_sample``.

    diffusers' dynamic thresholding capped at ``sample_max_value = 1`` is exactly this clamp, but it
    computes a quantile first, which ONNX cannot export; the plain clamp keeps the sampler compilable.
    """

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        limit = float(self.config.sample_max_value)
        if limit != 1.0:
            return super()._threshold_sample(sample)
        return sample.clamp(-limit, limit)


SAMPLERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmsolver++": ClippedDPMSolver}


@dataclass
class DiffusionConfig:
    """Diffusion policy hyper-parameters (widths chosen for CPU inference; see bench_policy.py)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    down_dims: list[int] = field(default_factory=lambda: [32, 64, 128])
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 64
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # or "sample", "v_prediction"
    sampler: str = "ddim"  # inference: ddim | dpmsolver++ | ddpm (| onestep, distilled policies only)
    num_inference_steps: int = 10
    # auto | eager | torchscript | onnxruntime (auto: onnxruntime on CPU when installed); see fast_inference.py
    inference_backend: str = "auto"
    feature_cache: bool = True  # reuse the image features of frames seen in the previous call


@register_policy("diffusion")
class DiffusionModel(PolicyModel):
    """Conditional denoising of action chunks."""

    config_cls = DiffusionConfig
    one_step_trained = False  # True where the U-Net maps noise to a chunk in one call (distill.py)

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
        self._engine: DiffusionInference | None = None
        self.configure_inference(sampler=config.sampler, num_inference_steps=config.num_inference_steps,
                                 inference_backend=config.inference_backend)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the compiled engine behind (it is rebuilt lazily)."""
        state = self.__dict__.copy()
        state["_engine"] = None
        return state

    def configure_inference(self, **options: Any) -> None:
        """Choose the sampler (``sampler``), its step count (``num_inference_steps``) and the
        ``inference_backend`` (auto | eager | torchscript | onnxruntime)."""
        unknown = set(options) - {"sampler", "num_inference_steps", "inference_backend"}
        if unknown:
            raise ValueError(f"diffusion policy has no inference options {sorted(unknown)}")
        backend = options.get("inference_backend") or getattr(self, "inference_backend", self.config.inference_backend)
        if backend not in BACKENDS:
            raise ValueError(f"unknown inference_backend '{backend}' (choose from {', '.join(BACKENDS)})")
        if backend != getattr(self, "inference_backend", backend):
            self._engine = None
        self.inference_backend = backend
        # an option not given keeps its current value (the config's at construction)
        sampler = options.get("sampler") or getattr(self, "sampler_name", self.config.sampler)
        steps = int(options.get("num_inference_steps") or getattr(self, "num_inference_steps", self.config.num_inference_steps))
        if sampler == ONE_STEP and not self.one_step_trained:
            raise ValueError(f"sampler '{ONE_STEP}' needs a distilled policy (policy=diffusion_onestep); "
                             f"this {self.policy_type} policy's U-Net predicts noise")
        if sampler not in SAMPLERS and sampler != ONE_STEP:
            raise ValueError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps={steps} outside [1, {self.config.num_train_timesteps}]")
        self.sampler_name, self.num_inference_steps = sampler, steps
        if sampler == ONE_STEP:
            self.num_inference_steps = 1
            return
        extra = {}
        if sampler == "dpmsolver++":
            # DPM-Solver++ has no clip_sample: its first step (t = T - 1, where the cosine schedule leaves
            # almost no signal) predicts a huge x0 and every chunk saturates (0/30 on lift here). Dynamic
            # thresholding capped at 1 clips x0 to [-1, 1] like DDIM's clip_sample.
            extra = {"thresholding": True, "sample_max_value": 1.0}
        self.inference_scheduler = SAMPLERS[sampler].from_config(self.train_scheduler.config, **extra)
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

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Conditioning features: through the compiled camera encoders and frame cache in eval mode."""
        return self.encoder(obs) if self.training else self.inference_engine().encode(obs)

    def sample_actions(
        self, obs: dict[str, torch.Tensor], k: int = 1, generator: torch.Generator | None = None,
        deterministic: bool = False, cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the reverse process for ``k`` chunks per observation, all in one batch.

        In eval mode this goes through the compiled engine of ``inference_backend`` (built at the
        first call from the current weights, rebuilt when they change); in train mode it is eager.
        """
        engine = None if self.training else self.inference_engine()
        if cond is None:
            cond = engine.encode(obs) if engine is not None else self.encoder(obs)  # each frame encoded once
        b = cond.shape[0]
        cond = cond.repeat_interleave(k, dim=0)
        x = torch.randn((b * k, self.spec.horizon, self.spec.action_dim), generator=generator, device=cond.device)
        x = engine.denoise(x, cond, generator) if engine is not None else self.denoise(x, cond, generator)
        x = x.clamp(-1.0, 1.0)
        return self.normalizer.unnormalize(ACTION_STATS_KEY, x).reshape(b, k, self.spec.horizon, -1)

    def denoise(self, x: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Eager reverse process from noise ``x`` (normalized units, before clamping)."""
        if self.sampler_name == ONE_STEP:
            t = torch.full((x.shape[0],), self.config.num_train_timesteps - 1, dtype=torch.long, device=x.device)
            return self.unet(x, t, cond)
        return reverse_process(lambda x_t, t: self.unet(x_t, t.to(cond.device), cond), self.inference_scheduler,
                               self.num_inference_steps, x, generator)

    def inference_engine(self) -> DiffusionInference:
        """The compiled encoders/sampler for the current weights (built or rebuilt on demand)."""
        if self._engine is None or not self._engine.is_current(self):
            self._engine = DiffusionInference(self, self.inference_backend, self.config.feature_cache)
        return self._engine

    def reset_inference_state(self) -> None:
        """Episode boundary: forget cached frame features."""
        if self._engine is not None and self._engine.cache is not None:
            self._engine.cache.clear()
