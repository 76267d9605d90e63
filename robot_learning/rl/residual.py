"""Residual off-policy RL on a frozen base policy (ResFiT, Ankile et al. 2025).

The base runs its action chunks open-loop; a small residual actor corrects every executed step
closed-loop from the newest observation and the base's planned action for that step:

    executed = clip(base_action + residual(features(obs), base_action), -1, 1)
    residual = action_scale * tanh(MLP(...)),   last layer zero-initialised

Actions are in the robot's normalized action space (the sim's ``Box(-1, 1)``; ee-delta robots act
in that range), so ``action_scale`` is a fraction of it. The critic ensemble (rl/critics.py) scores
the *executed* action; the state it sees includes the base's planned action (the base's open-loop
chunk state is part of the residual's environment). Demonstrations are relabelled with the base's
prediction on each demo frame (rl/replay.py: planned_actions, base reset per episode), so a demo
transition carries (state, base action, executed = demo action): target residual = demo - base.

Observation features (``ResidualConfig.encoder``): ``own`` reads the base's low-dim inputs (raw) and,
for ``cameras``, small conv encoders trained through the critic; ``base`` reuses the frozen base's
image encoder for every camera of the base (its low-dim inputs normalized with the base's statistics),
so replay can hold per-frame camera features computed once (rl/replay.py: camera_features) and a
learner update costs MLPs only.

Pieces: ``ResidualConfig`` (the policy's hyper-parameters, stored in its composite checkpoint),
``ResidualFeatures`` (observation -> vector), ``ResidualPolicy`` (the registered wrapper
``residual``), ``ResidualLearner`` (TD3-style
updates with n-step targets, critic warm-up, Polyak targets) and ``relabel_residuals``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robot_learning.policies.base import Policy, PolicySpec
from robot_learning.policies.composite import WrapperPolicy
from robot_learning.policies.registry import register_policy
from robot_learning.rl.actors import DeterministicActor, td3_target_action
from robot_learning.rl.critics import (
    CriticConfig,
    CriticEnsemble,
    make_target,
    polyak_update,
    td_loss,
    td_target,
)
from robot_learning.rl.features import feature_key
from robot_learning.rl.replay import planned_actions

BASE_ACTION_KEY = "base_action"  # replay column / store key of the base's planned action per step


@dataclass
class ResidualConfig:
    """The residual actor's architecture (stored as the composite's ``policy_config``)."""

    lowdim_keys: list[str] | None = None  # None: every low-dim input of the base (resolved when built)
    encoder: str = "auto"  # own: raw low-dim + trained convs for `cameras`; base: the frozen base's encoder;
    # auto: base when the base has cameras and an image encoder, else own (stored resolved)
    cameras: list[str] = field(default_factory=list)  # own: small trained conv encoders; base: resolved to all
    camera_channels: int = 16
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    action_scale: float = 0.2  # fraction of the normalized action range
    layer_norm: bool = True
    low: float = -1.0  # executed actions are clipped to the action space
    high: float = 1.0


class _ConvEncoder(nn.Module):
    """A small conv net for one camera (uint8 HxWx3 -> channels); trained through the critic."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2), nn.ReLU(), nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, channels)."""
        return self.net(img.permute(0, 3, 1, 2).float() / 255.0)


