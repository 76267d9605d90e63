"""``rlstack finetune method=residual base=... task=lift robot=sim``: refine a frozen base in sim.

One process runs the actor loop (the in-process PyBullet env, ``sim.make_env``) and the learner in
turns: collect one episode, commit it to the run's episode store (``source=policy``, the residual's
version in ``policy_id``, the step schema of data/layout.py plus the base's planned action), refresh
replay, run ``utd_ratio x steps`` updates (after the warm-up episodes, first ``critic_warmup_updates``
critic-only updates in one block). With the frozen base encoder (``residual.encoder=base``) replay
holds each camera's per-frame features (``feat/<camera>``, computed once per loaded episode), not its
images. Evaluation (fixed unseen seeds, Wilson 95 % CI) every
``eval_every`` env steps; the first evaluation, before any update, is the base itself (zero-init).

Outputs under ``out_dir``: ``policy.pt`` (the composite checkpoint, runs unchanged under ``rlstack
eval``), ``policy_best.pt`` (the composite of the latest evaluation with the highest success so far:
chosen on the evaluation seeds, so judge it on other seeds), ``online.zarr``, ``checkpoints/latest.pt``
(exact resume after a kill: learner, optimizers, RNG streams, replay sampler, counters), ``eval.csv``,
``train.csv``, ``tb/``, ``curve.png``.

Orchestration on top of core and sim (like rlstack eval), so ``sim`` is imported inside functions.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_learning.config import to_dataclass
from robot_learning.policies.perturbed import PerturbedConfig, PerturbedPolicy
from robot_learning.rl.actors import UTDSchedule
from robot_learning.rl.config import RLParts, validate_parts
from robot_learning.rl.features import feature_key
from robot_learning.rl.replay import (
    EpisodeFilter,
    MixedReplay,
    ReplaySource,
    camera_features,
    planned_actions,
)
from robot_learning.rl.residual import (
    BASE_ACTION_KEY,
    LearnerSettings,
    ResidualConfig,
    ResidualLearner,
    ResidualPolicy,
)
from robot_learning.stats import wilson_interval
from robot_learning.train.checkpointing import check_resume_config, saved_threads, warn_thread_change
from robot_learning.train.metrics import write_csv

PLANNED_KEY = "planned_action"  # store key of the base's planned action (replay derives base_action from it)
METHODS = ("residual",)
# settings a resumed run may change: the budget (to continue a run further), where it runs and how it reports
RESUME_MAY_CHANGE = ("env_steps", "out_dir", "device", "threads", "progress", "keep_eval_policies")
EVAL_FIELDS = ("env_steps", "episodes", "updates", "wall_s", "successes", "n", "rate", "ci_low", "ci_high",
               "residual_mean_abs")


@dataclass
class FinetuneConfig:
    """``configs/rl/residual.yaml`` without the shared RL parts (validated by ``validate_parts``)."""

    base: str
    method: str = "residual"
    task: str = "lift"
    robot: str = "sim"
    demos: str | None = None
    out_dir: str = "runs/finetune/residual"
    seed: int = 0
    env_steps: int = 50000
    warmup_episodes: int = 10
    warmup_noise_std: float = 0.1
    residual_penalty: float = 0.0  # > 0: pull the residual towards 0 (actor loss -Q/mean|Q| + w * (res/scale)^2)
    demo_bc: float = 0.0  # > 0: pull the executed action towards the demo's on demo rows (TD3+BC; needs demos)
    demo_bc_decay_updates: int = 0  # > 0: demo_bc fades linearly to 0 over this many updates after the warm-up
    from_scratch: bool = False  # the RL-from-scratch baseline: the base's actions dropped (see load_config)
    eval_every: int = 2000
    eval_episodes: int = 50
    eval_seed: int = 100_000_000
    max_steps: int | None = None
    image_size: int | None = None
    device: str = "cpu"
    threads: int = 1
    progress: bool = True
    keep_eval_policies: bool = False  # also keep each evaluation's composite as policies/policy_<env_steps>.pt
    residual: ResidualConfig = field(default_factory=ResidualConfig)


def load_config(overrides: list[str]) -> tuple[FinetuneConfig, RLParts]:
    """Compose ``configs/rl/<method>.yaml`` with overrides and validate it."""
    from omegaconf import OmegaConf

    from robot_learning.config import compose

    method = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "residual")
    if method not in METHODS:
        raise ValueError(f"method={method}: choose from {', '.join(METHODS)}")
    # configs/task/ is a config group, so Hydra would read task=lift as a group choice: set these keys after
    plain = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in ("task", "robot")}
    cfg = compose(f"rl/{method}", [o for o in overrides if o.split("=", 1)[0] not in plain])
    for key, value in plain.items():
        OmegaConf.update(cfg, key, value)
    parts = validate_parts(cfg, where=method)
    own = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in ("replay", "critic", "actor", "learner")}
    fc = to_dataclass(own, FinetuneConfig, where=method)
    if fc.robot != "sim":
        raise ValueError(f"robot={fc.robot}: only robot=sim is supported by rlstack finetune for now")
    if fc.env_steps < 1 or fc.eval_every < 1 or fc.eval_episodes < 1 or fc.warmup_episodes < 0:
        raise ValueError(f"{method}: need env_steps, eval_every, eval_episodes >= 1 and warmup_episodes >= 0")
    if fc.from_scratch and (fc.residual.action_scale < 1.0 or fc.residual_penalty > 0):
        raise ValueError(f"{method}: from_scratch=true makes the actor the whole policy (its base acts 0): it needs "
                         f"residual.action_scale >= 1 to reach the action range and residual_penalty=0, got "
                         f"action_scale={fc.residual.action_scale}, residual_penalty={fc.residual_penalty}")
    if fc.residual_penalty < 0 or fc.demo_bc < 0 or fc.demo_bc_decay_updates < 0:
        raise ValueError(f"{method}: residual_penalty, demo_bc and demo_bc_decay_updates must be >= 0, got "
                         f"{fc.residual_penalty}, {fc.demo_bc}, {fc.demo_bc_decay_updates}")
    if fc.demo_bc > 0 and not fc.demos:
        raise ValueError(f"{method}: demo_bc={fc.demo_bc} pulls towards demonstrated actions: set demos=<episode store>")
    return fc, parts


def learner_settings(parts: RLParts, cfg: FinetuneConfig) -> LearnerSettings:
    """The learner's view of the shared parts (and the method's own actor regularisers from ``cfg``)."""
    a, lr = parts.actor, parts.learner
    if a.kind != "td3":
        raise ValueError(f"residual: actor.kind={a.kind} is not implemented (td3 only)")
    return LearnerSettings(critic=parts.critic, actor_lr=a.lr, target_noise_std=a.target_noise_std,
                           target_noise_clip=a.target_noise_clip, critic_warmup_updates=lr.critic_warmup_updates,
                           actor_every=lr.actor_every, actor_tau=parts.critic.tau, grad_clip=lr.grad_clip, seed=lr.seed,
                           residual_penalty=cfg.residual_penalty, demo_bc=cfg.demo_bc,
                           demo_bc_decay_updates=cfg.demo_bc_decay_updates)


def make_env(cfg: FinetuneConfig, spec: Any) -> Any:
    """The sim env matching the base's inputs (cameras and resolution from its spec)."""
    from robot_learning.eval.policy_agent import check_policy_against_robot
    from sim import make_env as sim_env

    cams = tuple(k.removeprefix("camera_") for k in spec.image_keys)
    size = cfg.image_size or (spec.obs_shapes[spec.image_keys[0]][0] if cams else None)
    kwargs: dict[str, Any] = {"cameras": cams, "render": bool(cams)}
    if size:
        kwargs["image_size"] = int(size)
    env = sim_env(cfg.task, max_steps=cfg.max_steps, **kwargs)
    check_policy_against_robot(spec, env.robot.spec, where=f"sim robot for task {cfg.task}")
    return env


