"""The one training loop for every policy type.

A policy network only has to implement ``compute_loss(batch)`` (see ``policies/model.py``); this
loop owns everything else: AdamW with warm-up + cosine decay, gradient clipping, EMA (diffusers'
``EMAModel``), checkpoints every N steps with exact resume, TensorBoard + CSV logs, a tqdm bar,
periodic sim evaluation, device selection, bf16 autocast on CUDA and DDP under ``torchrun``.
The generic pieces live in their own modules, which RL learners (robot_learning/rl/) use too:
``checkpointing`` (RNG capture, per-step seeds, EMA weights, atomic resume files),
``distributed`` (the process group), ``metrics`` (TensorBoard + CSV), ``progress`` (the bar).

Exact resume: the data order is a pure function of (seed, step) — each epoch is a seeded
permutation and a resumed run skips to its position — and the torch RNG (crop offsets, diffusion
noise) is re-seeded from (seed, step, rank) at every step. Together with the saved model,
optimizer, scheduler and EMA state, a run killed after checkpoint k and resumed reaches the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from robot_learning.config import save_config
from robot_learning.policies.base import PolicySpec, check_spec_matches
from robot_learning.policies.checkpoint import atomic_save, build_model, checkpoint_dict, read_checkpoint
from robot_learning.policies.model import ACTION_STATS_KEY, PolicyModel, dataset_horizon
from robot_learning.train.checkpointing import (
    LATEST,
    check_resume_config,
    ema_state_dict,
    gather_rng,
    rng_states,
    set_rng_states,
    step_seed,
    warn_thread_change,
)
from robot_learning.train.config import RunSection, plain, validate_run_config
from robot_learning.train.distributed import Distributed
from robot_learning.train.metrics import MetricsLog
from robot_learning.train.progress import note, progress_bar

POLICY = "policy.pt"
# settings a resumed training run may change: its budget (train.steps continues a run further; the cosine
# schedule then follows the new length), logging, evaluation, where it runs, where its store lives (the spec is
# still checked) and its folder
RESUME_MAY_CHANGE = ("train.steps", "train.stop_after", "train.checkpoint_every", "train.log_every", "train.eval_every",
                     "train.eval_episodes", "train.eval_procs", "train.eval_dr", "train.eval_seed", "train.device",
                     "train.amp", "train.threads", "train.dist_timeout_s", "data.store", "data.cache",
                     "data.num_workers", "out_dir", "resume")


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices as a pure function of the step: epoch ``e`` is a permutation
    seeded by (seed, e); each process takes its own slice of the global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int, start_step: int, end_step: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world
        self.start_step, self.end_step = start_step, end_step
        self.per_epoch = n // (batch_size * world)
        if self.per_epoch < 1:
            raise ValueError(
                f"the dataset has {n} windows, fewer than one global batch ({batch_size} x {world} processes)"
            )

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        global_batch = self.batch_size * self.world
        for step in range(self.start_step, self.end_step):
            e, j = divmod(step, self.per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + e))
            lo = j * global_batch + self.rank * self.batch_size
            yield perm[lo : lo + self.batch_size].tolist()


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``WindowDataset`` samples into a batch."""
    return {
        "obs": {k: torch.stack([s["obs"][k] for s in samples]) for k in samples[0]["obs"]},
        "action": torch.stack([s["action"] for s in samples]),
    }


def _policy_spec(run: RunSection, store: Any) -> PolicySpec:
    keys = store.keys
    missing = [k for k in [*run.policy.obs_keys, run.data.action_key] if k not in keys]
    if missing:
        raise ValueError(f"policy.obs_keys/data.action_key {missing} are not in store {run.data.store} (keys: {sorted(keys)})")
    action_shape = tuple(keys[run.data.action_key][0])
    if len(action_shape) != 1:
        raise ValueError(f"action key '{run.data.action_key}' must be a vector per step, got shape {action_shape}")
    task = run.task or {}
    return PolicySpec(
        obs_shapes={k: tuple(int(x) for x in keys[k][0]) for k in run.policy.obs_keys},
        action_dim=int(action_shape[0]),
        n_obs_steps=run.policy.n_obs_steps,
        horizon=run.policy.horizon,
        n_action_steps=run.policy.n_action_steps,
        control_hz=float(task.get("control_hz", 10.0)),
        action_mode=str(task.get("action_mode", "ee_delta")),
    )