class _Shared:
    """Holds a frozen module that is not a submodule: not in ``state_dict``, not copied by ``deepcopy``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


ENCODERS = ("own", "base", "auto")


def base_encoder(base: Policy, required: bool = True) -> nn.Module | None:
    """The frozen image encoder (``ObsEncoder``) of a trained base, looking through wrapper bases."""
    policy = base
    while getattr(policy, "model", None) is None and isinstance(policy, WrapperPolicy):
        policy = policy.base
    encoder = getattr(getattr(policy, "model", None), "encoder", None)
    if encoder is None or not hasattr(encoder, "encode_camera"):
        if not required:
            return None
        raise ValueError(f"residual.encoder=base needs a trained base with an image encoder (BC, diffusion); "
                         f"{type(base).__name__} has none (use residual.encoder=own)")
    return encoder


class ResidualFeatures(nn.Module):
    """Newest frame of ``{key: (B, T, ...)}`` plus the base action -> (B, dim).

    With a frozen base encoder, a ``feat/<camera>`` column in the batch (cached features) is used
    instead of the camera's images.
    """

    def __init__(self, spec: PolicySpec, config: ResidualConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        if config.encoder not in ENCODERS[:2]:
            raise ValueError(f"residual.encoder={config.encoder!r}: choose from {', '.join(ENCODERS)}")
        lowdim_keys = spec.lowdim_keys if config.lowdim_keys is None else config.lowdim_keys
        missing = [k for k in [*lowdim_keys, *config.cameras] if k not in spec.obs_shapes]
        if missing:
            raise ValueError(f"residual: observation keys {missing} are not inputs of the base policy "
                             f"(it has {sorted(spec.obs_shapes)})")
        self.lowdim_keys, self.cameras = list(lowdim_keys), list(config.cameras)
        self.frozen = _Shared(encoder) if config.encoder == "base" else None
        if self.frozen is not None and encoder is None:
            raise ValueError("residual.encoder=base: no base encoder given")
        self.convs = nn.ModuleDict({} if self.frozen else {c: _ConvEncoder(config.camera_channels) for c in self.cameras})
        per_camera = encoder.cfg.feature_dim if self.frozen else config.camera_channels
        lowdim = sum(int(np.prod(spec.obs_shapes[k])) for k in self.lowdim_keys)
        self.dim = lowdim + len(self.cameras) * per_camera + spec.action_dim

    def _camera(self, obs: Mapping[str, torch.Tensor], camera: str) -> torch.Tensor:
        if self.frozen is None:
            return self.convs[camera](obs[camera][:, -1])
        cached = obs.get(feature_key(camera))
        if cached is not None:
            return cached[:, -1].float()
        with torch.no_grad():
            return self.frozen.module.encode_camera(camera, obs[camera][:, -1]).float()

    def forward(self, obs: Mapping[str, torch.Tensor], base_action: torch.Tensor) -> torch.Tensor:
        """Features of the newest observation step and the base's normalized action."""
        b = len(base_action)
        if self.frozen is None:
            parts = [obs[k][:, -1].reshape(b, -1).float() for k in self.lowdim_keys]
        else:
            norm = self.frozen.module.normalizer
            parts = [norm.normalize(k, obs[k][:, -1].reshape(b, -1).float()) for k in self.lowdim_keys]
        parts += [self._camera(obs, c) for c in self.cameras]
        return torch.cat([*parts, base_action.float()], dim=-1)


class ResidualNet(nn.Module):
    """Features + zero-initialised tanh actor: ``residual(obs, base_action)``."""

    def __init__(self, spec: PolicySpec, config: ResidualConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.features = ResidualFeatures(spec, config, encoder)
        self.actor = DeterministicActor(self.features.dim, spec.action_dim, config.hidden_dims,
                                        action_scale=config.action_scale, zero_init_last=True,
                                        layer_norm=config.layer_norm)

    def forward(self, obs: Mapping[str, torch.Tensor], base_action: torch.Tensor) -> torch.Tensor:
        """Residual (B, A) in [-action_scale, action_scale]."""
        return self.actor(self.features(obs, base_action))


def _obs_tensors(obs_history: Mapping[str, np.ndarray], keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(obs_history[k]))[None].to(device) for k in keys}


