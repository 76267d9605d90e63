"""Actors and their updates: deterministic (TD3-style) and tanh-Gaussian (SAC-style), and the UTD ratio.

Actors output actions in the *normalized* range [-1, 1] times ``action_scale`` (a residual actor uses
a small scale, e.g. 0.1, and ``zero_init_last`` so that it starts at exactly zero). Losses maximise
the ensemble's mean Q (ResFiT/RLPD); the TD targets use the subset-min (rl/critics.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robot_learning.rl.critics import CriticEnsemble, mlp


class DeterministicActor(nn.Module):
    """``a = action_scale * tanh(MLP(features))``."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256),
                 action_scale: float = 1.0, zero_init_last: bool = False, layer_norm: bool = True) -> None:
        super().__init__()
        self.net = mlp(feature_dim, hidden, action_dim, layer_norm)
        self.action_scale = float(action_scale)
        if zero_init_last:  # starts as the zero action (a residual on a base = the base exactly)
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Actions (B, A) in [-action_scale, action_scale]."""
        return self.action_scale * torch.tanh(self.net(features))


class TanhGaussianActor(nn.Module):
    """SAC's squashed Gaussian: ``a = action_scale * tanh(mu + sigma * eps)`` with its log-probability."""

    def __init__(self, feature_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256),
                 action_scale: float = 1.0, log_std_range: tuple[float, float] = (-5.0, 2.0),
                 zero_init_last: bool = False, layer_norm: bool = True) -> None:
        super().__init__()
        self.net = mlp(feature_dim, hidden, 2 * action_dim, layer_norm)
        self.action_dim = action_dim
        self.action_scale = float(action_scale)
        self.log_std_range = log_std_range
        if zero_init_last:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor, deterministic: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(actions (B, A), log-probabilities (B,)); ``deterministic`` gives tanh(mu) and its density."""
        mu, log_std = self.net(features).chunk(2, dim=-1)
        lo, hi = self.log_std_range
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(log_std) + 1.0)  # smooth clamp into [lo, hi]
        eps = torch.zeros_like(mu) if deterministic else torch.randn(mu.shape, generator=generator, device=mu.device)
        pre = mu + log_std.exp() * eps
        logp = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # change of variables through tanh, in the numerically stable form (SAC paper, appendix C)
        logp = logp - (2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))).sum(-1)
        logp = logp - self.action_dim * math.log(self.action_scale)
        return self.action_scale * torch.tanh(pre), logp


def td3_actor_loss(actor: DeterministicActor, critic: CriticEnsemble, features: torch.Tensor,
                   base_action: torch.Tensor | None = None, bc_weight: float = 0.0,
                   demo_action: torch.Tensor | None = None) -> torch.Tensor:
    """``-mean_heads Q(s, base + actor(s))`` (+ optional BC term towards ``demo_action``, TD3+BC style).

    ``base_action`` makes it a residual update: the critic scores the combined (executed) action.
    """
    delta = actor(features)
    action = delta if base_action is None else (base_action + delta).clamp(-1.0, 1.0)
    loss = -critic.q_mean(features, action).mean()
    if bc_weight and demo_action is not None:
        loss = loss + bc_weight * F.mse_loss(action, demo_action)
    return loss


def td3_target_action(actor_target: DeterministicActor, next_features: torch.Tensor, noise_std: float = 0.2,
                      noise_clip: float = 0.5, base_action: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """TD3's target policy smoothing: target actor + clipped Gaussian noise (in actor units)."""
    with torch.no_grad():
        a = actor_target(next_features)
        if noise_std > 0:
            noise = torch.randn(a.shape, generator=generator, device=a.device) * noise_std * actor_target.action_scale
            a = a + noise.clamp(-noise_clip * actor_target.action_scale, noise_clip * actor_target.action_scale)
        a = a.clamp(-actor_target.action_scale, actor_target.action_scale)
        return a if base_action is None else (base_action + a).clamp(-1.0, 1.0)


def sac_actor_loss(actor: TanhGaussianActor, critic: CriticEnsemble, features: torch.Tensor, alpha: torch.Tensor,
                   base_action: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``mean(alpha * logp - mean_heads Q(s, a))``, logp detached) for a reparameterised sample."""
    a, logp = actor(features)
    action = a if base_action is None else (base_action + a).clamp(-1.0, 1.0)
    return (alpha.detach() * logp - critic.q_mean(features, action)).mean(), logp.detach()


class Temperature(nn.Module):
    """SAC's entropy temperature ``alpha = exp(log_alpha)``, tuned towards ``target_entropy``."""

    def __init__(self, action_dim: int, init: float = 0.1, target_entropy: float | None = None) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init)))
        self.target_entropy = -float(action_dim) / 2 if target_entropy is None else float(target_entropy)

    @property
    def alpha(self) -> torch.Tensor:
        """Current temperature."""
        return self.log_alpha.exp()

    def loss(self, logp: torch.Tensor) -> torch.Tensor:
        """Gradient raises alpha when the policy's entropy is below target, lowers it otherwise."""
        return -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()


@dataclass
class UTDSchedule:
    """How many gradient updates to run per environment step for an update-to-data ratio (may be fractional)."""

    ratio: float = 1.0
    _credit: float = 0.0

    def __post_init__(self) -> None:
        if not self.ratio > 0:
            raise ValueError(f"utd ratio must be > 0, got {self.ratio}")

    def updates_for(self, env_steps: int) -> int:
        """Updates owed for ``env_steps`` new environment steps (fractions carried over)."""
        self._credit += self.ratio * env_steps
        n = int(self._credit + 1e-9)
        self._credit -= n
        return n
