"""Typed schemas of the ``rlstack train`` config sections (validated with ``to_dataclass``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from robot_learning.config import to_dataclass


@dataclass
class PolicySection:
    """``policy:`` — which network, which inputs, and the chunking (``params`` checked per type)."""

    type: str = "diffusion"
    obs_keys: list[str] = field(default_factory=lambda: ["camera_front", "camera_wrist", "joint_pos", "gripper"])
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """``data:`` — the store, the episode filter and the split."""

    store: str = "data/lift.zarr"
    action_key: str = "action"
    val_fraction: float = 0.0
    split_seed: int = 0
    success: Optional[bool] = True
    source: Optional[str] = None
    task: Optional[str] = None
    cache: bool = True
    num_workers: int = 0


@dataclass
class TrainSection:
    """``train:`` — optimisation, checkpoints, logging, periodic sim evaluation, hardware."""

    steps: int = 20000
    batch_size: int = 64  # per process
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema: bool = True
    ema_max_decay: float = 0.9999
    ema_power: float = 0.75
    checkpoint_every: int = 1000
    log_every: int = 50
    eval_every: int = 0  # 0 = no periodic sim evaluation
    eval_episodes: int = 20
    eval_procs: int = 2
    eval_dr: str = "none"
    eval_seed: int = 100000
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    amp: bool = True  # bf16 autocast, CUDA only
    threads: int = 0  # torch threads per process (0 = leave torch's default)
    dist_timeout_s: float = 600.0  # a multi-process collective that waits longer than this fails instead of hanging
    stop_after: int = 0  # stop (as if killed) after this many steps of this invocation; 0 = off


@dataclass
class RunSection:
    """The whole ``rlstack train`` config; ``task`` is the sim engineer's task group (free-form)."""

    policy: PolicySection = field(default_factory=PolicySection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    task: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs/default"
    resume: bool = True


def validate_run_config(cfg: DictConfig | dict[str, Any]) -> RunSection:
    """Validate a composed train config; errors name the offending key."""
    run = to_dataclass(cfg, RunSection, where="rlstack train")
    if run.policy.n_obs_steps < 1 or run.policy.horizon < 1:
        raise ValueError("policy.n_obs_steps and policy.horizon must be >= 1")
    if not 1 <= run.policy.n_action_steps <= run.policy.horizon:
        raise ValueError(f"policy.n_action_steps={run.policy.n_action_steps} must be in 1..policy.horizon")
    if not run.policy.obs_keys:
        raise ValueError("policy.obs_keys is empty")
    if run.train.steps < 1 or run.train.batch_size < 1:
        raise ValueError("train.steps and train.batch_size must be >= 1")
    return run


def plain(cfg: Any) -> Any:
    """A config as plain containers (for checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
