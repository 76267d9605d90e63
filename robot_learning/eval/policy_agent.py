"""A ``Policy`` as a sim-evaluation agent: observation history, chunk execution, episode resets.

The agent keeps the last ``n_obs_steps`` observations (padding with the first one at episode
start), asks the policy for a chunk when its action queue is empty and executes the first
``n_action_steps`` actions of it open-loop. Its sampling noise is seeded per episode (from the
episode seed, or else from the first observation), so an episode's outcome depends only on its
seed, not on which process ran it or what ran before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robot_learning.policies.base import Policy, PolicySpec
from robot_learning.robot import Observation, RobotSpec


class PolicyAgent:
    """``reset()`` / ``act(obs) -> action`` around any ``Policy``."""

    def __init__(self, policy: Policy, n_action_steps: int | None = None) -> None:
        self.policy = policy
        self.spec: PolicySpec = policy.spec
        self.n_action_steps = int(n_action_steps or self.spec.n_action_steps)
        if not 1 <= self.n_action_steps <= self.spec.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in 1..horizon={self.spec.horizon}")
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=self.spec.n_obs_steps)
        self.queue: deque[np.ndarray] = deque()
        self.chunks = 0
        self.step_in_chunk = 0
        self.last_info: dict[str, Any] = {}  # diagnostics of the latest chunk (candidate scores, timings)
        self._fresh = True

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode: forget history, queued actions and policy state; ``seed`` fixes the
        policy's sampling noise (else it is seeded from the episode's first observation)."""
        self.history.clear()
        self.queue.clear()
        self.step_in_chunk = 0
        self.policy.reset()
        self._fresh = seed is None
        if seed is not None:
            self.policy.reseed(seed)

    def close(self) -> None:
        """Release the policy's resources (worker processes, sockets)."""
        self.policy.close()

    def attach(self, robot: Any) -> None:
        """Called by the sim evaluator with its robot: fail early if the policy does not fit it."""
        check_policy_against_robot(self.spec, robot.spec)

    def obs_history(self) -> dict[str, np.ndarray]:
        """The stacked history ``{key: (n_obs_steps, *shape)}``, oldest first."""
        frames = list(self.history)
        frames = [frames[0]] * (self.spec.n_obs_steps - len(frames)) + frames
        return {k: np.stack([f[k] for f in frames]) for k in self.spec.obs_shapes}

    def act(self, obs: Observation | Mapping[str, np.ndarray]) -> np.ndarray:
        """The action for this control step (re-plans when the executed part of a chunk is used up)."""
        data = obs.data if isinstance(obs, Observation) else obs
        missing = [k for k in self.spec.obs_shapes if k not in data]
        if missing:
            raise ValueError(f"observation lacks key(s) {missing} that the policy needs (has {sorted(data)})")
        self.history.append({k: np.asarray(data[k]) for k in self.spec.obs_shapes})
        history = None
        if not self.queue:
            history = self.obs_history()
            if self._fresh:
                self.policy.reseed_from(history)
            self._fresh = False
            result = self.policy.predict_chunk_with_info(history)
            self.last_info = result.info
            self.chunks += 1
            self.step_in_chunk = 0
            self.queue.extend(np.asarray(result.actions, dtype=np.float32)[: self.n_action_steps])
        planned = self.queue.popleft()
        step, self.step_in_chunk = self.step_in_chunk, self.step_in_chunk + 1
        if not self.policy.has_step_hook:
            return planned
        action = self.policy.step_action(history if history is not None else self.obs_history(), planned, step)
        return np.asarray(action, dtype=np.float32)


class CheckpointAgentFactory:
    """Picklable zero-argument factory: loads the checkpoint in the worker process."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", seed: int = 0, n_action_steps: int | None = None,
                 **inference: Any) -> None:
        self.checkpoint = str(checkpoint)
        self.device = device
        self.n_action_steps = n_action_steps
        self.seed = seed
        self.inference = {k: v for k, v in inference.items() if v is not None}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.inference.items())
        if self.n_action_steps:
            extra += f", n_action_steps={self.n_action_steps}"
        return f"checkpoint {self.checkpoint} (device {self.device}, seed {self.seed}{extra})"

    def __call__(self) -> PolicyAgent:
        """Build one agent (called once per evaluation process)."""
        import torch

        from robot_learning.policies.checkpoint import load_policy

        torch.set_num_threads(1)  # evaluation runs one process per core
        policy = load_policy(self.checkpoint, device=self.device, seed=self.seed, **self.inference)
        return PolicyAgent(policy, n_action_steps=self.n_action_steps)


def check_policy_against_robot(policy_spec: PolicySpec, robot_spec: RobotSpec, where: str = "robot") -> None:
    """Raise ValueError naming every policy input the robot lacks or provides in another shape."""
    problems = []
    for key, shape in policy_spec.obs_shapes.items():
        stream = robot_spec.observations.get(key)
        if stream is None:
            problems.append(f"'{key}' is not observed by the {where} (it has {sorted(robot_spec.observations)})")
        elif tuple(stream.shape) != tuple(shape):
            problems.append(f"'{key}': policy expects {tuple(shape)}, {where} gives {tuple(stream.shape)}")
    if policy_spec.action_dim != robot_spec.action_dim:
        problems.append(f"action_dim: policy {policy_spec.action_dim}, {where} {robot_spec.action_dim}")
    if problems:
        raise ValueError(f"checkpoint does not match the {where}: " + "; ".join(problems))


ROBOT_KWARGS = ("cameras", "image_size", "control_hz", "action_mode")


def task_settings(task_cfg: Mapping[str, Any] | None, default_name: str = "lift") -> tuple[str, dict[str, Any], int | None]:
    """(task name, ``make_robot`` keyword arguments, max steps) from a ``configs/task/*.yaml`` section."""
    cfg = dict(task_cfg or {})
    name = str(cfg.get("name") or cfg.get("task") or default_name)
    robot = dict(cfg.get("robot") or {})
    for key in ROBOT_KWARGS:
        if key in cfg and key not in robot:
            robot[key] = cfg[key]
    if "cameras" in robot:
        robot["cameras"] = tuple(robot["cameras"])
    max_steps = cfg.get("max_steps")
    return name, robot, int(max_steps) if max_steps else None


def evaluate_checkpoint(
    checkpoint: str | Path,
    task_cfg: Mapping[str, Any] | None,
    n_episodes: int,
    seed: int,
    n_procs: int,
    dr: str = "none",
    video_dir: str | Path | None = None,
    n_videos: int = 2,
    device: str = "cpu",
    max_steps: int | None = None,
    n_action_steps: int | None = None,
    **inference: Any,
) -> Any:
    """Check the checkpoint against the sim robot, then run ``sim_eval.evaluate``; returns its EvalReport."""
    from robot_learning.eval.sim_eval import evaluate
    from robot_learning.policies.checkpoint import read_checkpoint
    from sim import make_robot

    name, robot_kwargs, task_max = task_settings(task_cfg)
    spec = PolicySpec.from_dict(read_checkpoint(checkpoint)["spec"])
    robot = make_robot(task=name, **robot_kwargs)
    try:
        check_policy_against_robot(spec, robot.spec, where=f"sim robot for task '{name}'")
    finally:
        robot.close()
    return evaluate(
        CheckpointAgentFactory(checkpoint, device=device, n_action_steps=n_action_steps, **inference),
        task=name, n_episodes=n_episodes, seed=seed, n_procs=n_procs, dr=dr,
        video_dir=str(video_dir) if video_dir else None, n_videos=n_videos, robot_kwargs=robot_kwargs,
        max_steps=max_steps or task_max,
    )
