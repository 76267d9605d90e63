"""Q-function ensembles with LayerNorm, subset-min targets, Polyak target networks, the TD loss.

``CriticEnsemble`` holds N Q-heads as one batched MLP: every linear layer is a weight tensor of
shape (N, in, out) applied with one batched matmul, so N heads cost one kernel per layer instead of
N (the same effect as ``torch.func.stack_module_state`` + ``vmap``, with ordinary parameters that
optimizers, ``state_dict`` and DDP handle as usual). LayerNorm after every hidden layer keeps the
Q-values from diverging under high update-to-data ratios (RLPD, ResFiT, RLIF).

TD target (REDQ / RLPD / ResFiT): min over a random subset of ``target_subset`` heads of the target
ensemble at the next state and action; the actor uses the mean over all heads.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


class BatchedLinear(nn.Module):
    """N independent linear layers ``(N, B, in) -> (N, B, out)`` in one ``torch.baddbmm``."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per head
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, B, in) or (B, in) (broadcast to every head)."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)


class BatchedLayerNorm(nn.Module):
    """LayerNorm over the feature dim with per-head affine parameters."""

    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (N, B, dim) per row, then scale and shift per head."""
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


@dataclass
class CriticConfig:
    """Critic ensemble hyper-parameters (defaults: RLPD / ResFiT)."""

    n_heads: int = 10
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 256])
    layer_norm: bool = True
    target_subset: int = 2  # heads the TD target takes the min over (REDQ's M)
    tau: float = 0.005  # Polyak rate of the target network
    lr: float = 1e-4


class CriticEnsemble(nn.Module):
    """``Q_i(features, action)`` for i = 1..N, computed together: returns (N, B)."""

    def __init__(self, feature_dim: int, action_dim: int, config: CriticConfig | None = None) -> None:
        super().__init__()
        self.config = config or CriticConfig()
        c = self.config
        if c.n_heads < 1 or not 1 <= c.target_subset <= c.n_heads:
            raise ValueError(f"critic: need n_heads >= 1 and 1 <= target_subset <= n_heads, got {c.n_heads}, "
                             f"{c.target_subset}")
        layers: list[nn.Module] = []
        d = feature_dim + action_dim
        for h in c.hidden_dims:
            layers.append(BatchedLinear(c.n_heads, d, h))
            if c.layer_norm:
                layers.append(BatchedLayerNorm(c.n_heads, h))
            layers.append(nn.ReLU())
            d = h
        layers.append(BatchedLinear(c.n_heads, d, 1))
        self.net = nn.Sequential(*layers)
        self.feature_dim, self.action_dim = feature_dim, action_dim

    @property
    def n_heads(self) -> int:
        """Ensemble size N."""
        return self.config.n_heads

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q-values of every head: (N, B)."""
        if features.shape[-1] != self.feature_dim or action.shape[-1] != self.action_dim:
            raise ValueError(f"critic expects features (B, {self.feature_dim}) and actions (B, {self.action_dim}), "
                             f"got {tuple(features.shape)} and {tuple(action.shape)}")
        return self.net(torch.cat([features, action], dim=-1)).squeeze(-1)

    def q_mean(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Mean over heads (B,), what actor updates maximise."""
        return self(features, action).mean(0)


def subset_min(q: torch.Tensor, subset: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Min over ``subset`` randomly chosen heads of ``q`` (N, B) -> (B,) (one draw per batch, as REDQ)."""
    n = q.shape[0]
    if subset >= n:
        return q.min(0).values
    idx = torch.randperm(n, generator=generator, device="cpu")[:subset].to(q.device)
    return q.index_select(0, idx).min(0).values


def td_target(target_critic: CriticEnsemble, next_features: torch.Tensor, next_action: torch.Tensor,
              reward: torch.Tensor, discount: torch.Tensor, generator: torch.Generator | None = None,
              entropy_bonus: torch.Tensor | None = None) -> torch.Tensor:
    """``reward + discount * (min_subset Q_target(s', a') [+ entropy bonus])`` with no gradient.

    ``reward`` is the n-step return and ``discount`` = gamma^n, 0 where the episode terminated
    (rl/replay.py), so terminal and truncated ends are handled by the data, not here.
    """
    with torch.no_grad():
        q_next = subset_min(target_critic(next_features, next_action), target_critic.config.target_subset, generator)
        if entropy_bonus is not None:
            q_next = q_next + entropy_bonus
        return reward.float() + discount.float() * q_next


def td_loss(critic: CriticEnsemble, features: torch.Tensor, action: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared TD error summed over heads (every head regresses the same target)."""
    q = critic(features, action)
    return F.mse_loss(q, target.unsqueeze(0).expand_as(q), reduction="none").mean(1).sum()


def make_target(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to be moved towards it with ``polyak_update``."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target.eval()


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source`` for every parameter and float buffer."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    t_params, s_params = list(target.parameters()), list(source.parameters())
    t_bufs, s_bufs = list(target.buffers()), list(source.buffers())
    if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
        raise ValueError(f"polyak_update: target and source differ ({len(t_params)} vs {len(s_params)} parameters, "
                         f"{len(t_bufs)} vs {len(s_bufs)} buffers)")
    if t_params:  # a parameterless module (e.g. features of low-dim keys only) has nothing to move
        torch._foreach_lerp_(t_params, s_params, tau)
    for tb, sb in zip(t_bufs, s_bufs, strict=True):
        if tb.dtype.is_floating_point:
            tb.lerp_(sb, tau)
        else:
            tb.copy_(sb)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, layer_norm: bool = True) -> nn.Sequential:
    """Plain MLP (Linear [+ LayerNorm] + ReLU per hidden layer) for actors and value heads."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), *([nn.LayerNorm(h)] if layer_norm else []), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)
