"""``perturbed``: a base policy with a scale, a constant offset and seeded Gaussian noise on every executed action.

The smallest useful wrapper, and the reference for writing one (policies/composite.py): a composite
checkpoint (its offset + the embedded base), a per-step hook, its own noise stream. Uses:

- a deliberately biased base (a constant offset that a residual actor must learn to cancel,
  the toy setting of the residual-RL tests);
- exploration or mixed-quality data: the base plus Gaussian noise, in robot action units;
- fault injection in evaluation (how much does success drop under an action bias or attenuation?);
- ``scale=0``: the base's actions dropped, only its interface and encoder kept (the RL-from-scratch
  baseline of ``rlstack finetune from_scratch=true``).

The hook is cheap (an add and a clip), so under deploy ``isolation=process`` the policy sends a copy
of itself without its base (``step_hook``) to the control process, where it runs per action.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robot_learning.policies.base import Policy
from robot_learning.policies.composite import WrapperPolicy
from robot_learning.policies.registry import register_policy


@dataclass
class PerturbedConfig:
    """Noise and bounds of the perturbation (the offset itself is the wrapper's stored tensor)."""

    noise_std: float = 0.0  # Gaussian noise per action dimension, robot units
    scale: float = 1.0  # the planned action is multiplied by this first (0: the base's actions are dropped)
    low: float = -1.0  # executed actions are clipped to [low, high]
    high: float = 1.0
    noise_seed: int = 0  # mixed into the episode seed so that two wrappers of one base differ


def _perturb(planned: np.ndarray, offset: np.ndarray, config: PerturbedConfig, rng: np.random.Generator) -> np.ndarray:
    action = config.scale * np.asarray(planned, dtype=np.float64) + offset
    if config.noise_std > 0:
        action = action + config.noise_std * rng.standard_normal(action.shape)
    return np.clip(action, config.low, config.high)


@register_policy("perturbed")
class PerturbedPolicy(WrapperPolicy):
    """``action = clip(scale * planned + offset + noise_std * N(0, 1), low, high)`` at every executed step."""

    config_cls = PerturbedConfig

    def __init__(self, base: Policy, config: PerturbedConfig | None = None, device: str | torch.device = "cpu",
                 offset: np.ndarray | list[float] | None = None) -> None:
        super().__init__(base, config or PerturbedConfig(), device)
        if self.config.noise_std < 0 or not self.config.low < self.config.high or not np.isfinite(self.config.scale):
            raise ValueError(f"perturbed: noise_std must be >= 0, low < high and scale finite, got {self.config}")
        self.offset = np.zeros(self.spec.action_dim) if offset is None else np.asarray(offset, dtype=np.float64)
        if self.offset.shape != (self.spec.action_dim,):
            raise ValueError(f"perturbed: offset has shape {self.offset.shape}, the base acts in "
                             f"{self.spec.action_dim} dimensions")
        self.rng = np.random.default_rng(self.config.noise_seed)

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The offset."""
        return {"offset": torch.from_numpy(self.offset.copy())}

    def load_own_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the offset (checked against the action dimension)."""
        offset = state_dict["offset"].numpy().astype(np.float64)
        if offset.shape != (self.spec.action_dim,):
            raise ValueError(f"perturbed: stored offset has shape {offset.shape}, expected ({self.spec.action_dim},)")
        self.offset = offset

    def reseed(self, seed: int) -> None:
        """Reseed the base and this wrapper's noise."""
        super().reseed(seed)
        self.rng = np.random.default_rng([self.config.noise_seed, int(seed) & 0xFFFFFFFF])

    def reseed_from(self, obs_history: dict[str, np.ndarray]) -> None:
        """Content-seed the base and the noise."""
        super().reseed_from(obs_history)
        crc = 0
        for key in sorted(obs_history):
            crc = zlib.crc32(np.ascontiguousarray(obs_history[key]).tobytes(), crc)
        self.rng = np.random.default_rng([self.config.noise_seed, crc])

    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray,
                    step_in_chunk: int) -> np.ndarray:
        """Scaled planned action + offset + noise, clipped."""
        return _perturb(planned_action, self.offset, self.config, self.rng)

    def step_hook(self) -> PerturbedHook:
        """This wrapper without its base (picklable, runs in the control process)."""
        return PerturbedHook(self.offset.copy(), self.config, self.rng)


@dataclass
class PerturbedHook:
    """``PerturbedPolicy.step_action`` detached from the base (deploy isolation=process)."""

    offset: np.ndarray
    config: PerturbedConfig
    rng: Any = field(default=None)

    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray,
                    step_in_chunk: int) -> np.ndarray:
        """Same formula as the policy's hook."""
        return _perturb(planned_action, self.offset, self.config, self.rng)

    def reset(self) -> None:
        """Nothing per episode (the noise stream continues)."""
