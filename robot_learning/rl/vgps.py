"""Value-guided policy steering (V-GPS, Nakamoto et al. 2024): an offline critic re-ranks K sampled chunks.

``VGPSPolicy`` is a registered wrapper (composite checkpoint: the frozen base + the critic). At every
re-plan it asks the base for K candidate chunks in one batched ``sample_chunks`` call, scores all K
with the critic in one batched pass (the observation is encoded once, the K actions go through the
ensemble together), and executes the argmax (``beta = 0``) or a sample of softmax(Q / beta).
``selection: random`` picks uniformly among the K instead: the control that must give no gain.

Observation features (``CriticNetConfig.features``): ``base`` (default) -- the critic sits on the
frozen base's own observation encoder (its weights copied into the critic at training). When the
base runs in this process with those weights, one ``sample_chunks_with_features`` call encodes the
observation once for both: the base conditions its K samples on it and the critic scores them from
it, so steering adds only the critic's MLP to the base's chunk cost. With a remote base (``rlstack
serve``) the critic runs its copy of the encoder locally. ``own`` -- a fresh encoder trained through
the critic (e.g. a base with no encoder).

What is scored (``CriticNetConfig.score``, fixed when the critic is trained): ``first`` -- the chunk's
first action (the paper's choice), ``chunk`` -- the executed part of the chunk (``n_action_steps``
actions flattened), for a critic trained on action chunks with ``n_step = n_action_steps``.

Refused at load time: a critic trained for another observation/action spec or task than the base,
non-finite critic weights; NaN scores at run time raise instead of steering with garbage. A base
that returns K identical chunks is deterministic: steering cannot help, which is warned once.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robot_learning.config import to_dataclass
from robot_learning.policies.base import ChunkResult, Policy, PolicySpec, check_spec_matches
from robot_learning.policies.composite import WrapperPolicy
from robot_learning.policies.encoders import EncoderConfig
from robot_learning.policies.registry import register_policy
from robot_learning.rl.critics import CriticConfig, CriticEnsemble
from robot_learning.rl.features import ObsFeatures

SCORES = ("first", "chunk")
SELECTIONS = ("vgps", "random")
FEATURES = ("base", "own")


@dataclass
class CriticNetConfig:
    """Architecture of the steering critic (stored in the composite so it can be rebuilt)."""

    score: str = "first"  # first | chunk
    features: str = "base"  # base: the frozen base's encoder (shared at run time) | own: trained through the critic
    encoder: dict[str, Any] = field(default_factory=lambda: {"width": 8, "keypoints": 8, "feature_dim": 16})
    ensemble: dict[str, Any] = field(default_factory=lambda: {"n_heads": 2, "hidden_dims": [256, 256],
                                                              "target_subset": 2})
    tasks: list[str] = field(default_factory=list)  # conditioning hook: one-hot of the episode's task


@dataclass
class VGPSConfig:
    """Steering hyper-parameters (``configs/rl/vgps.yaml``) plus the critic's identity (filled by the trainer)."""

    k: int = 10  # candidate chunks per re-plan
    beta: float = 0.0  # 0 = argmax; > 0 = sample softmax(Q / beta)
    selection: str = "vgps"  # vgps | random (the control)
    aggregate: str = "mean"  # how the ensemble's heads make one score: mean | min
    deterministic_tol: float = 1e-6  # max |difference| between candidates below which the base is deterministic
    seed: int = 0
    critic: dict[str, Any] = field(default_factory=dict)  # {net, spec, task, stats, algo}: written by train-critic


def validate_vgps(cfg: VGPSConfig, where: str = "vgps") -> VGPSConfig:
    """Raise ValueError naming every bad steering setting."""
    problems = []
    if cfg.k < 1:
        problems.append(f"{where}.k must be >= 1, got {cfg.k}")
    if not (cfg.beta >= 0 and math.isfinite(cfg.beta)):
        problems.append(f"{where}.beta must be a finite number >= 0, got {cfg.beta}")
    if cfg.selection not in SELECTIONS:
        problems.append(f"{where}.selection '{cfg.selection}' is not one of {', '.join(SELECTIONS)}")
    if cfg.aggregate not in ("mean", "min"):
        problems.append(f"{where}.aggregate '{cfg.aggregate}' is not one of mean, min")
    if cfg.deterministic_tol < 0:
        problems.append(f"{where}.deterministic_tol must be >= 0")
    if problems:
        raise ValueError("; ".join(problems))
    return cfg