def run_episode(env: Any, agent: Any, seed: int, record: bool) -> tuple[dict[str, np.ndarray] | None, bool, int, float]:
    """One episode; returns (per-step arrays or None, success, length, mean |residual|)."""
    obs, _ = env.reset(seed=seed)
    agent.reset(seed)
    hook = agent.policy.hook
    keys = list(agent.spec.obs_shapes)
    rows: dict[str, list] = {k: [] for k in [*keys, "action", PLANNED_KEY, "reward", "done", "terminal"]}
    res, success, steps = 0.0, False, 0
    while True:
        action = agent.act(obs)
        nxt, reward, terminated, truncated, info = env.step(action)
        steps += 1
        res += float(np.abs(hook.last_residual).mean())
        if record:
            for k in keys:
                rows[k].append(obs[k])
            rows["action"].append(np.asarray(action, np.float32))
            rows[PLANNED_KEY].append(np.asarray(hook.last_planned, np.float32))
            rows["reward"].append(np.float32(reward))
            rows["done"].append(bool(terminated or truncated))
            rows["terminal"].append(bool(terminated))
        obs, success = nxt, bool(info["success"])
        if terminated or truncated:
            break
    data = {k: np.stack(v) for k, v in rows.items()} if record else None
    return data, success, steps, res / max(steps, 1)


