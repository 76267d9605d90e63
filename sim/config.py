"""Typed task configuration (``configs/task/<name>.yaml``), shared by every command as ``task=<name>``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from robot_learning.config import config_dir, to_dataclass


@dataclass
class TaskConfig:
    """Sim settings of one task: what the robot observes, how fast it is controlled, episode limit."""

    name: str = "lift"
    description: str = ""
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 96
    control_hz: float = 10.0
    action_mode: str = "ee_delta"
    dr: str = "none"
    max_steps: int = 100

    def validate(self) -> TaskConfig:
        """Raise ValueError naming the bad key; returns self."""
        from sim.randomization import DR_PRESETS
        from sim.robot import CAMERAS
        from sim.tasks import TASKS

        if self.name not in TASKS:
            raise ValueError(f"task.name: unknown task '{self.name}' (choose from {', '.join(TASKS)})")
        if self.dr not in DR_PRESETS:
            raise ValueError(f"task.dr: unknown preset '{self.dr}' (choose from {', '.join(DR_PRESETS)})")
        bad = [c for c in self.cameras if c not in CAMERAS]
        if bad:
            raise ValueError(f"task.cameras: unknown camera(s) {bad} (choose from {', '.join(CAMERAS)})")
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"task.image_size: {self.image_size} outside [8, 1024]")
        if not 5.0 <= self.control_hz <= 60.0 or 240.0 % self.control_hz:
            raise ValueError(f"task.control_hz: {self.control_hz} must divide 240 and lie in [5, 60]")
        if self.action_mode not in ("ee_delta", "ee_abs"):
            raise ValueError(f"task.action_mode: '{self.action_mode}' (choose ee_delta or ee_abs)")
        if self.max_steps <= 0:
            raise ValueError(f"task.max_steps: {self.max_steps} must be positive")
        return self

    def robot_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``sim.make_robot`` (everything but the task name)."""
        return {
            "cameras": tuple(self.cameras), "image_size": self.image_size, "control_hz": self.control_hz,
            "action_mode": self.action_mode, "dr": self.dr, "render": bool(self.cameras),
        }


def task_config(cfg: Any) -> TaskConfig:
    """Validate a composed ``task`` config node (e.g. ``cfg.task`` of any command) into a TaskConfig."""
    return to_dataclass(cfg, TaskConfig, where="task").validate()


def load_task_config(name: str, overrides: list[str] | None = None) -> TaskConfig:
    """Read ``configs/task/<name>.yaml`` and apply ``key=value`` overrides (e.g. ``image_size=64``)."""
    from sim.tasks import TASKS

    path = config_dir() / "task" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown task '{name}': no {path} (choose from {', '.join(TASKS)})")
    cfg = OmegaConf.load(path)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must look like key=value, got {bad}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.removeprefix("task.") for o in overrides]))
    return task_config(cfg)
