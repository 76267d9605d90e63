"""gymnasium environments around a SimRobot, and the one episode loop that sim evaluation shares.

``SimEnv`` is a task as a ``gymnasium.Env``: Dict observations of the robot's streams, sparse reward
1 on success. Episode ends follow gymnasium's semantics, which the replay sampler relies on
(robot_learning/rl/replay.py): ``terminated`` on success, or on failure where the task defines one
(``Task.failed()``, or a ``failure`` predicate passed to the env); ``truncated`` at the step limit.
``make_vector_env`` builds gymnasium's vector envs (sync, or async with one process per env).

The simulated intervener (the task's scripted expert, sim/experts.py) is reachable from the env:
``env.intervener`` decides from privileged state whether a person would take over from the action
the policy proposes, and ``step`` can execute the expert's action instead (``intervene=True``), with
``info["intervention"]`` and ``info["executed_action"]`` saying what happened (RLIF, HIL-SERL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.robot import SimRobot

# Loose physical bounds (joint limits are within +-4 rad, the workspace within 2 m) so the spaces are finite.
LOWDIM_BOUNDS = {"joint_pos": (-4.0, 4.0), "joint_vel": (-100.0, 100.0), "ee_pose": (-2.0, 2.0), "gripper": (-0.01, 0.1)}

FailureFn = Callable[[SimRobot], bool]


@dataclass
class StepOutcome:
    """What one control step led to (the rules shared by the env and sim evaluation)."""

    success: bool
    failed: bool
    steps: int
    max_steps: int

    @property
    def terminated(self) -> bool:
        """A true end: success or a task failure (no bootstrapping past it)."""
        return self.success or self.failed

    @property
    def truncated(self) -> bool:
        """Out of time without a true end."""
        return not self.terminated and self.steps >= self.max_steps


def task_failed(robot: SimRobot, failure: FailureFn | None = None) -> bool:
    """Whether the episode has failed irrecoverably: ``failure(robot)`` if given, else the task's ``failed()``."""
    if failure is not None:
        return bool(failure(robot))
    check = getattr(robot.task, "failed", None)
    return bool(check()) if callable(check) else False


def control_step(robot: SimRobot, action: np.ndarray, steps: int, max_steps: int,
                 failure: FailureFn | None = None) -> StepOutcome:
    """Apply ``action`` for one control period and judge the episode (the one step rule)."""
    robot.act(action)
    steps += 1
    success = bool(robot.success())
    return StepOutcome(success=success, failed=not success and task_failed(robot, failure), steps=steps,
                       max_steps=max_steps)


def run_episode(robot: SimRobot, act: Callable[[Any], np.ndarray], seed: int, max_steps: int,
                reset_agent: Callable[[int], None] | None = None, failure: FailureFn | None = None,
                on_step: Callable[[Any, np.ndarray, StepOutcome], None] | None = None) -> StepOutcome:
    """Reset ``robot`` to ``seed`` and step ``act(obs)`` until success, failure or ``max_steps``.

    ``on_step(obs_before, action, outcome)`` sees every step (videos, metrics, store writers).
    """
    obs = robot.reset(seed=seed)
    if reset_agent is not None:
        reset_agent(seed)
    outcome = StepOutcome(success=bool(robot.success()), failed=False, steps=0, max_steps=max_steps)
    while not outcome.terminated and not outcome.truncated:
        action = act(obs)
        outcome = control_step(robot, action, outcome.steps, max_steps, failure)
        obs_before, obs = obs, robot.observe()
        if on_step is not None:
            on_step(obs_before, action, outcome)
    return outcome


