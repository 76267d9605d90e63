"""Observation features for critics and actors, from the policies' encoders (policies/encoders.py).

``ObsFeatures`` turns a replay batch's observation histories into one feature vector per sample.
Two modes, same output:

- images in the batch: the encoder runs on them (trained through the critic, or frozen);
- cached camera features in the batch (``feat/<camera>`` columns, made once per episode by
  ``rl/replay.py: camera_features`` with the same frozen encoder): only the low-dim part is computed,
  which is what makes large image replay cheap for a frozen encoder (HIL-SERL, ResFiT's frozen base).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from robot_learning.policies.base import PolicySpec
from robot_learning.policies.encoders import EncoderConfig, ObsEncoder
from robot_learning.policies.normalizer import Normalizer

FEATURE_PREFIX = "feat/"


def feature_key(camera: str) -> str:
    """The replay column name of ``camera``'s cached features."""
    return FEATURE_PREFIX + camera


class ObsFeatures(nn.Module):
    """``{key: (B, T, ...)}`` -> ``(B, out_dim)`` with an ``ObsEncoder``; optionally frozen."""

    def __init__(self, encoder: ObsEncoder, frozen: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.frozen = frozen
        if frozen:
            encoder.requires_grad_(False).eval()
        self.out_dim = encoder.out_dim

    @classmethod
    def build(cls, spec: PolicySpec, config: EncoderConfig | Mapping[str, Any] | None, stats: Mapping[str, Any],
              frozen: bool = False) -> ObsFeatures:
        """A fresh encoder for ``spec`` (normalizer from ``stats``, as a policy's)."""
        from robot_learning.config import to_dataclass

        cfg = config if isinstance(config, EncoderConfig) else to_dataclass(config or {}, EncoderConfig, "encoder")
        return cls(ObsEncoder(spec, cfg, Normalizer(dict(stats))), frozen=frozen)

    @classmethod
    def from_policy_model(cls, model: nn.Module, frozen: bool = True) -> ObsFeatures:
        """Reuse a trained policy network's encoder (e.g. the frozen base of a residual)."""
        return cls(model.encoder, frozen=frozen)

    def train(self, mode: bool = True) -> ObsFeatures:
        """A frozen encoder stays in eval mode (no crop jitter, fixed features)."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Features of a batch; cameras with a ``feat/<camera>`` column use the cached features."""
        enc = self.encoder
        feats: dict[str, torch.Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            for key in enc.image_keys:
                cached = obs.get(feature_key(key))
                if cached is not None:
                    feats[key] = cached.float()
                    continue
                if key not in obs:
                    raise ValueError(f"batch has neither camera '{key}' nor its cached features '{feature_key(key)}'")
                img = obs[key]
                b, t = img.shape[:2]
                feats[key] = enc.encode_camera(key, img.reshape(b * t, *img.shape[2:])).reshape(b, t, -1)
            return enc.combine(feats, obs)
