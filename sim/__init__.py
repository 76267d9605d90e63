"""PyBullet simulation: the embedded default robot, tasks, experts, domain randomization.

Public entry points (the contract other packages code against)::

    robot = make_robot(task="lift", cameras=("front", "wrist"), image_size=96, control_hz=10.0, dr="none")
    expert = make_expert(task="lift", quality=1.0, seed=0)
    env = make_env(task="lift")          # gymnasium.Env (failure/truncation, env.intervener)
    venv = make_vector_env(task="lift", num_envs=4, asynchronous=True)   # gymnasium vector env
"""

from __future__ import annotations

from typing import Any

from sim.randomization import DR_PRESETS, DRPreset, get_preset
from sim.tasks import TASKS

__all__ = ["DR_PRESETS", "DRPreset", "TASKS", "get_preset", "make_env", "make_expert", "make_robot", "make_vector_env"]


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


def make_vector_env(task: str = "lift", num_envs: int = 2, asynchronous: bool = False, **kwargs: Any) -> Any:
    """``num_envs`` copies of ``make_env(task, **kwargs)`` as a gymnasium vector env (async: one process each)."""
    from sim.gym_env import make_vector_env as _make

    return _make(task, num_envs=num_envs, asynchronous=asynchronous, **kwargs)