def _action_bounds(stats: Mapping[str, Any], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = stats.get("action") or {}
    lo = torch.as_tensor(a.get("min", [-1.0] * dim), dtype=torch.float32)
    hi = torch.as_tensor(a.get("max", [1.0] * dim), dtype=torch.float32)
    return lo, torch.where(hi - lo > 1e-6, hi, lo + 1.0)  # near-constant dims shifted, not scaled


class SteeringCritic(nn.Module):
    """``Q(obs history, action or executed chunk, task)`` for every ensemble head: (N, B)."""

    def __init__(self, spec: PolicySpec, net: CriticNetConfig, stats: Mapping[str, Any]) -> None:
        super().__init__()
        if net.score not in SCORES:
            raise ValueError(f"critic.score '{net.score}' is not one of {', '.join(SCORES)}")
        if net.features not in FEATURES:
            raise ValueError(f"critic.features '{net.features}' is not one of {', '.join(FEATURES)}")
        self.spec, self.net_config = spec, net
        self.features = ObsFeatures.build(spec, to_dataclass(net.encoder, EncoderConfig, "critic.encoder"), stats,
                                          frozen=net.features == "base")
        self.act_steps = 1 if net.score == "first" else spec.n_action_steps
        self.task_index = {t: i for i, t in enumerate(net.tasks)}
        ens = to_dataclass(net.ensemble, CriticConfig, "critic.ensemble")
        self.q = CriticEnsemble(self.features.out_dim + len(net.tasks), spec.action_dim * self.act_steps, ens)
        lo, hi = _action_bounds(stats, spec.action_dim)
        self.register_buffer("act_lo", lo)
        self.register_buffer("act_hi", hi)

    @classmethod
    def on_base(cls, base: Policy, net: CriticNetConfig, stats: Mapping[str, Any]) -> SteeringCritic:
        """A critic for ``base``; with ``net.features = base`` it gets a frozen copy of the base's encoder."""
        if net.features != "base":
            return cls(base.spec, net, stats)
        enc = base_encoder(base)
        if enc is None:
            raise ValueError(f"critic.net.features=base needs a base with an observation encoder (a trained "
                             f"network); {type(base).__name__} has none: use net.features=own")
        net = dataclasses.replace(net, encoder=dataclasses.asdict(enc.cfg))
        critic = cls(base.spec, net, dict(enc.normalizer.stats))
        critic.features.encoder.load_state_dict(enc.state_dict())
        return critic

    def encode(self, obs: Mapping[str, torch.Tensor], task: Sequence[str] | None = None) -> torch.Tensor:
        """Observation (+ task one-hot) features (B, F)."""
        return self.with_task(self.features(obs), task)

    def with_task(self, feats: torch.Tensor, task: Sequence[str] | None = None) -> torch.Tensor:
        """Observation features (B, F_obs) -> critic features (task one-hot appended when conditioned)."""
        if self.task_index:
            onehot = torch.zeros(feats.shape[0], len(self.task_index), device=feats.device)
            for i, t in enumerate(task or []):
                if t in self.task_index:  # an unknown task gets the all-zero code
                    onehot[i, self.task_index[t]] = 1.0
            feats = torch.cat([feats, onehot], -1)
        return feats

    def action_input(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, A) or (B, >= act_steps, A) robot-unit actions -> normalized, flattened critic input."""
        if actions.dim() == 2:
            actions = actions.unsqueeze(1)
        if actions.shape[1] < self.act_steps:
            raise ValueError(f"critic scores {self.act_steps} actions, got chunks of {actions.shape[1]}")
        a = actions[:, : self.act_steps].float()
        a = 2 * (a - self.act_lo) / (self.act_hi - self.act_lo) - 1
        return a.reshape(a.shape[0], -1)

    def forward(self, feats: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of every head (N, B) for features (B, F) and robot-unit actions/chunks."""
        return self.q(feats, self.action_input(actions))


def build_critic(critic_meta: Mapping[str, Any]) -> SteeringCritic:
    """The critic described by a ``VGPSConfig.critic`` entry (weights not loaded)."""
    net = to_dataclass(critic_meta.get("net") or {}, CriticNetConfig, "critic.net")
    return SteeringCritic(PolicySpec.from_dict(critic_meta["spec"]), net, critic_meta.get("stats") or {})


def base_encoder(base: Policy) -> nn.Module | None:
    """The observation encoder of a local network base (``ModelPolicy``), else None."""
    enc = getattr(getattr(base, "model", None), "encoder", None)
    return enc if isinstance(enc, nn.Module) and hasattr(enc, "cfg") else None


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa)


