"""Per-key affine normalization to [-1, 1], stored inside every checkpoint.

Built from the store's ``KeyStats`` (min/max per dimension). Dimensions that are (nearly) constant
are shifted to 0 but not scaled, so a constant input never blows up to huge values. Going back,
[-1, 1] maps onto [min, max] of the data, so a constant dimension comes back as its constant: a model
output there is extrapolation (the push demos never open the gripper; an unclamped -1.7 there was an
out-of-range action that the deploy safety layer holds on, 15-28 % of the ticks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

CONSTANT_RANGE = 1e-4  # a dimension whose max-min is below this is treated as constant


def stats_to_plain(stats: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Reduce ``KeyStats`` objects (or their dict form) to ``{key: {"min": [...], "max": [...]}}``."""
    plain: dict[str, dict[str, list[float]]] = {}
    for key, value in stats.items():
        d = value.to_dict() if hasattr(value, "to_dict") else dict(value)
        for field in ("min", "max"):
            if field not in d:
                raise ValueError(f"normalizer stats for key '{key}' lack '{field}'")
        lo = np.asarray(d["min"], dtype=np.float64).reshape(-1)
        hi = np.asarray(d["max"], dtype=np.float64).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError(f"normalizer stats for key '{key}': min {lo.shape} and max {hi.shape} differ")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError(f"normalizer stats for key '{key}' contain NaN or inf")
        plain[key] = {"min": lo.tolist(), "max": hi.tolist()}
    return plain


class Normalizer(nn.Module):
    """Maps each key's last dimension from [min, max] to [-1, 1] (and back)."""

    def __init__(self, stats: Mapping[str, Any]) -> None:
        super().__init__()
        self.stats = stats_to_plain(stats)
        self.keys = sorted(self.stats)
        for key in self.keys:
            lo = torch.tensor(self.stats[key]["min"], dtype=torch.float32)
            hi = torch.tensor(self.stats[key]["max"], dtype=torch.float32)
            span = hi - lo
            constant = span < CONSTANT_RANGE
            scale = torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(CONSTANT_RANGE))
            offset = torch.where(constant, -lo, -1.0 - lo * scale)
            self.register_buffer(f"scale_{key}", scale)
            self.register_buffer(f"offset_{key}", offset)
            # derived from the stats, so not in the state dict: checkpoints written before it load unchanged
            self.register_buffer(f"constant_{key}", constant, persistent=False)
            self.register_buffer(f"min_{key}", lo, persistent=False)

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.stats:
            raise KeyError(f"normalizer has no statistics for key '{key}' (has {self.keys})")
        return getattr(self, f"scale_{key}"), getattr(self, f"offset_{key}")

    def dim(self, key: str) -> int:
        """Number of dimensions of ``key``."""
        return len(self.stats[key]["min"])

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Raw units -> [-1, 1] along the last dimension."""
        scale, offset = self._params(key)
        return x * scale + offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> raw units along the last dimension (a constant dimension -> its constant)."""
        scale, offset = self._params(key)
        return torch.where(getattr(self, f"constant_{key}"), getattr(self, f"min_{key}"), (x - offset) / scale)
