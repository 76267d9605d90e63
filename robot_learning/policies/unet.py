"""A 1-D temporal U-Net over action sequences, conditioned by FiLM on the diffusion step and the
observation features (the architecture family of Janner et al. / Chi et al., written here)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar (the diffusion step)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``(B,)`` -> ``(B, dim)``."""
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ConvNormAct(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2), nn.GroupNorm(groups, out_ch), nn.Mish()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` -> ``(B, out_ch, T)``."""
        return self.block(x)


class FiLMResBlock(nn.Module):
    """Two conv blocks; the conditioning vector scales and shifts the first block's output."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, kernel, groups)
        self.conv2 = ConvNormAct(out_ch, out_ch, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_ch))
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """FiLM-modulated residual block."""
        h = self.conv1(x)
        scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv2(h * (1 + scale) + shift)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Predicts noise (or the clean sample) for ``(B, T, action_dim)`` action sequences."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 64,
    ) -> None:
        super().__init__()
        self.step_embed = nn.Sequential(
            SinusoidalEmbedding(step_embed_dim),
            nn.Linear(step_embed_dim, step_embed_dim * 4),
            nn.Mish(),
            nn.Linear(step_embed_dim * 4, step_embed_dim),
        )
        cond_dim = step_embed_dim + global_cond_dim
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == len(down_dims) - 1
            self.down.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(d_in, d_out, cond_dim, kernel_size, n_groups),
                        FiLMResBlock(d_out, d_out, cond_dim, kernel_size, n_groups),
                        nn.Conv1d(d_out, d_out, 3, 2, 1) if not last else nn.Identity(),
                    ]
                )
            )
        mid = down_dims[-1]
        self.mid = nn.ModuleList(
            [FiLMResBlock(mid, mid, cond_dim, kernel_size, n_groups), FiLMResBlock(mid, mid, cond_dim, kernel_size, n_groups)]
        )
        self.up = nn.ModuleList()
        rev = list(reversed(down_dims))
        # every up level upsamples (mirrors the len(down_dims) - 1 downsamples); the first level's skip
        # is deliberately unused, as in the reference architecture
        for d_out, d_in in zip(rev[1:], rev[:-1], strict=True):
            self.up.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(d_in * 2, d_out, cond_dim, kernel_size, n_groups),
                        FiLMResBlock(d_out, d_out, cond_dim, kernel_size, n_groups),
                        nn.ConvTranspose1d(d_out, d_out, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            ConvNormAct(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], action_dim, 1)
        )
        self.downsamples = len(down_dims) - 1

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """``sample`` (B, T, A), ``timestep`` (B,) or scalar, ``global_cond`` (B, D) -> (B, T, A)."""
        if sample.shape[1] % (2**self.downsamples):
            raise ValueError(f"horizon {sample.shape[1]} must be divisible by {2 ** self.downsamples} for this U-Net")
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        cond = torch.cat([self.step_embed(timestep.to(sample.device)), global_cond], dim=-1)
        x = sample.transpose(1, 2)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = res2(res1(x, cond), cond)
            x = upsample(x)
        return self.final(x).transpose(1, 2)
