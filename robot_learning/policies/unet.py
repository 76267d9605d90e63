"""A 1-D temporal U-Net over action sequences, conditioned by FiLM on the diffusion step and the
observation features (the architecture family of Janner et al. / Chi et al., written here)."""

from __future__ import annotations

import math

import torch
from torch import nn


def obs_film_from(global_cond: torch.Tensor, w_obs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The observation part (+ bias) of the blocks' FiLM vectors from their stacked weights."""
    return nn.functional.mish(global_cond) @ w_obs.T + bias

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
        self.out_ch = out_ch
        self.conv1 = ConvNormAct(in_ch, out_ch, kernel, groups)
        self.conv2 = ConvNormAct(out_ch, out_ch, kernel, groups)
        # applied as Linear(Mish(cond)); ConditionalUnet1D evaluates all blocks' layers as one product
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_ch))
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """``film`` (B, 2 * out_ch): the multiplier (1 + scale) then the shift."""
        h = self.conv1(x)
        gain, shift = film.unsqueeze(-1).chunk(2, dim=1)
        h = self.conv2(h * gain + shift)
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
        self.step_embed_dim = step_embed_dim
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

    def film_blocks(self) -> list[FiLMResBlock]:
        """Every FiLM block in the order ``trunk`` runs them."""
        out: list[FiLMResBlock] = []
        for res1, res2, _ in self.down:
            out += [res1, res2]
        out += list(self.mid)
        for res1, res2, _ in self.up:
            out += [res1, res2]
        return out

    def film_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All blocks' FiLM layers stacked and split by input: (W_step (S, E), W_obs (S, D), bias (S,)).

        Mish acts elementwise, so Linear(Mish([step; obs])) = W_step Mish(step) + W_obs Mish(obs) + b:
        the observation part is the same at every denoising step and the step part depends on the
        step alone, which is what lets a sampler compute each once (see fast_inference.DenoiseLoop).
        The bias carries the +1 of the (1 + scale) multiplier.
        """
        layers = [blk.film[1] for blk in self.film_blocks()]
        weight = torch.cat([lin.weight for lin in layers])
        one = torch.cat([torch.cat([torch.ones(b.out_ch), torch.zeros(b.out_ch)]) for b in self.film_blocks()])
        bias = torch.cat([lin.bias for lin in layers]) + one.to(weight)
        e = self.step_embed_dim
        return weight[:, :e], weight[:, e:], bias

    def step_film(self, timestep: torch.Tensor) -> torch.Tensor:
        """The diffusion-step part of every block's FiLM vector: ``(B,)`` -> ``(B, S)``."""
        w_step, _, _ = self.film_weights()
        return nn.functional.mish(self.step_embed(timestep)) @ w_step.T

    def obs_film(self, global_cond: torch.Tensor) -> torch.Tensor:
        """The observation part (+ bias) of every block's FiLM vector: ``(B, D)`` -> ``(B, S)``."""
        _, w_obs, bias = self.film_weights()
        return obs_film_from(global_cond, w_obs, bias)

    def trunk(self, sample: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """The U-Net proper: ``sample`` (B, T, A) and the blocks' FiLM vectors (B, S) -> (B, T, A)."""
        if sample.shape[1] % (2**self.downsamples):
            raise ValueError(f"horizon {sample.shape[1]} must be divisible by {2 ** self.downsamples} for this U-Net")
        films = iter(film.split([2 * b.out_ch for b in self.film_blocks()], dim=1))
        x = sample.transpose(1, 2)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, next(films)), next(films))
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, next(films))
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = res2(res1(x, next(films)), next(films))
            x = upsample(x)
        return self.final(x).transpose(1, 2)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """``sample`` (B, T, A), ``timestep`` (B,) or scalar, ``global_cond`` (B, D) -> (B, T, A)."""
        if timestep.dim() == 0:
            timestep = timestep.expand(sample.shape[0])
        film = self.step_film(timestep.to(sample.device)) + self.obs_film(global_cond)
        return self.trunk(sample, film)
