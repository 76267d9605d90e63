"""``rlstack train-critic``: an offline critic for value-guided steering (Cal-QL, or IQL), from the store.

Data: every committed episode of the given stores (successes and failures; mixed-quality experts,
policy rollouts), labelled by ``reward`` (default ``step_penalty``: -1 per step, 0 at the last step of a
success) through rl/replay.py with n-step targets and the store's terminal/truncated semantics.

- Cal-QL (Nakamoto et al. 2023): TD on the dataset's next action (the candidates a steering critic
  scores come from the base, not from an actor) + alpha * (logsumexp_j Q(s, a_j) - Q(s, a_data)), where
  the out-of-data actions a_j (uniform in the action box and other samples' actions) have their Q
  floored at the Monte-Carlo return -- the calibration that keeps the conservative Q on the scale of
  real returns.
- IQL (Kostrikov et al. 2021): expectile regression of V(s) on the target Q, Q(s, a) <- r + gamma^n V(s').

The critic is ``rl/vgps.py: SteeringCritic``: the frozen base's observation encoder (``net.features=base``,
camera features computed once per episode into the replay) or a fresh one trained through the critic
(``own``), + the LayerNorm ensemble of rl/critics.py with a Polyak target. Outputs in ``out_dir``:
``critic.pt`` (weights + spec/task/stats), ``vgps.pt`` (the composite base + critic that eval, serve and
deploy run), ``train.csv``, ``tb/``. Re-running with the same ``out_dir`` resumes exactly.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robot_learning.config import to_dataclass
from robot_learning.policies.base import Policy
from robot_learning.rl.critics import make_target, mlp, polyak_update
from robot_learning.rl.rewards import REWARDS
from robot_learning.rl.vgps import CriticNetConfig, SteeringCritic, VGPSConfig, make_vgps, validate_vgps
from robot_learning.train.checkpointing import check_resume_config, saved_threads, warn_thread_change

ALGOS = ("calql", "iql")
# settings a resumed critic run may change: its budget, logging, where it runs, the steering settings of vgps.pt
RESUME_MAY_CHANGE = ("steps", "out_dir", "log_every", "ckpt_every", "threads", "progress", "vgps")
CHUNK_KEY = "act_chunk"  # derived replay column: the executed chunk from each step (rows padded with the last)


@dataclass
class CriticTrainConfig:
    """``configs/rl/critic.yaml``."""

    base: str = ""  # base policy checkpoint (its spec and normalizer define the critic's inputs)
    data: list[str] = field(default_factory=list)  # episode stores (mixed quality, failures kept)
    out_dir: str = "runs/critic"
    task: str = ""  # the base's task ('' = from the stores' episodes when they agree)
    algo: str = "calql"  # calql | iql
    reward: str = "step_penalty"
    gamma: float = 0.98
    n_step: int = 1
    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-4
    tau: float = 0.005
    cql_alpha: float = 1.0
    cql_samples: int = 8  # out-of-data actions per state (half uniform, half other samples' actions)
    iql_expectile: float = 0.7
    log_every: int = 50
    ckpt_every: int = 500
    seed: int = 0
    threads: int = 1
    progress: bool = True
    net: CriticNetConfig = field(default_factory=CriticNetConfig)
    vgps: dict[str, Any] = field(default_factory=dict)  # steering settings written into vgps.pt (k, beta, ...)


def load_config(overrides: list[str]) -> CriticTrainConfig:
    """Compose ``configs/rl/critic.yaml`` with ``key=value`` overrides and validate it."""
    from omegaconf import OmegaConf

    from robot_learning.config import compose

    # configs/task is a config group, so Hydra reads task=<name> as a group choice: set it after composing
    task = [o.split("=", 1)[1] for o in overrides if o.startswith("task=")]
    rest = [o for o in overrides if not o.startswith("task=")]
    plain = OmegaConf.to_container(compose("rl/critic", rest))
    if task:
        plain["task"] = task[-1]
    return validate(to_dataclass(plain, CriticTrainConfig, "critic"))


def validate(cfg: CriticTrainConfig) -> CriticTrainConfig:
    """Raise ValueError naming every bad setting."""
    p = []
    if cfg.algo not in ALGOS:
        p.append(f"critic.algo '{cfg.algo}' is not one of {', '.join(ALGOS)}")
    if cfg.reward not in REWARDS:
        p.append(f"critic.reward '{cfg.reward}' is not one of {', '.join(REWARDS)}")
    if not 0 < cfg.gamma <= 1 or cfg.n_step < 1 or cfg.steps < 1 or cfg.batch_size < 2:
        p.append("critic: need 0 < gamma <= 1, n_step >= 1, steps >= 1, batch_size >= 2")
    if cfg.cql_alpha < 0 or cfg.cql_samples < 2 or not 0 < cfg.iql_expectile < 1:
        p.append("critic: need cql_alpha >= 0, cql_samples >= 2, 0 < iql_expectile < 1")
    if not cfg.data:
        p.append("critic.data: give at least one episode store (data=[a.zarr,b.zarr])")
    if not cfg.base:
        p.append("critic.base: give the base policy checkpoint the critic will steer")
    validate_vgps(to_dataclass(cfg.vgps, VGPSConfig, "critic.vgps"), "critic.vgps")
    if p:
        raise ValueError("; ".join(p))
    return cfg


def chunk_column(n: int) -> Any:
    """Derived column: actions t..t+n-1 flattened (the episode's last action repeats past its end)."""

    def column(info: Any, steps: dict[str, np.ndarray]) -> np.ndarray:
        a = np.asarray(steps["action"], dtype=np.float32)
        idx = np.minimum(np.arange(len(a))[:, None] + np.arange(n)[None], len(a) - 1)
        return a[idx].reshape(len(a), -1)

    column.inputs = ("action",)  # type: ignore[attr-defined]
    return column


class CriticLearner:
    """Cal-QL / IQL updates of a ``SteeringCritic`` on replay batches."""

    def __init__(self, critic: SteeringCritic, cfg: CriticTrainConfig) -> None:
        self.critic, self.cfg = critic, cfg
        self.target = make_target(critic)
        params = list(critic.parameters())
        self.value: nn.Module | None = None
        if cfg.algo == "iql":
            self.value = mlp(critic.q.feature_dim, critic.q.config.hidden_dims, 1)
            params += list(self.value.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.steps_per_action = critic.act_steps
        self.adim = critic.spec.action_dim

    def _actions(self, obs: dict[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        if self.steps_per_action == 1:
            return action
        return obs[CHUNK_KEY][:, -1].reshape(len(action), self.steps_per_action, self.adim)

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        """One gradient step; returns the losses and the mean Q."""
        obs, nxt = batch["obs"], batch["next_obs"]
        task = [self.cfg.task] * len(batch["reward"])
        act = self._actions(obs, batch["action"])
        feats = self.critic.encode(obs, task)
        q = self.critic(feats, act)  # (N, B)
        reward, disc = batch["reward"].float(), batch["discount"].float()
        out: dict[str, float] = {}
        if self.cfg.algo == "iql":
            assert self.value is not None
            with torch.no_grad():
                q_t = self.target(self.target.encode(obs, task), act).min(0).values
                v_next = self.value(self.critic.encode(nxt, task).detach()).squeeze(-1)
            v = self.value(feats.detach()).squeeze(-1)
            diff = q_t - v
            weight = torch.where(diff > 0, self.cfg.iql_expectile, 1 - self.cfg.iql_expectile)
            v_loss = (weight * diff.pow(2)).mean()
            td = F.mse_loss(q, (reward + disc * v_next).expand_as(q))
            loss = td + v_loss
            out["v_loss"] = float(v_loss.detach())
        else:
            next_act = self._actions(nxt, nxt["act_first"][:, -1]) if self.steps_per_action == 1 else \
                nxt[CHUNK_KEY][:, -1].reshape(len(reward), self.steps_per_action, self.adim)
            with torch.no_grad():
                q_next = self.target(self.target.encode(nxt, task), next_act).min(0).values
            td = F.mse_loss(q, (reward + disc * q_next).expand_as(q))
            cql = self._calql(feats, act, q, batch["mc_return"].float())
            loss = td + self.cfg.cql_alpha * cql
            out["cql"] = float(cql.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        polyak_update(self.target, self.critic, self.cfg.tau)
        out.update(td=float(td.detach()), loss=float(loss.detach()), q_mean=float(q.detach().mean()))
        return out

    def _calql(self, feats: torch.Tensor, act: torch.Tensor, q_data: torch.Tensor, mc: torch.Tensor) -> torch.Tensor:
        """Cal-QL regulariser: logsumexp over out-of-data actions (Q floored at the MC return) - Q(data)."""
        b, m = len(act), self.cfg.cql_samples
        lo, hi = self.critic.act_lo, self.critic.act_hi
        shape = (b, m // 2, *act.shape[1:])
        uni = lo + (hi - lo) * torch.rand(shape, generator=self.gen)
        perm = torch.stack([torch.randperm(b, generator=self.gen) for _ in range(m - m // 2)], 1)  # (B, m2)
        other = act[perm]
        cand = torch.cat([uni, other], 1)  # (B, m, ...)
        q_ood = self.critic(feats.repeat_interleave(m, 0), cand.reshape(b * m, *act.shape[1:]))
        q_ood = torch.maximum(q_ood.reshape(-1, b, m), mc[None, :, None])  # the calibration floor
        return (torch.logsumexp(q_ood, -1) - q_data).mean()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (weights_only-safe)."""
        return {"critic": self.critic.state_dict(), "target": self.target.state_dict(), "opt": self.opt.state_dict(),
                "value": self.value.state_dict() if self.value is not None else {},
                "gen": self.gen.get_state()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Inverse of ``state_dict``."""
        self.critic.load_state_dict(sd["critic"])
        self.target.load_state_dict(sd["target"])
        self.opt.load_state_dict(sd["opt"])
        if self.value is not None:
            self.value.load_state_dict(sd["value"])
        self.gen.set_state(sd["gen"])


def _replay(cfg: CriticTrainConfig, base: Policy, critic: SteeringCritic) -> Any:
    """Replay over the stores; a frozen (base) encoder's camera features are computed once per episode."""
    from robot_learning.rl.features import feature_key
    from robot_learning.rl.replay import MixedReplay, ReplaySource, camera_features

    act_steps = critic.act_steps
    derived = {"act_first": chunk_column(1)} if act_steps == 1 else {CHUNK_KEY: chunk_column(act_steps)}
    obs_keys = list(base.spec.obs_shapes)
    if critic.features.frozen:
        enc = critic.features.encoder
        derived.update({feature_key(k): camera_features(enc, k) for k in enc.image_keys})
        obs_keys = [k for k in obs_keys if k not in enc.image_keys]
    sources = {f"s{i}": ReplaySource(path, obs_keys, n_obs_steps=base.spec.n_obs_steps,
                                     n_step=cfg.n_step, gamma=cfg.gamma, reward=cfg.reward, derived=derived,
                                     name=path)
               for i, path in enumerate(cfg.data)}
    empty = [n for n, s in sources.items() if len(s) == 0]
    if len(empty) == len(sources):
        raise ValueError(f"critic.data: the stores {cfg.data} hold no transitions")
    return MixedReplay(sources, {n: float(len(s)) for n, s in sources.items()}, seed=cfg.seed)


def _stats(base: Policy, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        return dict(base.checkpoint().get("normalizer") or fallback or {})
    except NotImplementedError:  # an in-memory base (tests, scripted): statistics must be given
        if fallback is None:
            raise ValueError(f"base {type(base).__name__} cannot be saved and no normalizer stats were given") from None
        return dict(fallback)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    s = rng.bit_generator.state  # PCG64: plain ints, weights_only-safe
    return {"state": int(s["state"]["state"]), "inc": int(s["state"]["inc"]),
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def _set_rng(rng: np.random.Generator, d: dict[str, Any]) -> None:
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {"state": d["state"], "inc": d["inc"]},
                               "has_uint32": d["has_uint32"], "uinteger": d["uinteger"]}


@dataclass
class TrainResult:
    """What ``train`` produced."""

    critic: SteeringCritic
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    composite: Path | None  # None when the base cannot be saved (an in-memory base)


def train(cfg: CriticTrainConfig, base: Policy | None = None, stats: dict[str, Any] | None = None) -> TrainResult:
    """Train (or resume) the critic; writes critic.pt and (for a saveable base) the vgps.pt composite."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from robot_learning.policies.checkpoint import atomic_save, load_policy
    from robot_learning.train.metrics import write_csv

    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    base = base or load_policy(cfg.base)
    critic = SteeringCritic.on_base(base, cfg.net, _stats(base, stats))
    learner = CriticLearner(critic, cfg)
    replay = _replay(cfg, base, critic)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path, rows, step = out / "train_state.pt", [], 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        check_resume_config(st.get("config"), asdict(cfg), f"rlstack train-critic out_dir={cfg.out_dir}",
                            may_change=RESUME_MAY_CHANGE)
        warn_thread_change(saved_threads(st.get("config")), str(state_path))
        learner.load_state_dict(st["learner"])
        _set_rng(replay.rng, st["replay_rng"])
        rows, step = list(st["rows"]), int(st["step"])
    tb = SummaryWriter(str(out / "tb"), purge_step=step or None)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train-critic {cfg.algo}", disable=not cfg.progress)
    while step < cfg.steps:
        losses = learner.update(replay.sample(cfg.batch_size))
        step += 1
        bar.update(1)
        if not all(math.isfinite(v) for v in losses.values()):
            raise ValueError(f"critic diverged at step {step}: {losses} (lower lr or cql_alpha)")
        if step % cfg.log_every == 0 or step == cfg.steps:
            rows.append({"step": step, **losses})
            for k, v in losses.items():
                tb.add_scalar(f"critic/{k}", v, step)
            bar.set_postfix(td=f"{losses['td']:.3f}", q=f"{losses['q_mean']:.2f}")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            atomic_save({"learner": learner.state_dict(), "replay_rng": _rng_state(replay.rng), "rows": rows,
                         "step": step, "config": asdict(cfg)}, state_path)
            write_csv(out / "train.csv", rows)
    bar.close()
    tb.close()
    meta = critic_meta(cfg, critic)
    atomic_save({"meta": meta, "state_dict": critic.state_dict()}, out / "critic.pt")
    path: Path | None = out / "vgps.pt"
    try:
        make_vgps(base, critic, meta, **cfg.vgps).save(path)
    except NotImplementedError:
        path = None
    critic.eval()
    return TrainResult(critic, meta, rows, path)


def critic_meta(cfg: CriticTrainConfig, critic: SteeringCritic) -> dict[str, Any]:
    """What the composite records about the critic (checked against the base at load time)."""
    return {"net": asdict(critic.net_config), "spec": critic.spec.to_dict(), "task": cfg.task,
            "stats": _plain(critic.features.encoder.normalizer.stats), "algo": cfg.algo, "gamma": cfg.gamma,
            "reward": cfg.reward}


def _plain(stats: Any) -> Any:
    from robot_learning.policies.normalizer import stats_to_plain

    return stats_to_plain(stats)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``rlstack train-critic`` arguments."""
    parser.description = ("Train an offline critic (Cal-QL or IQL) on mixed-quality episodes and write vgps.pt, "
                          "the value-guided steering composite (base + critic) that rlstack eval/serve/deploy run. "
                          "Config: configs/rl/critic.yaml; every key can be overridden. Same out_dir = exact resume.")
    parser.epilog = ("example: rlstack train-critic base=runs/bc/policy.pt 'data=[data/mixed.zarr]' task=lift "
                     "algo=calql steps=3000 vgps.k=10 out_dir=runs/critic/lift")
    parser.add_argument("overrides", nargs="*", help="key=value (e.g. algo=iql net.score=chunk steps=5000)")
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``rlstack train-critic``."""
    cfg = load_config(list(args.overrides))
    if args.cfg:
        print(asdict(cfg))
        return 0
    for p in [cfg.base, *cfg.data]:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p}: no such file or store")
    res = train(cfg)
    path, last = res.composite, (res.rows[-1] if res.rows else {})
    print(f"critic ({cfg.algo}) after {cfg.steps} steps: td {last.get('td', float('nan')):.4f}, "
          f"mean Q {last.get('q_mean', float('nan')):.2f}; steering composite: {path}")
    return 0
