"""gymnasium wrapper around a SimRobot: Dict observations of the robot's streams, sparse reward."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.robot import SimRobot

# Loose physical bounds (joint limits are within +-4 rad, the workspace within 2 m) so the spaces are finite.
LOWDIM_BOUNDS = {"joint_pos": (-4.0, 4.0), "joint_vel": (-100.0, 100.0), "ee_pose": (-2.0, 2.0), "gripper": (-0.01, 0.1)}


class SimEnv(gym.Env):
    """A task as a gymnasium Env. Reward 1 on success (terminated), 0 otherwise; truncated at ``max_steps``.

    ``info`` carries ``success``, the task's metrics (e.g. ``coverage`` for push_t) and
    ``privileged_state`` (for critics and asymmetric actor-critic methods); the wall-clock capture
    stamps of the latest observation are in ``env.last_stamps`` (kept out of ``info`` so that info is
    deterministic for a seed).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str = "lift", max_steps: int | None = None, render_mode: str | None = None, **robot_kwargs: Any) -> None:
        self.robot = SimRobot(task=task, **robot_kwargs)
        self.max_steps = int(max_steps or self.robot.task.max_steps)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps={max_steps}: must be positive")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: only 'rgb_array' is supported")
        self.render_mode = render_mode
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

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; the same ``seed`` gives the same episode."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        obs = self.robot.reset(seed=seed)
        self._steps = 0
        self._last, self.last_stamps = obs.data, obs.stamps
        return obs.data, self._info()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply one action for one control period."""
        self.robot.act(action)
        self._steps += 1
        obs = self.robot.observe()
        self._last, self.last_stamps = obs.data, obs.stamps
        success = self.robot.success()
        truncated = self._steps >= self.max_steps and not success
        return obs.data, float(success), success, truncated, self._info(success)

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