def check_finite(store: Any, keys: list[str], episodes: list[int]) -> None:
    """Raise ValueError naming the key, episode and step of the first NaN/inf in low-dim data."""
    for ep in episodes:
        data = store.read_episode(ep, keys=keys)
        for key in keys:
            bad = ~np.isfinite(np.asarray(data[key], dtype=np.float64))
            if bad.any():
                step = int(np.argwhere(bad)[0][0])
                raise ValueError(f"store {store.uri}: key '{key}' has NaN/inf in episode {ep} at step {step}")


def train(cfg: DictConfig) -> Path:
    """Train a policy from a composed config; returns the path of the deployable checkpoint."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from robot_learning.data.dataset import WindowDataset, split_episodes
    from robot_learning.data.stats import compute_stats
    from robot_learning.data.store import EpisodeStore

    run = validate_run_config(cfg)
    tcfg = run.train
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    ddp = Distributed(tcfg.device, tcfg.dist_timeout_s)
    ok = False
    out = Path(run.out_dir)
    try:
        store = EpisodeStore.open(run.data.store, mode="r")
        train_ids, val_ids = split_episodes(
            store, run.data.val_fraction, run.data.split_seed, run.data.success, run.data.source, run.data.task
        )
        spec = _policy_spec(run, store)

        resume_ckpt = None
        if run.resume and (out / LATEST).exists():
            resume_ckpt = read_checkpoint(out / LATEST)
            check_spec_matches(PolicySpec.from_dict(resume_ckpt["spec"]), spec, f"store {run.data.store}")
            if resume_ckpt["train_state"]["world"] != ddp.world:
                raise ValueError(
                    f"cannot resume {out / LATEST} with {ddp.world} processes: it was trained with "
                    f"{resume_ckpt['train_state']['world']} (the data order depends on it)"
                )
            check_resume_config(resume_ckpt.get("config"), plain(cfg), f"rlstack train out_dir={run.out_dir}",
                                may_change=RESUME_MAY_CHANGE)
            stats = resume_ckpt["normalizer"]
        else:
            check_finite(store, [*spec.lowdim_keys, run.data.action_key], train_ids)
            computed = compute_stats(store, [*spec.lowdim_keys, run.data.action_key], train_ids)
            stats = {k: v.to_dict() for k, v in computed.items() if k != run.data.action_key}
            stats[ACTION_STATS_KEY] = computed[run.data.action_key].to_dict()  # the model's name for the action

        torch.manual_seed(tcfg.seed)  # same initial weights on every process
        model: PolicyModel = build_model(run.policy.type, run.policy.params, spec, stats).to(ddp.device)
        dataset = WindowDataset(
            store, run.policy.obs_keys, run.data.action_key, spec.n_obs_steps, dataset_horizon(spec),
            spec.n_action_steps, episodes=train_ids, cache=run.data.cache,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=tuple(tcfg.betas))
        lr_schedule = get_cosine_schedule_with_warmup(optimizer, tcfg.warmup_steps, tcfg.steps)
        ema = EMAModel(params, decay=tcfg.ema_max_decay, use_ema_warmup=True, power=tcfg.ema_power) if tcfg.ema else None

        start_step = 0
        if resume_ckpt is not None:
            state = resume_ckpt["train_state"]
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["lr_schedule"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
                ema.to(ddp.device)
            set_rng_states(state["rng"][min(ddp.rank, len(state["rng"]) - 1)])
            start_step = int(state["step"])
            warn_thread_change(state.get("torch_threads"), str(out / LATEST))
        del resume_ckpt

        net = ddp.wrap(model)

        if ddp.main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(OmegaConf.create(plain(cfg)), out / "config.yaml")
        stop_at = tcfg.steps if tcfg.stop_after <= 0 else min(tcfg.steps, start_step + tcfg.stop_after)
        sampler = StepBatches(len(dataset), tcfg.batch_size, tcfg.seed, ddp.rank, ddp.world, start_step, stop_at)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate, num_workers=run.data.num_workers,
            persistent_workers=False, pin_memory=ddp.device.type == "cuda",
        )
        metrics = MetricsLog(out, start_step, enabled=ddp.main)
        if ddp.main:
            print(
                f"training {run.policy.type} on {len(train_ids)} episodes ({len(dataset)} windows), "
                f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters, device {ddp.device}, "
                f"{ddp.world} process(es) x {torch.get_num_threads()} torch thread(s), "
                f"steps {start_step}->{stop_at} of {tcfg.steps}, out {out}",
                flush=True,
            )

        def save(step: int, rng: list[dict[str, Any]]) -> None:
            ema_weights = ema_state_dict(model, ema)
            full = checkpoint_dict(
                model, ema_weights, step=step, config=plain(cfg),
                train_state={
                    "step": step, "world": ddp.world, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(),
                    "ema": ema.state_dict() if ema is not None else {},
                    "rng": rng, "torch_threads": torch.get_num_threads(),
                },
            )
            atomic_save(full, out / LATEST)
            atomic_save(checkpoint_dict(model, ema_weights, step=step, config=plain(cfg)), out / POLICY)

        autocast = ddp.device.type == "cuda" and tcfg.amp
        bar = progress_bar(tcfg.steps, start_step, f"train {run.policy.type}", enabled=ddp.main)
        net.train()
        step = start_step
        t_last, steps_since = time.perf_counter(), 0
        for indices, batch in zip(_sampler_indices(sampler), loader, strict=True):
            torch.manual_seed(step_seed(tcfg.seed, step, ddp.rank))
            batch = _to_device(batch, ddp.device)
            with torch.autocast(ddp.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = net(batch)
            if not torch.isfinite(loss):
                episodes = sorted({dataset.window(i)[0] for i in indices})
                raise FloatingPointError(
                    f"training loss is {loss.item()} at step {step} (batch from episodes {episodes} of "
                    f"{run.data.store}); check the data for NaN/inf or lower train.lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
            optimizer.step()
            lr_schedule.step()
            if ema is not None:
                ema.step(params)
            step += 1
            steps_since += 1
            bar.update(1)
            if ddp.main and (step % tcfg.log_every == 0 or step == stop_at):
                now = time.perf_counter()
                row = {
                    "step": step, "loss": float(loss.item()), "lr": lr_schedule.get_last_lr()[0],
                    "grad_norm": float(grad_norm), "ema_decay": ema.cur_decay_value if ema is not None else 0.0,
                    "steps_per_s": steps_since / max(now - t_last, 1e-9),
                }
                t_last, steps_since = now, 0
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                metrics.log(step, row)
            if step % tcfg.checkpoint_every == 0 or step == stop_at:
                rng = gather_rng(ddp.world)
                if ddp.main:
                    save(step, rng)
                ddp.barrier()
            if tcfg.eval_every > 0 and (step % tcfg.eval_every == 0 or step == tcfg.steps):
                if ddp.main:
                    if step % tcfg.checkpoint_every != 0 and step != stop_at:
                        save(step, [rng_states()])
                    _periodic_eval(run, out / POLICY, step, metrics)
                ddp.barrier()
        bar.close()
        metrics.close()
        ok = True
        return out / POLICY
    finally:
        ddp.close(ok)


def _sampler_indices(sampler: StepBatches) -> Iterator[list[int]]:
    # A second, identical iteration of the (pure) sampler gives the indices of each batch for error messages.
    return iter(sampler)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return batch
    return {
        "obs": {k: v.to(device, non_blocking=True) for k, v in batch["obs"].items()},
        "action": batch["action"].to(device, non_blocking=True),
    }


def _periodic_eval(run: RunSection, policy_path: Path, step: int, metrics: MetricsLog) -> None:
    """Evaluate the current EMA policy in sim and log success with its Wilson interval."""
    from robot_learning.eval.policy_agent import evaluate_checkpoint

    tcfg = run.train
    report = evaluate_checkpoint(
        policy_path, run.task, n_episodes=tcfg.eval_episodes, seed=tcfg.eval_seed, n_procs=tcfg.eval_procs,
        dr=tcfg.eval_dr, video_dir=None,
    )
    lo, hi = report.ci95
    note(f"step {step}: sim eval success {report.summary()}")
    metrics.scalars(step, {"success": report.success_rate, "ci_low": lo, "ci_high": hi}, prefix="eval")
    if metrics.csv is not None:
        metrics.csv.write({"step": step, "eval_success": report.success_rate, "eval_ci_low": lo, "eval_ci_high": hi})
