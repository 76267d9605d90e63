"""The sim robot's privileged state as labelled segments, and a view that answers the expert from them.

The ``sim_robot`` node publishes ``privileged_segments`` on ``/sim/privileged_state``; the expert
teleoperator and ``ExpertPolicy`` (deploy) rebuild the ``SimRobot`` attributes the scripted expert
reads (``privileged()``, ``steps``, ``task.<predicate>()``, ``dr.<field>``) with ``PrivilegedView``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

STEPS_LABEL = "steps"  # segment of the privileged-state message: control steps since reset
FLAG_PREFIX = "task_"  # segments holding task predicates (e.g. task_stacked)
DR_PREFIX = "dr_"  # segments holding the episode's scalar randomization values (e.g. dr_latency_steps)


def privileged_segments(robot: Any, task_flags: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The labelled privileged-state segments of ``robot``: state, step counter, task predicates, DR scalars."""
    out = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in robot.privileged().items()}
    out[STEPS_LABEL] = np.array([float(robot.steps)])
    for flag in task_flags:
        out[FLAG_PREFIX + flag] = np.array([float(bool(getattr(robot.task, flag)()))])
    # An operator knows how the robot behaves this episode (e.g. its command latency); the expert
    # reads these from robot.dr, so the scalar ones travel too.
    for name, value in vars(getattr(robot, "dr", None) or object()).items():
        if isinstance(value, (bool, int, float, np.integer, np.floating)):
            out[DR_PREFIX + name] = np.array([float(value)])
    return out


def privileged_layout(task: str, task_flags: tuple[str, ...] = ()) -> dict[str, int]:
    """Segment sizes of the sim_robot node's privileged-state vector for ``task``.

    Computed with ``privileged_segments``, the function the node publishes with, so it always matches
    what the node publishes (robot state, step counter, task flags, scalar randomization values).
    """
    from sim import make_robot

    robot = make_robot(task=task, cameras=(), render=False)
    try:
        robot.reset(0)
        return {k: int(np.size(v)) for k, v in privileged_segments(robot, task_flags).items()}
    finally:
        robot.close()


class PrivilegedView:
    """Stands in for the sim robot in the teleop process: what the expert reads, from the topic."""

    def __init__(self, control_hz: float) -> None:
        self.control_hz = float(control_hz)
        self.steps = 0
        self._state: dict[str, np.ndarray] = {}
        self.task = _TaskFlags(self)
        self.dr = _DRValues(self)

    def update(self, segments: dict[str, np.ndarray]) -> None:
        """Take one privileged-state message (labelled segments)."""
        if STEPS_LABEL not in segments:
            raise ValueError(f"privileged state: no '{STEPS_LABEL}' segment (got {sorted(segments)})")
        self.steps = int(segments[STEPS_LABEL][0])
        self._state = segments

    def privileged(self) -> dict[str, np.ndarray]:
        """The robot's privileged state (as ``SimRobot.privileged``)."""
        return {k: v.astype(np.float32) for k, v in self._state.items()
                if k != STEPS_LABEL and not k.startswith((FLAG_PREFIX, DR_PREFIX))}


class _DRValues:
    """``robot.dr.<field>`` answered from ``dr_<field>`` segments (scalars only)."""

    def __init__(self, view: PrivilegedView) -> None:
        self._view = view

    def __getattr__(self, name: str) -> float:
        if name.startswith("_"):  # copy/pickle probe dunder attributes before __init__ has run
            raise AttributeError(name)
        key = DR_PREFIX + name
        if key not in self._view._state:
            raise AttributeError(f"the expert asked for robot.dr.{name} but sim_robot does not publish it "
                                 f"(only scalar randomization values travel)")
        return float(self._view._state[key][0])


class _TaskFlags:
    """``robot.task.<predicate>()`` answered from ``task_<predicate>`` segments."""

    def __init__(self, view: PrivilegedView) -> None:
        self._view = view

    def __getattr__(self, name: str) -> Callable[[], bool]:
        if name.startswith("_"):  # copy/pickle probe dunder attributes before __init__ has run
            raise AttributeError(name)
        key = FLAG_PREFIX + name
        if key not in self._view._state:
            raise AttributeError(
                f"the expert asked for task.{name}() but sim_robot does not publish it: "
                f"start sim_robot with -p task_flags:=\"[{name}]\"")
        return lambda: bool(self._view._state[key][0] > 0.5)