class _FirstCopy:
    """Replay filter: committed training episodes below ``limit``, first copy per episode number.

    A run killed between committing an episode and saving its checkpoint re-collects that episode
    on resume (bit-identical); the orphan copy is kept out until the run reaches it again.
    """

    def __init__(self) -> None:
        self.limit = 0
        self.first: dict[int, str] = {}

    def __call__(self, info: Any) -> bool:
        k = int(info.meta.tags.get("episode", -1))
        return 0 <= k < self.limit and self.first.setdefault(k, info.uid) == info.uid


class Finetuner:
    """State of one residual fine-tuning run (actor loop + learner + evaluation + checkpoints)."""

    def __init__(self, cfg: FinetuneConfig, parts: RLParts, base: Any = None, env: Any = None) -> None:
        """``base``/``env`` replace the checkpoint and the sim env built from the config (tests, scripted bases)."""
        from robot_learning.data.store import EpisodeStore
        from robot_learning.eval.policy_agent import PolicyAgent
        from robot_learning.policies.checkpoint import load_policy

        torch.set_num_threads(max(1, cfg.threads))
        torch.manual_seed(cfg.seed)
        self.cfg, self.parts = cfg, parts
        self.out = Path(cfg.out_dir)
        (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.base = base if base is not None else load_policy(cfg.base, device=cfg.device, seed=cfg.seed)
        if cfg.from_scratch:  # RLPD-style baseline on the same machinery: only the base's interface and encoder stay
            self.base = PerturbedPolicy(self.base, PerturbedConfig(scale=0.0), device=cfg.device)
        self.policy = ResidualPolicy(self.base, cfg.residual, device=cfg.device)
        self.learner = ResidualLearner(self.policy, learner_settings(parts, cfg))
        self.env = env if env is not None else make_env(cfg, self.base.spec)
        self.agent = PolicyAgent(self.policy)
        self.store = EpisodeStore.open(str(self.out / "online.zarr"), mode="a")
        self.filter = _FirstCopy()
        self.replay: MixedReplay | None = None  # built once the online store has its first episode (its keys)
        self._replay_rng: dict[str, Any] | None = None
        self.utd = UTDSchedule(parts.learner.utd_ratio)
        self.env_steps = self.episodes = 0
        self.wall = 0.0
        self.eval_rows: list[dict[str, Any]] = []
        self.train_rows: list[dict[str, Any]] = []

    def _replay(self) -> MixedReplay:
        r = self.parts.replay
        keys = list(self.base.spec.obs_shapes)
        cached: dict[str, Any] = {}
        if self.policy.encoder is not None and r.cache_features:  # frozen base encoder: features once per frame
            cached = {feature_key(c): camera_features(self.policy.encoder, c, device=self.cfg.device)
                      for c in self.policy.config.cameras}
            keys = [k for k in keys if k not in self.policy.config.cameras]  # images stay in the store only
        common = {"obs_keys": keys, "n_obs_steps": self.base.spec.n_obs_steps, "n_step": r.n_step, "gamma": r.gamma,
                  "reward": r.reward}
        stored_plan = _stored_column(PLANNED_KEY)
        sources = {"online": ReplaySource(self.store, derived={BASE_ACTION_KEY: stored_plan, **cached}, name="online",
                                          filter=EpisodeFilter(source="policy", predicate=self.filter), **common)}
        if self.cfg.demos:
            if not Path(self.cfg.demos).exists() and "://" not in self.cfg.demos:
                raise FileNotFoundError(f"demos={self.cfg.demos}: no such episode store")
            relabel = planned_actions(self.base, seed=self.cfg.seed)  # target residual = demo - base
            sources["demo"] = ReplaySource(self.cfg.demos, derived={BASE_ACTION_KEY: relabel, **cached}, name="demo",
                                           filter=EpisodeFilter(success=True), **common)
            if len(sources["demo"]) == 0:
                raise ValueError(f"demos={self.cfg.demos}: no successful episodes to learn from")
        ratios = {n: r.ratios.get(n, 0.0) for n in sources}
        if sum(ratios.values()) <= 0:
            ratios = {n: 1.0 for n in sources}
        return MixedReplay(sources, ratios, seed=self.parts.learner.seed)

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self) -> Path:
        """Where the resume state lives."""
        return self.out / "checkpoints" / "latest.pt"

    def save(self) -> None:
        """Atomically write the resume state."""
        from robot_learning.policies.checkpoint import atomic_save

        state = {"learner": self.learner.state_dict(), "env_steps": self.env_steps, "episodes": self.episodes,
                 "wall": self.wall, "utd_credit": self.utd._credit, "eval_rows": self.eval_rows,
                 "train_rows": self.train_rows,
                 "replay_rng": _rng_state(self.replay.rng) if self.replay is not None else {},
                 "config": self._settings()}
        atomic_save(state, self.ckpt_path)

    def _settings(self) -> dict[str, Any]:
        """Everything that shapes the run (its own config and the RL parts), as resume compares it."""
        return {**asdict(self.cfg), **asdict(self.parts)}

    def resume(self) -> bool:
        """Load ``checkpoints/latest.pt`` if present; returns whether it did."""
        if not self.ckpt_path.exists():
            return False
        state = torch.load(self.ckpt_path, weights_only=True)
        check_resume_config(state.get("config"), self._settings(), f"rlstack finetune out_dir={self.cfg.out_dir}",
                            may_change=RESUME_MAY_CHANGE)
        warn_thread_change(saved_threads(state.get("config")), str(self.ckpt_path))
        self.learner.load_state_dict(state["learner"])
        self.env_steps, self.episodes, self.wall = int(state["env_steps"]), int(state["episodes"]), float(state["wall"])
        self.utd._credit = float(state["utd_credit"])
        self.eval_rows, self.train_rows = list(state["eval_rows"]), list(state["train_rows"])
        self.filter.limit = self.episodes
        if state["replay_rng"]:
            self.replay = self._replay()
            self.replay.rng.bit_generator.state = _rng_from(state["replay_rng"])
        return True

    # ------------------------------------------------------------------------------ the loop
    def train_episode(self) -> dict[str, Any]:
        """Collect one episode, commit it, and run the updates it pays for."""
        from robot_learning.data.layout import EpisodeMeta

        k = self.episodes
        warm = k < self.cfg.warmup_episodes
        self.policy.hook.explore_std = self.cfg.warmup_noise_std if warm else self.parts.actor.exploration_std
        data, success, steps, res = run_episode(self.env, self.agent, self.cfg.seed * 1_000_000 + k, record=True)
        self.policy.hook.explore_std = 0.0
        version = f"residual-u{self.learner.updates}"
        meta = EpisodeMeta(task=self.cfg.task, source="policy", policy_id=version,
                           rates={"step": self.base.spec.control_hz},
                           tags={"episode": k, "warmup": warm, "seed": self.cfg.seed * 1_000_000 + k})
        assert data is not None
        tick = np.arange(steps, dtype=np.float64) / self.base.spec.control_hz  # sim time (deterministic)
        stamps = {"step": tick, **{k: tick for k in [*self.base.spec.obs_shapes, PLANNED_KEY]}}
        self.store.add_episode(meta, data, stamps, success=success)
        self.episodes, self.env_steps = k + 1, self.env_steps + steps
        self.filter.limit = self.episodes
        if self.replay is None:
            self.replay = self._replay()
        else:
            self.replay.refresh()
        losses: dict[str, float] = {}
        n_updates = 0 if warm else self.utd.updates_for(steps)
        if not warm and self.learner.updates == 0:  # critic-only warm-up as one block on the warm-up data
            n_updates += self.parts.learner.critic_warmup_updates
        for _ in range(n_updates):
            losses = self.learner.update(self._batch())
        row = {"env_steps": self.env_steps, "episode": k, "success": int(success), "length": steps,
               "residual_mean_abs": res, "updates": self.learner.updates, **losses}
        self.train_rows.append(row)
        return row

    def _batch(self) -> dict[str, Any]:
        """One mixed batch; ``bc_mask`` marks its demo rows (the actor's demo_bc term reads it)."""
        assert self.replay is not None
        batch = self.replay.sample(self.parts.replay.batch_size)
        demo = self.replay.names.index("demo") if "demo" in self.replay.names else -1
        batch["bc_mask"] = batch["source"] == demo
        return batch

    def evaluate(self) -> dict[str, Any]:
        """Success of the current residual (no exploration) on the fixed evaluation seeds."""
        results = [run_episode(self.env, self.agent, self.cfg.eval_seed + i, record=False)
                   for i in range(self.cfg.eval_episodes)]
        k, n = sum(r[1] for r in results), len(results)
        lo, hi = wilson_interval(k, n)
        row = {"env_steps": self.env_steps, "episodes": self.episodes, "updates": self.learner.updates,
               "wall_s": round(self.wall, 1), "successes": k, "n": n, "rate": k / n, "ci_low": lo, "ci_high": hi,
               "residual_mean_abs": float(np.mean([r[3] for r in results]))}
        self.eval_rows.append(row)
        return row

    def run(self) -> Path:
        """Train to the budget (resuming if a checkpoint exists); returns the composite checkpoint path."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        resumed = self.resume()
        tb = SummaryWriter(str(self.out / "tb"), purge_step=self.env_steps if resumed else None)
        if not self.eval_rows:
            self._report(self.evaluate(), tb)  # env_steps 0: exactly the base (zero-init residual)
        bar = tqdm(total=self.cfg.env_steps, initial=min(self.env_steps, self.cfg.env_steps), desc="finetune",
                   unit="step", disable=not self.cfg.progress)
        next_eval = (self.env_steps // self.cfg.eval_every + 1) * self.cfg.eval_every
        while self.env_steps < self.cfg.env_steps:
            t0 = time.perf_counter()
            row = self.train_episode()
            self.wall += time.perf_counter() - t0
            bar.update(row["length"])
            for key in ("success", "length", "residual_mean_abs", "critic_loss", "actor_loss"):
                if key in row:
                    tb.add_scalar(f"train/{key}", row[key], self.env_steps)
            if self.env_steps >= next_eval or self.env_steps >= self.cfg.env_steps:
                next_eval = (self.env_steps // self.cfg.eval_every + 1) * self.cfg.eval_every
                self._report(self.evaluate(), tb)
                bar.set_postfix(success=f"{self.eval_rows[-1]['rate']:.2f}")
            elif self.episodes % 10 == 0:  # progress between evaluations (the resume state holds every row)
                write_csv(self.out / "train.csv", self.train_rows)
            self.save()
        bar.close()
        tb.close()
        return self.out / "policy.pt"

    def _report(self, row: dict[str, Any], tb: Any) -> None:
        tb.add_scalar("eval/success", row["rate"], row["env_steps"])
        try:
            self.policy.save(self.out / "policy.pt")
            self._keep_policy(row)
        except NotImplementedError as exc:  # e.g. a scripted base: the residual is still in checkpoints/
            if not getattr(self, "_warned_save", False):
                warnings.warn(f"no composite policy.pt: {exc}", stacklevel=2)
                self._warned_save = True
        write_csv(self.out / "eval.csv", self.eval_rows, EVAL_FIELDS)
        write_csv(self.out / "train.csv", self.train_rows)
        plot_curve(self.eval_rows, self.out / "curve.png", title=f"residual RL, {self.cfg.task}")
        self.save()

    def _keep_policy(self, row: dict[str, Any]) -> None:
        """Copy the fresh ``policy.pt`` to ``policy_best.pt`` (ties: the later one) and, if asked, to ``policies/``."""
        from robot_learning.policies.checkpoint import atomic_copy

        if row["rate"] >= max(r["rate"] for r in self.eval_rows):  # eval_rows persist, so resume keeps the best
            atomic_copy(self.out / "policy.pt", self.out / "policy_best.pt")
        if self.cfg.keep_eval_policies:
            atomic_copy(self.out / "policy.pt", self.out / "policies" / f"policy_{row['env_steps']}.pt")


def _stored_column(key: str) -> Any:
    def column(info: Any, steps: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(steps[key], dtype=np.float32)

    column.inputs = (key,)  # type: ignore[attr-defined]
    return column


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    s = rng.bit_generator.state  # PCG64: plain ints (weights_only-safe as Python ints in a dict)
    return {"bit_generator": s["bit_generator"], "state": int(s["state"]["state"]), "inc": int(s["state"]["inc"]),
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def _rng_from(d: dict[str, Any]) -> dict[str, Any]:
    return {"bit_generator": d["bit_generator"], "state": {"state": d["state"], "inc": d["inc"]},
            "has_uint32": d["has_uint32"], "uinteger": d["uinteger"]}


def plot_curve(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Success vs env steps with Wilson 95 % bands; the first row (the base) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r["env_steps"] for r in rows])
    y, lo, hi = (np.array([r[k] for r in rows]) for k in ("rate", "ci_low", "ci_high"))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.fill_between(x, lo, hi, alpha=0.25, label="Wilson 95 % CI")
    ax.plot(x, y, marker="o", label="base + residual")
    ax.axhline(rows[0]["rate"], color="gray", ls="--", label=f"base only ({rows[0]['successes']}/{rows[0]['n']})")
    ax.set(xlabel="env steps", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``rlstack finetune`` arguments."""
    parser.description = (
        "Refine a frozen base policy with residual off-policy RL in sim (ResFiT). Config: "
        "configs/rl/<method>.yaml (+ configs/rl/parts.yaml); every key can be overridden. Re-running with "
        "the same out_dir resumes exactly. Outputs in out_dir: policy.pt (composite: rlstack eval runs it), "
        "eval.csv, train.csv, curve.png, tb/, online.zarr (every transition, source=policy).")
    parser.epilog = ("example: rlstack finetune method=residual base=runs/bc/policy.pt task=lift robot=sim "
                     "demos=data/lift.zarr env_steps=20000 out_dir=runs/finetune/lift")
    parser.add_argument("overrides", nargs="*", help="key=value (e.g. base=... env_steps=5000 actor.lr=3e-6)")
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``rlstack finetune``."""
    cfg, parts = load_config(list(args.overrides))
    if args.cfg:
        print({**asdict(cfg), **asdict(parts)})
        return 0
    if not Path(cfg.base).exists():
        raise FileNotFoundError(f"base={cfg.base}: no such checkpoint")
    tuner = Finetuner(cfg, parts)
    path = tuner.run()
    first, last = tuner.eval_rows[0], tuner.eval_rows[-1]
    print(f"base {first['successes']}/{first['n']} -> residual {last['successes']}/{last['n']} "
          f"(Wilson 95% CI {last['ci_low']:.2f}-{last['ci_high']:.2f}, seeds {cfg.eval_seed}..{cfg.eval_seed + cfg.eval_episodes - 1}) "
          f"after {tuner.env_steps} env steps; composite checkpoint: {path}")
    return 0
