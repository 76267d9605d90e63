"""The trainable side of a policy: an ``nn.Module`` with ``compute_loss(batch)`` (what the one
training loop calls) and ``sample_actions(obs, k)`` (what inference calls).

Batches come straight from ``WindowDataset``: ``{"obs": {key: (B, n_obs_steps, *shape)},
"action": (B, horizon + n_obs_steps - 1, A)}`` in raw units; normalization happens inside the model
so that the checkpoint is self-contained. The dataset window starts at the oldest observation step;
the model predicts the ``horizon`` actions from the newest observation step on (the Policy
convention), so it drops the first ``n_obs_steps - 1`` actions of the window.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import asdict
from typing import Any, ClassVar

import torch
from torch import nn

from robot_learning.policies.base import PolicySpec
from robot_learning.policies.encoders import EncoderConfig, ObsEncoder
from robot_learning.policies.normalizer import Normalizer

ACTION_STATS_KEY = "action"


def dataset_horizon(spec: PolicySpec) -> int:
    """Window length to request from ``WindowDataset`` for this spec."""
    return spec.horizon + spec.n_obs_steps - 1


class PolicyModel(nn.Module):
    """Base class of every trainable policy network (diffusion, BC)."""

    policy_type: ClassVar[str]
    config_cls: ClassVar[type]

    def __init__(self, spec: PolicySpec, config: Any, stats: dict[str, Any]) -> None:
        super().__init__()
        if ACTION_STATS_KEY not in stats:
            raise ValueError(f"normalizer statistics lack the action key '{ACTION_STATS_KEY}'")
        self.spec = spec
        self.config = config
        self.normalizer = Normalizer(stats)
        if self.normalizer.dim(ACTION_STATS_KEY) != spec.action_dim:
            raise ValueError(
                f"action statistics have {self.normalizer.dim(ACTION_STATS_KEY)} dims, spec says {spec.action_dim}"
            )
        encoder_cfg: EncoderConfig = config.encoder
        self.encoder = ObsEncoder(spec, encoder_cfg, self.normalizer)

    def config_dict(self) -> dict[str, Any]:
        """Plain-data hyper-parameters (stored in checkpoints)."""
        return asdict(self.config)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The training loss (``forward`` so that DDP's gradient hooks see the call)."""
        return self.compute_loss(batch)

    def check_batch(self, batch: dict[str, Any]) -> None:
        """Raise ValueError naming each observation key or the action whose shape does not match."""
        problems = []
        obs = batch["obs"]
        for key, shape in self.spec.obs_shapes.items():
            if key not in obs:
                problems.append(f"missing observation key '{key}'")
            elif tuple(obs[key].shape[1:]) != (self.spec.n_obs_steps, *shape):
                problems.append(
                    f"observation '{key}': expected (B, {self.spec.n_obs_steps}, {', '.join(map(str, shape))}), "
                    f"got {tuple(obs[key].shape)}"
                )
        want = (dataset_horizon(self.spec), self.spec.action_dim)
        if tuple(batch["action"].shape[1:]) != want:
            problems.append(f"action: expected (B, {want[0]}, {want[1]}), got {tuple(batch['action'].shape)}")
        if problems:
            raise ValueError("batch does not match the policy spec: " + "; ".join(problems))

    def target_actions(self, batch: dict[str, Any]) -> torch.Tensor:
        """Normalized actions from the newest observation step on: ``(B, horizon, A)``."""
        start = self.spec.n_obs_steps - 1
        action = batch["action"][:, start : start + self.spec.horizon].float()
        return self.normalizer.normalize(ACTION_STATS_KEY, action)

    @abstractmethod
    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Scalar training loss for one batch."""

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The conditioning features ``(B, encoder.out_dim)`` that ``sample_actions`` computes from ``obs``."""
        return self.encoder(obs)

    @abstractmethod
    def sample_actions(
        self, obs: dict[str, torch.Tensor], k: int = 1, generator: torch.Generator | None = None,
        deterministic: bool = False, cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``k`` action chunks per observation history: ``(B, k, horizon, A)`` in raw units; ``cond``:
        ``encode_obs(obs)`` when the caller computed it already (it is then not recomputed)."""

    def reset_inference_state(self) -> None:  # noqa: B027 - optional hook
        """Forget per-episode inference state (caches); default: none."""

    def configure_inference(self, **options: Any) -> None:  # noqa: B027 - optional hook
        """Change inference-time options (e.g. sampler and step count); default: none."""
        if options:
            raise ValueError(f"{self.policy_type} policy has no inference options {sorted(options)}")
