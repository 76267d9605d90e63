"""PyBullet simulation: the embedded default robot, tasks, experts, domain randomization.

Public entry points (the contract other packages code against)::

    robot = make_robot(task="lift", cameras=("front", "wrist"), image_size=96, control_hz=10.0, dr="none")
    expert = make_expert(task="lift", quality=1.0, seed=0)
    env = make_env(task="lift")          # gymnasium.Env
"""

from __future__ import annotations

from typing import Any

from sim.randomization import DR_PRESETS, DRPreset, get_preset
from sim.tasks import TASKS

__all__ = ["DR_PRESETS", "DRPreset", "TASKS", "get_preset", "make_env", "make_expert", "make_robot"]


def make_robot(task: str = "lift", **kwargs: Any) -> Any:
    """A ``SimRobot`` for ``task`` (see ``sim.robot.SimRobot`` for the keyword arguments)."""
    from sim.robot import SimRobot

    return SimRobot(task=task, **kwargs)


def make_expert(task: str = "lift", quality: float = 1.0, seed: int = 0) -> Any:
    """The scripted expert for ``task`` with a quality knob in [0, 1]."""
    from sim.experts import EXPERTS

    if task not in EXPERTS:
        raise ValueError(f"unknown task '{task}' (choose from {', '.join(EXPERTS)})")
    return EXPERTS[task](quality=quality, seed=seed)


def make_env(task: str = "lift", **kwargs: Any) -> Any:
    """A gymnasium ``Env`` around a ``SimRobot`` (keyword arguments as for ``make_robot``)."""
    from sim.gym_env import SimEnv

    return SimEnv(task=task, **kwargs)