class SimEnv(gym.Env):
    """A task as a gymnasium Env (see the module docstring for rewards, ends and interventions).

    ``info`` carries ``success``, ``failed``, the task's metrics (e.g. ``coverage`` for push_t) and
    ``privileged_state`` (for critics and asymmetric actor-critic methods); the wall-clock capture
    stamps of the latest observation are in ``env.last_stamps`` (kept out of ``info`` so that info is
    deterministic for a seed).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str = "lift", max_steps: int | None = None, render_mode: str | None = None,
                 failure: FailureFn | None = None, intervene: bool = False, intervener_quality: float = 1.0,
                 **robot_kwargs: Any) -> None:
        self.robot = SimRobot(task=task, **robot_kwargs)
        self.max_steps = int(max_steps or self.robot.task.max_steps)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps={max_steps}: must be positive")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: only 'rgb_array' is supported")
        self.render_mode = render_mode
        self.failure = failure
        self.intervene = bool(intervene)
        self._intervener_quality = float(intervener_quality)
        self._intervener: Any = None
        self.metadata = {**self.metadata, "render_fps": int(self.robot.control_hz)}
        obs_spaces: dict[str, spaces.Space] = {}
        for key, s in self.robot.spec.observations.items():
            if s.kind == "image":
                obs_spaces[key] = spaces.Box(0, 255, s.shape, dtype=np.uint8)
            else:
                lo, hi = LOWDIM_BOUNDS.get(key, (-np.inf, np.inf))
                obs_spaces[key] = spaces.Box(lo, hi, s.shape, dtype=np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (self.robot.spec.action_dim,), dtype=np.float32)
        self._steps = 0
        self._last: dict[str, np.ndarray] = {}
        self.last_stamps: dict[str, float] = {}

    @property
    def intervener(self) -> Any:
        """The task's scripted expert as a simulated person (``wants_to_intervene(robot, action)``, ``act(robot)``)."""
        if self._intervener is None:
            from sim import make_expert

            self._intervener = make_expert(self.robot.task.name, quality=self._intervener_quality)
        return self._intervener

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; the same ``seed`` gives the same episode."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        obs = self.robot.reset(seed=seed)
        if self._intervener is not None or self.intervene:
            self.intervener.reset(seed)
        self._steps = 0
        self._last, self.last_stamps = obs.data, obs.stamps
        return obs.data, self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply one action for one control period (the intervener's instead, when it takes over)."""
        action = np.asarray(action, dtype=np.float32)
        intervention = self.intervene and bool(self.intervener.wants_to_intervene(self.robot, action))
        executed = self.intervener.act(self.robot).astype(np.float32) if intervention else action
        outcome = control_step(self.robot, executed, self._steps, self.max_steps, self.failure)
        self._steps = outcome.steps
        obs = self.robot.observe()
        self._last, self.last_stamps = obs.data, obs.stamps
        info = self._info(outcome.success)
        info.update(failed=outcome.failed, intervention=intervention, executed_action=executed)
        return obs.data, float(outcome.success), outcome.terminated, outcome.truncated, info

    def _info(self, success: bool | None = None) -> dict[str, Any]:
        return {
            "success": self.robot.success() if success is None else success,
            "privileged_state": self.robot.privileged_state(),
            **self.robot.metrics(),
        }

    def render(self) -> np.ndarray | None:
        """The first camera's latest image (rgb_array mode)."""
        if self.render_mode != "rgb_array":
            return None
        keys = self.robot.spec.camera_keys
        if not keys:
            raise ValueError("render(): the robot has no cameras (created with render=False or cameras=())")
        return self._last[keys[0]]

    def close(self) -> None:
        """Release the physics client."""
        self.robot.close()


class _EnvFactory:
    """Picklable ``SimEnv`` constructor (async vector envs build each env in its own process)."""

    def __init__(self, task: str, kwargs: dict[str, Any]) -> None:
        self.task, self.kwargs = task, kwargs

    def __call__(self) -> SimEnv:
        return SimEnv(task=self.task, **self.kwargs)


def make_vector_env(task: str = "lift", num_envs: int = 2, asynchronous: bool = False, **env_kwargs: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``SimEnv`` as a gymnasium vector env (``AsyncVectorEnv``: one process each).

    Sub-envs reset themselves when an episode ends (gymnasium's next-step autoreset); ``reset(seed=s)``
    seeds env ``i`` with ``s + i``, so a vector rollout is reproducible.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs={num_envs}: must be >= 1")
    fns = [_EnvFactory(task, dict(env_kwargs)) for _ in range(num_envs)]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, context="spawn")
    return gym.vector.SyncVectorEnv(fns)


def register_envs() -> list[str]:
    """Register ``RLStack/<Task>-v0`` ids with gymnasium (idempotent); returns the ids."""
    from sim.tasks import TASKS

    ids = []
    for name in TASKS:
        env_id = "RLStack/" + "".join(part.capitalize() for part in name.split("_")) + "-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="sim.gym_env:SimEnv", kwargs={"task": name})
        ids.append(env_id)
    return ids


register_envs()