class ResidualHook:
    """The per-step correction alone (picklable; deploy ``isolation=process`` runs it in the control loop)."""

    def __init__(self, net: ResidualNet, config: ResidualConfig, device: torch.device) -> None:
        self.net, self.config, self.device = net, config, device
        self.keys = [*config.lowdim_keys, *config.cameras]
        self.explore_std = 0.0  # Gaussian exploration in normalized units (actor loop only)
        self.rng = np.random.default_rng(0)
        self.last_residual = np.zeros(0)  # what the latest step added (diagnostics, replay)
        self.last_planned = np.zeros(0)

    @torch.inference_mode()
    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray,
                    step_in_chunk: int) -> np.ndarray:
        """``clip(planned + residual (+ exploration noise))``."""
        base = np.asarray(planned_action, dtype=np.float32)
        delta = self.net(_obs_tensors(obs_history, self.keys, self.device),
                         torch.from_numpy(base)[None].to(self.device))[0].cpu().numpy()
        if self.explore_std > 0:
            delta = delta + self.explore_std * self.rng.standard_normal(delta.shape).astype(np.float32)
        self.last_residual, self.last_planned = delta, base
        return np.clip(base + delta, self.config.low, self.config.high).astype(np.float32)

    def reset(self) -> None:
        """Nothing per episode: the residual is memoryless (the base's chunk state is the base's)."""


@register_policy("residual")
class ResidualPolicy(WrapperPolicy):
    """A frozen base plus a closed-loop residual on every executed step (see the module docstring)."""

    config_cls = ResidualConfig

    def __init__(self, base: Policy, config: ResidualConfig | None = None, device: str | torch.device = "cpu") -> None:
        config = copy.deepcopy(config or ResidualConfig())
        if config.lowdim_keys is None:  # stored resolved, so the checkpoint says what the actor reads
            config.lowdim_keys = list(base.spec.lowdim_keys)
        if config.encoder not in ENCODERS:
            raise ValueError(f"residual.encoder={config.encoder!r}: choose from {', '.join(ENCODERS)}")
        if config.encoder == "auto":
            found = base_encoder(base, required=False) if base.spec.image_keys else None
            config.encoder = "base" if found is not None else "own"
        encoder = base_encoder(base) if config.encoder == "base" else None
        if encoder is not None and not config.cameras:
            config.cameras = list(base.spec.image_keys)
        super().__init__(base, config, device)
        if self.config.action_scale <= 0 or not self.config.low < self.config.high:
            raise ValueError(f"residual: need action_scale > 0 and low < high, got {self.config}")
        self.encoder = encoder  # frozen, shared with the base (None: own features)
        self.net = ResidualNet(self.spec, self.config, encoder).to(self.device).eval()
        self.hook = ResidualHook(self.net, self.config, self.device)

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The residual network (features + actor)."""
        return self.net.state_dict()

    def load_own_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the residual network (strict: a mismatched architecture is an error)."""
        try:
            self.net.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise ValueError(f"residual: stored weights do not match policy_config: {exc}") from exc

    def reseed(self, seed: int) -> None:
        """Reseed the base and the exploration noise."""
        super().reseed(seed)
        self.hook.rng = np.random.default_rng([7919, int(seed) & 0xFFFFFFFF])

    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray,
                    step_in_chunk: int) -> np.ndarray:
        """The base's action for this step (its own hook first, e.g. a perturbed base) plus the residual."""
        if self.base.has_step_hook:
            planned_action = self.base.step_action(obs_history, planned_action, step_in_chunk)
        return self.hook.step_action(obs_history, planned_action, step_in_chunk)

    def step_hook(self) -> ResidualHook | _ChainedHook:
        """The residual without the base (runs in the control process under deploy isolation)."""
        inner = self.base.step_hook() if self.base.has_step_hook else None
        return self.hook if inner is None else _ChainedHook(inner, self.hook)


@dataclass
class _ChainedHook:
    """The base's own per-step hook, then the residual's (a residual on a wrapper base)."""

    inner: Any
    outer: ResidualHook

    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray,
                    step_in_chunk: int) -> np.ndarray:
        """Inner first, then the residual."""
        return self.outer.step_action(obs_history, self.inner.step_action(obs_history, planned_action, step_in_chunk),
                                      step_in_chunk)

    def reset(self) -> None:
        """Both."""
        self.inner.reset()
        self.outer.reset()


