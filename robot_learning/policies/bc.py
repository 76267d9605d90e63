"""Behaviour-cloning baselines on the same encoders: a deterministic MLP and a Gaussian-mixture
head (``n_modes = 1`` is a plain diagonal Gaussian) over the whole action chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robot_learning.policies.base import PolicySpec
from robot_learning.policies.encoders import EncoderConfig
from robot_learning.policies.model import ACTION_STATS_KEY, PolicyModel
from robot_learning.policies.registry import register_policy


@dataclass
class BCConfig:
    """BC hyper-parameters."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    head: str = "mlp"  # "mlp" (deterministic, MSE) or "gmm" (mixture of diagonal Gaussians, NLL)
    n_modes: int = 5  # mixture components for head="gmm"
    # "per_mode": each mode predicts its own stds (can collapse into a scale mixture whose weights ignore the
    # observation); "shared": one std per chunk dimension (predicted from the observation) for every mode, so
    # modes can only differ in their means and the weights must say which mean fits this observation.
    std: str = "per_mode"
    # "nll": means trained by the mixture likelihood, where dimensions with tiny stds dominate the gradient (the
    # lift gripper/z means stayed off by ~0.3); "mse": each mode's mean by a squared error weighted by its
    # (detached) responsibility for the demo chunk -- an EM-style M-step, as in beta-NLL with beta = 1 -- while
    # weights and stds keep the likelihood with the means held fixed.
    mean_loss: str = "nll"
    # samples are mode mean + sample_std_scale * std * noise: a temperature (0 = the sampled mode's mean)
    sample_std_scale: float = 1.0
    min_std: float = 1e-3
    dropout: float = 0.0


@register_policy("bc")
class BCModel(PolicyModel):
    """Encoder -> MLP -> action chunk (or mixture parameters)."""

    config_cls = BCConfig

    def __init__(self, spec: PolicySpec, config: BCConfig, stats: dict[str, Any]) -> None:
        super().__init__(spec, config, stats)
        if config.head not in ("mlp", "gmm"):
            raise ValueError(f"policy.params.head: unknown '{config.head}' (choose mlp or gmm)")
        if config.n_modes < 1:
            raise ValueError("policy.params.n_modes must be >= 1")
        if config.sample_std_scale < 0:
            raise ValueError("policy.params.sample_std_scale must be >= 0")
        if config.mean_loss not in ("nll", "mse"):
            raise ValueError(f"policy.params.mean_loss: unknown '{config.mean_loss}' (choose nll or mse)")
        if config.std not in ("per_mode", "shared"):
            raise ValueError(f"policy.params.std: unknown '{config.std}' (choose per_mode or shared)")
        self.chunk_dim = spec.horizon * spec.action_dim
        modes = 1 if config.head == "mlp" else config.n_modes
        std_dims = modes * self.chunk_dim if config.std == "per_mode" else self.chunk_dim
        out_dim = self.chunk_dim if config.head == "mlp" else modes * (1 + self.chunk_dim) + std_dims
        layers: list[nn.Module] = []
        d = self.encoder.out_dim
        for h in config.hidden_dims:
            layers += [nn.Linear(d, h), nn.Mish(), nn.Dropout(config.dropout)]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.mlp = nn.Sequential(*layers)
        self.modes = modes

    def _mixture(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.mlp(cond)
        b, m, d = out.shape[0], self.modes, self.chunk_dim
        logits = out[:, :m]
        mean = out[:, m : m + m * d].reshape(b, m, d)
        raw = out[:, m + m * d :]
        raw = raw[:, None].expand(b, m, d) if self.config.std == "shared" else raw.reshape(b, m, d)
        std = F.softplus(raw) + self.config.min_std
        return logits, mean, std

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """MSE (mlp) or mean per-dimension negative log-likelihood (gmm)."""
        self.check_batch(batch)
        cond = self.encoder(batch["obs"])
        target = self.target_actions(batch).reshape(cond.shape[0], -1)
        if self.config.head == "mlp":
            return F.mse_loss(self.mlp(cond), target)
        logits, mean, std = self._mixture(cond)
        if self.config.mean_loss == "nll":
            return -_mixture_logp(logits, mean, std, target).mean() / self.chunk_dim
        joint = F.log_softmax(logits, dim=-1) + _component_logp(mean.detach(), std, target)  # (B, modes)
        nll = -torch.logsumexp(joint, dim=-1).mean()
        resp = torch.softmax(joint, dim=-1).detach()  # who explains this demo chunk
        mse = (resp * (mean - target[:, None]).pow(2).sum(-1)).sum(-1).mean()
        return (nll + mse) / self.chunk_dim

    def sample_actions(
        self, obs: dict[str, torch.Tensor], k: int = 1, generator: torch.Generator | None = None,
        deterministic: bool = False, cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MLP: the prediction repeated ``k`` times; GMM: ``k`` samples (or the top mode's mean)."""
        cond = self.encoder(obs) if cond is None else cond
        b = cond.shape[0]
        if self.config.head == "mlp":
            chunk = self.mlp(cond)[:, None].expand(b, k, self.chunk_dim)
        else:
            logits, mean, std = self._mixture(cond)
            if deterministic:
                idx = logits.argmax(-1, keepdim=True).expand(b, k)
            else:
                idx = torch.multinomial(torch.softmax(logits, -1), k, replacement=True, generator=generator)
            gather = idx[..., None].expand(b, k, self.chunk_dim)
            mu, sd = mean.gather(1, gather), std.gather(1, gather)
            noise = torch.randn(mu.shape, generator=generator, device=mu.device)
            chunk = mu if deterministic else mu + self.config.sample_std_scale * sd * noise
        chunk = chunk.reshape(b, k, self.spec.horizon, self.spec.action_dim).clamp(-1.0, 1.0)
        return self.normalizer.unnormalize(ACTION_STATS_KEY, chunk)


def _component_logp(mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log N(target | mean_m, diag std_m^2) per mode: ``(B, modes)``."""
    z = (target[:, None] - mean) / std
    return (-0.5 * z.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _mixture_logp(logits: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log of the mixture density at ``target``: ``(B,)``."""
    return torch.logsumexp(F.log_softmax(logits, dim=-1) + _component_logp(mean, std, target), dim=-1)
