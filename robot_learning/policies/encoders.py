"""Observation encoders: a ResNet-18-style image encoder per camera (GroupNorm, spatial softmax)
and the module that turns an observation history into one conditioning vector.

Written here because torchvision has no CPU wheel in this environment; the layout follows
ResNet-18 (stem, four stages of basic blocks) with BatchNorm replaced by GroupNorm (BatchNorm
interacts badly with EMA and small batches) and global pooling replaced by spatial softmax
(keypoint coordinates keep where things are, which manipulation needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from robot_learning.policies.base import PolicySpec
from robot_learning.policies.normalizer import Normalizer


@dataclass
class EncoderConfig:
    """Image encoder hyper-parameters (CPU-friendly defaults; see benchmarks/bench_policy.py)."""

    width: int = 16  # channels of the first stage; stages use width * (1, 2, 4, 8)
    blocks_per_stage: list[int] = field(default_factory=lambda: [1, 1, 1, 1])  # ResNet-18: [2, 2, 2, 2]
    keypoints: int = 32  # spatial-softmax keypoints per camera
    feature_dim: int = 64  # output features per camera
    crop_fraction: float = 0.9  # random crop (train) / centre crop (eval) side as a fraction of the image
    group_size: int = 16  # channels per GroupNorm group


def _groups(channels: int, group_size: int) -> int:
    return max(1, channels // group_size)


def random_crop(images: torch.Tensor, crop_h: int, crop_w: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop every image of ``(N, C, H, W)`` at its own random offset (one gather, no Python loop)."""
    n, _c, h, w = images.shape
    if (crop_h, crop_w) == (h, w):
        return images
    top = torch.randint(0, h - crop_h + 1, (n,), generator=generator, device=images.device)
    left = torch.randint(0, w - crop_w + 1, (n,), generator=generator, device=images.device)
    rows = (top[:, None] + torch.arange(crop_h, device=images.device))[:, :, None]  # (N, h, 1)
    cols = (left[:, None] + torch.arange(crop_w, device=images.device))[:, None, :]  # (N, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def center_crop(images: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    """Deterministic centre crop of ``(N, C, H, W)``."""
    _n, _c, h, w = images.shape
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return images[:, :, top : top + crop_h, left : left + crop_w]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, group_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(out_ch, group_size), out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(out_ch, group_size), out_ch)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.skip = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.GroupNorm(_groups(out_ch, group_size), out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward."""
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.skip(x))


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinates of ``keypoints`` learned heat maps."""

    def __init__(self, in_ch: int, keypoints: int) -> None:
        super().__init__()
        self.to_maps = nn.Conv2d(in_ch, keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 2 * keypoints)`` in [-1, 1] coordinates."""
        maps = self.to_maps(x)
        n, k, h, w = maps.shape
        attn = torch.softmax(maps.flatten(2), dim=-1)  # (N, K, H*W)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=attn.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ex = (attn * grid_x.reshape(1, 1, -1)).sum(-1)
        ey = (attn * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([ex, ey], dim=-1).reshape(n, 2 * k)


class ImageEncoder(nn.Module):
    """ResNet-18-style trunk + spatial softmax + linear projection for one camera."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        w = cfg.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.GroupNorm(_groups(w, cfg.group_size), w), nn.ReLU()
        )
        layers: list[nn.Module] = []
        in_ch = w
        for stage, n_blocks in enumerate(cfg.blocks_per_stage):
            out_ch = w * 2**stage
            for b in range(n_blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(in_ch, out_ch, stride, cfg.group_size))
                in_ch = out_ch
        self.trunk = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(in_ch, cfg.keypoints)
        self.proj = nn.Sequential(nn.Linear(2 * cfg.keypoints, cfg.feature_dim), nn.LayerNorm(cfg.feature_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` float in [0, 1] -> ``(N, feature_dim)``."""
        return self.proj(self.pool(self.trunk(self.stem(x * 2.0 - 1.0))))


class ObsEncoder(nn.Module):
    """Encodes ``{key: (B, T, *shape)}`` into ``(B, T * per_step_dim)``: one encoder per camera,
    normalized low-dim streams concatenated; every frame is encoded exactly once per call."""

    def __init__(self, spec: PolicySpec, cfg: EncoderConfig, normalizer: Normalizer) -> None:
        super().__init__()
        self.spec = spec
        self.cfg = cfg
        self.normalizer = normalizer
        self.image_keys = spec.image_keys
        self.lowdim_keys = spec.lowdim_keys
        for key in self.lowdim_keys:
            if key not in normalizer.stats:
                raise ValueError(f"no normalizer statistics for low-dim observation key '{key}'")
        self.cameras = nn.ModuleDict({k: ImageEncoder(cfg) for k in self.image_keys})
        self.crop = {}
        for key in self.image_keys:
            h, w, c = spec.obs_shapes[key]
            if c != 3:
                raise ValueError(f"image key '{key}' must be H x W x 3, got {spec.obs_shapes[key]}")
            self.crop[key] = (max(8, round(h * cfg.crop_fraction)), max(8, round(w * cfg.crop_fraction)))
        lowdim_dim = sum(int(torch.tensor(spec.obs_shapes[k]).prod()) for k in self.lowdim_keys)
        self.step_dim = cfg.feature_dim * len(self.image_keys) + lowdim_dim
        self.out_dim = self.step_dim * spec.n_obs_steps

    def encode_camera(self, key: str, frames: torch.Tensor) -> torch.Tensor:
        """Features of single frames of camera ``key``: uint8 ``(N, H, W, 3)`` -> ``(N, feature_dim)``.

        Each frame is encoded independently (GroupNorm is per sample), which is what lets inference
        cache the features of a frame across calls (policies/fast_inference.py).
        """
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        ch, cw = self.crop[key]
        x = random_crop(x, ch, cw) if self.training else center_crop(x, ch, cw)
        return self.cameras[key](x)

    def combine(self, image_features: dict[str, torch.Tensor], obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Join per-camera features ``{key: (B, T, F)}`` and the normalized low-dim streams of ``obs``."""
        parts = []
        batch = None
        for key in self.image_keys:
            feats = image_features[key]
            batch = tuple(feats.shape[:2])
            parts.append(feats)
        for key in self.lowdim_keys:
            x = obs[key].float()
            b, t = x.shape[:2]
            batch = (b, t)
            parts.append(self.normalizer.normalize(key, x.reshape(b, t, -1)))
        assert batch is not None, "policy has no observation keys"
        return torch.cat(parts, dim=-1).reshape(batch[0], -1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encode a batch of observation histories (images uint8 B x T x H x W x 3)."""
        feats = {}
        for key in self.image_keys:
            img = obs[key]
            b, t = img.shape[:2]
            feats[key] = self.encode_camera(key, img.reshape(b * t, *img.shape[2:])).reshape(b, t, -1)
        return self.combine(feats, obs)