# ---------------------------------------------------------------------------------------- learning
@dataclass
class LearnerSettings:
    """What the learner needs from configs/rl/residual.yaml (see rl/finetune.py: FinetuneConfig)."""

    critic: CriticConfig = field(default_factory=CriticConfig)
    actor_lr: float = 1e-4
    target_noise_std: float = 0.2
    target_noise_clip: float = 0.5
    critic_warmup_updates: int = 0
    actor_every: int = 1
    actor_tau: float = 0.005
    grad_clip: float = 0.0
    residual_penalty: float = 0.0  # > 0: actor loss -Q/mean|Q| + penalty * mean((residual/action_scale)^2)
    demo_bc: float = 0.0  # > 0: + demo_bc * mean over demo rows (batch["bc_mask"]) of (base + residual - demo)^2
    demo_bc_decay_updates: int = 0  # > 0: demo_bc fades linearly to 0 over this many updates after the warm-up
    seed: int = 0


class ResidualLearner:
    """TD3-style residual actor-critic: critic ensemble on the executed action, n-step targets from replay."""

    def __init__(self, policy: ResidualPolicy, settings: LearnerSettings) -> None:
        self.policy, self.s = policy, settings
        net = policy.net
        self.critic_features = ResidualFeatures(policy.spec, policy.config, policy.encoder).to(policy.device)
        self.critic = CriticEnsemble(self.critic_features.dim, policy.spec.action_dim, settings.critic).to(policy.device)
        self.critic_target = make_target(self.critic)
        self.critic_features_target = make_target(self.critic_features)
        self.actor_target = make_target(net)
        self.critic_opt = torch.optim.Adam([*self.critic.parameters(), *self.critic_features.parameters()],
                                           lr=settings.critic.lr)
        self.actor_opt = torch.optim.Adam(net.parameters(), lr=settings.actor_lr)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.updates = 0

    def _clip(self, params: Any) -> None:
        if self.s.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.s.grad_clip)

    def td_error(self, batch: Mapping[str, Any]) -> float:
        """Mean squared TD error of the current critic on ``batch`` (no update)."""
        with torch.no_grad():
            return float(self._critic_loss(batch)[0]) / self.critic.n_heads

    def _critic_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        obs, nxt = batch["obs"], batch["next_obs"]
        base, next_base = obs[BASE_ACTION_KEY][:, -1].float(), nxt[BASE_ACTION_KEY][:, -1].float()
        lo, hi = self.policy.config.low, self.policy.config.high
        with torch.no_grad():
            next_delta = td3_target_action(_Detached(self.actor_target, nxt), next_base, self.s.target_noise_std,
                                           self.s.target_noise_clip, base_action=None, generator=self.generator)
            next_action = (next_base + next_delta).clamp(lo, hi)
            target = td_target(self.critic_target, self.critic_features_target(nxt, next_base), next_action,
                               batch["reward"], batch["discount"], self.generator)
        feats = self.critic_features(obs, base)
        return td_loss(self.critic, feats, batch["action"].float().clamp(lo, hi), target), feats

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One critic update (and an actor update once warm-up is over); returns losses."""
        for k in ("reward", "discount", "action"):
            if not torch.isfinite(batch[k]).all():
                raise ValueError(f"residual learner: NaN/inf in batch['{k}'] (check the store's rewards and actions)")
        loss, _ = self._critic_loss(batch)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip([*self.critic.parameters(), *self.critic_features.parameters()])
        self.critic_opt.step()
        polyak_update(self.critic_target, self.critic, self.s.critic.tau)
        polyak_update(self.critic_features_target, self.critic_features, self.s.critic.tau)
        self.updates += 1
        out = {"critic_loss": float(loss.detach()) / self.critic.n_heads}
        if self.updates > self.s.critic_warmup_updates and self.updates % self.s.actor_every == 0:
            out["actor_loss"] = self._actor_update(batch)
        return out

    def _actor_update(self, batch: Mapping[str, Any]) -> float:
        obs = batch["obs"]
        base = obs[BASE_ACTION_KEY][:, -1].float()
        net = self.policy.net
        net.train()
        with torch.no_grad():  # the critic's encoder is trained by the critic only (DrQ)
            critic_feats = self.critic_features(obs, base)
        delta = net(obs, base)
        action = (base + delta).clamp(self.policy.config.low, self.policy.config.high)
        q = self.critic.q_mean(critic_feats, action)
        loss = self._actor_loss(q, base, delta, batch)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(net.parameters())
        self.actor_opt.step()
        net.eval()
        polyak_update(self.actor_target, net, self.s.actor_tau)
        return float(loss.detach())

    def _actor_loss(self, q: torch.Tensor, base: torch.Tensor, delta: torch.Tensor,
                    batch: Mapping[str, Any]) -> torch.Tensor:
        """-Q, or (with a regulariser) TD3+BC-style -Q/mean|Q| (scale-free) + weighted regularisers."""
        if self.s.residual_penalty <= 0 and self.s.demo_bc <= 0:
            return -q.mean()
        loss = -q.mean() / q.abs().mean().detach().clamp_min(1e-6)
        if self.s.residual_penalty > 0:  # pull towards the base
            loss = loss + self.s.residual_penalty * (delta / self.policy.config.action_scale).pow(2).mean()
        demo_bc = self.demo_bc_weight()
        if demo_bc > 0:  # pull towards the demonstrated action on demo rows
            mask = batch.get("bc_mask")
            if mask is None:
                raise ValueError("residual learner: demo_bc > 0 needs batch['bc_mask'] (which rows are demos)")
            if mask.any():  # the pre-clip action: its gradient also pulls a residual back from beyond the bound
                err = (base + delta - batch["action"].float())[mask].pow(2).sum(-1)
                loss = loss + demo_bc * err.mean()
        return loss

    def demo_bc_weight(self) -> float:
        """The demo BC weight at this update: ``demo_bc``, or fading linearly to 0 after the critic warm-up."""
        if self.s.demo_bc_decay_updates <= 0:
            return self.s.demo_bc
        done = max(0, self.updates - self.s.critic_warmup_updates)
        return self.s.demo_bc * max(0.0, 1.0 - done / self.s.demo_bc_decay_updates)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for a bit-exact resume (with the policy's own weights)."""
        return {
            "net": self.policy.net.state_dict(), "critic": self.critic.state_dict(),
            "critic_features": self.critic_features.state_dict(), "critic_target": self.critic_target.state_dict(),
            "critic_features_target": self.critic_features_target.state_dict(),
            "actor_target": self.actor_target.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "generator": self.generator.get_state(),
            "updates": torch.tensor(self.updates),
        }

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Inverse of ``state_dict``."""
        self.policy.net.load_state_dict(sd["net"])
        for name in ("critic", "critic_features", "critic_target", "critic_features_target", "actor_target",
                     "critic_opt", "actor_opt"):
            getattr(self, name).load_state_dict(sd[name])
        self.generator.set_state(sd["generator"])
        self.updates = int(sd["updates"])


class _Detached(nn.Module):
    """Adapts ``ResidualNet`` to the ``actor(features)`` call of ``td3_target_action`` (features = base action)."""

    def __init__(self, net: ResidualNet, obs: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.net, self.obs = net, obs
        self.action_scale = net.actor.action_scale

    def forward(self, base_action: torch.Tensor) -> torch.Tensor:
        return self.net(self.obs, base_action)


def relabel_residuals(base: Policy, episode: Mapping[str, np.ndarray], index: int = 0, seed: int = 0,
                      n_action_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(base's planned action, target residual = demo - base) for every frame of one demo episode.

    The base is reset and reseeded at the episode's start and executes its chunks (and its own per-step
    hook, if any) as the agents do.
    """
    from robot_learning.data.layout import EpisodeInfo, EpisodeMeta

    length = len(episode["action"])
    info = EpisodeInfo(index=index, start=0, end=length, length=length, meta=EpisodeMeta(), success=True,
                       start_time=0.0, duration=0.0, uid="", streams={})
    planned = planned_actions(base, n_action_steps, seed=seed)(info, episode)
    return planned, np.asarray(episode["action"], dtype=np.float32) - planned


def copy_policy(policy: ResidualPolicy) -> ResidualPolicy:
    """An independent copy of the residual around the same base (for evaluation while training)."""
    other = ResidualPolicy(policy.base, copy.deepcopy(policy.config), policy.device)
    other.net.load_state_dict(policy.net.state_dict())
    return other