def base_task(base: Policy) -> str | None:
    """The task a base was trained for, where its checkpoint records one (``task`` or ``config.task``)."""
    try:
        ckpt = base.checkpoint()
    except NotImplementedError:
        return None
    for holder in (ckpt, ckpt.get("config") or {}, (ckpt.get("config") or {}).get("data") or {}):
        task = holder.get("task") if isinstance(holder, Mapping) else None
        if isinstance(task, Mapping):
            task = task.get("name")
        if isinstance(task, str) and task:
            return task
    return None


@register_policy("vgps")
class VGPSPolicy(WrapperPolicy):
    """Sample K chunks from the base, score them with the critic, execute the best (or a softmax sample)."""

    config_cls = VGPSConfig

    def __init__(self, base: Policy, config: VGPSConfig | None = None, device: str | torch.device = "cpu",
                 critic: SteeringCritic | None = None) -> None:
        super().__init__(base, validate_vgps(config or VGPSConfig()), device)
        meta = self.config.critic
        if not meta:
            raise ValueError("vgps: no critic (train one with `rlstack train-critic`, which writes the composite)")
        check_spec_matches(PolicySpec.from_dict(meta["spec"]), base.spec, "base policy (critic was trained for "
                           "another spec)")
        task, btask = meta.get("task"), base_task(base)
        if task and btask and task != btask:
            raise ValueError(f"vgps: the critic was trained for task '{task}', the base policy for '{btask}'")
        self.critic = (critic or build_critic(meta)).to(self.device).eval()
        self.task = task
        self._task_code = self.critic.with_task(torch.zeros(1, 0, device=self.device), [task or ""])
        self.shared_features = self._shares_encoder()
        self.rng = np.random.default_rng(self.config.seed)
        self._warned_deterministic = False
        self._identical = 0

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The critic's weights."""
        return self.critic.state_dict()

    def load_own_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the critic, refusing non-finite weights."""
        bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"vgps: critic weights {bad[:3]} contain NaN/inf (a diverged critic cannot steer)")
        self.critic.load_state_dict(state_dict)
        self.shared_features = self._shares_encoder()

    def _shares_encoder(self) -> bool:
        """Whether the base's own observation features are the critic's (one encoding for both)."""
        enc = base_encoder(self.base)
        return (self.critic.net_config.features == "base" and enc is not None
                and hasattr(self.base, "sample_chunks_with_features") and _same_weights(enc, self.critic.features.encoder))

    def reseed(self, seed: int) -> None:
        """Reseed the base and the selection noise."""
        super().reseed(seed)
        self.rng = np.random.default_rng([self.config.seed, int(seed) & 0xFFFFFFFF])

    def reseed_from(self, obs_history: dict[str, np.ndarray]) -> None:
        """Content-seed the base and the selection noise (softmax / random choice)."""
        super().reseed_from(obs_history)
        crc = 0
        for key in sorted(obs_history):
            crc = zlib.crc32(np.ascontiguousarray(obs_history[key]).tobytes(), crc)
        self.rng = np.random.default_rng([self.config.seed, crc])

    @torch.inference_mode()
    def score(self, obs_history: Mapping[str, np.ndarray], chunks: np.ndarray,
              obs_features: torch.Tensor | None = None) -> np.ndarray:
        """Critic scores (K,) of candidate chunks (K, H, A) for one observation history, in one batched pass;
        ``obs_features`` (1, F): the base's encoding of it, when shared (then the critic does not encode)."""
        if obs_features is None:
            obs = {k: torch.as_tensor(np.asarray(obs_history[k]))[None].to(self.device) for k in self.spec.obs_shapes}
            obs_features = self.critic.features(obs)
        feats = torch.cat([obs_features.to(self.device).float(), self._task_code], -1)
        k = len(chunks)
        q = self.critic(feats.expand(k, -1), torch.as_tensor(np.asarray(chunks), dtype=torch.float32, device=self.device))
        s = q.mean(0) if self.config.aggregate == "mean" else q.min(0).values
        out = s.cpu().numpy().astype(np.float64)
        if not np.isfinite(out).all():
            raise ValueError(f"vgps: critic produced non-finite scores {out.tolist()} (refusing to steer)")
        return out

    def choose(self, scores: np.ndarray) -> int:
        """Index of the executed candidate: argmax, softmax(Q / beta) sample, or uniform (control)."""
        if self.config.selection == "random":
            return int(self.rng.integers(len(scores)))
        if self.config.beta == 0:
            return int(np.argmax(scores))
        z = (scores - scores.max()) / self.config.beta
        p = np.exp(z) / np.exp(z).sum()
        return int(self.rng.choice(len(scores), p=p))

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """The selected chunk."""
        return self.predict_chunk_with_info(obs_history).actions

    def predict_chunk_with_info(self, obs_history: dict[str, np.ndarray]) -> ChunkResult:
        """Selected chunk; ``info`` carries every candidate's score, the choice and the spread."""
        feats = None
        if self.shared_features:
            chunks, feats = self.base.sample_chunks_with_features(obs_history, self.config.k)  # type: ignore[attr-defined]
        else:
            chunks = np.asarray(self.base.sample_chunks(obs_history, self.config.k))
        if chunks.shape[0] != self.config.k:
            raise ValueError(f"vgps: base returned {chunks.shape[0]} candidates, asked for {self.config.k}")
        spread = float(np.abs(chunks - chunks[:1]).max()) if len(chunks) > 1 else 0.0
        # identical candidates once can be chance (all K from one mode); three re-plans in a row is a
        # deterministic base
        self._identical = self._identical + 1 if len(chunks) > 1 and spread <= self.config.deterministic_tol else 0
        if self._identical >= 3:
            self._warn_deterministic()
        scores = self.score(obs_history, chunks, feats)
        i = self.choose(scores)
        return ChunkResult(chunks[i], {"vgps_scores": scores.tolist(), "vgps_choice": i,
                                       "vgps_candidate_spread": spread, "vgps_shared_features": self.shared_features})

    def _warn_deterministic(self) -> None:
        if not self._warned_deterministic:
            self._warned_deterministic = True
            warnings.warn(f"vgps: the base policy ({type(self.base).__name__}) returned {self.config.k} identical "
                          "chunks: it is deterministic, so steering cannot help (use a stochastic base)",
                          stacklevel=3)

    def check_stochastic(self, obs_history: dict[str, np.ndarray]) -> bool:
        """Whether the base gives distinct candidates for ``obs_history`` (warns if not); call at load time."""
        chunks = np.asarray(self.base.sample_chunks(obs_history, max(2, self.config.k)))
        ok = float(np.abs(chunks - chunks[:1]).max()) > self.config.deterministic_tol
        if not ok:
            self._warn_deterministic()
        return ok

    def sample_chunks(self, obs_history: dict[str, np.ndarray], k: int) -> np.ndarray:
        """``k`` steered chunks (each from its own K candidates)."""
        return np.stack([self.predict_chunk(obs_history) for _ in range(k)])


def make_vgps(base: Policy, critic: SteeringCritic, critic_meta: Mapping[str, Any], **settings: Any) -> VGPSPolicy:
    """A steering wrapper from a trained critic (``critic_meta``: {net, spec, task, stats, algo})."""
    cfg = to_dataclass({**settings, "critic": dict(critic_meta)}, VGPSConfig, "vgps")
    return VGPSPolicy(base, cfg, critic=critic)
