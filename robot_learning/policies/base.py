"""The policy interface used everywhere downstream of training.

Training, refinement methods (which wrap a frozen base policy and are policies themselves), the
ROS 2 policy node, the remote policy server and sim evaluation all talk to a policy through this
interface and nothing else.

Observation history convention: ``obs_history[key]`` has shape ``(n_obs_steps, *stream_shape)``,
oldest first, newest last; images are uint8 H x W x 3, low-dim streams float32. The first action of
a predicted chunk is the action for the *newest* observation step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class PolicySpec:
    """What a policy expects and produces; stored in its checkpoint and checked at every boundary."""

    obs_shapes: dict[str, tuple[int, ...]]  # key -> per-step shape (images H, W, 3)
    action_dim: int
    n_obs_steps: int = 2
    horizon: int = 16  # length of a predicted chunk
    n_action_steps: int = 8  # how many steps of a chunk are executed before re-planning
    control_hz: float = 10.0
    action_mode: str = "ee_delta"

    @property
    def image_keys(self) -> list[str]:
        """Keys whose per-step shape is an H x W x 3 image."""
        return sorted(k for k, s in self.obs_shapes.items() if len(s) == 3)

    @property
    def lowdim_keys(self) -> list[str]:
        """Keys of the low-dimensional inputs."""
        return sorted(k for k, s in self.obs_shapes.items() if len(s) != 3)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON/msgpack friendly)."""
        d = asdict(self)
        d["obs_shapes"] = {k: list(v) for k, v in self.obs_shapes.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicySpec:
        """Inverse of ``to_dict``."""
        d = dict(d)
        d["obs_shapes"] = {k: tuple(int(x) for x in v) for k, v in d["obs_shapes"].items()}
        return cls(**d)

    def check_obs_history(self, obs_history: dict[str, np.ndarray]) -> None:
        """Raise ValueError naming every key whose presence or shape does not match."""
        problems = []
        for key, shape in self.obs_shapes.items():
            if key not in obs_history:
                problems.append(f"missing key '{key}' (expected shape {(self.n_obs_steps, *shape)})")
                continue
            got = tuple(np.shape(obs_history[key]))
            if got != (self.n_obs_steps, *shape):
                problems.append(f"key '{key}': expected shape {(self.n_obs_steps, *shape)}, got {got}")
        if problems:
            raise ValueError("observation does not match the policy: " + "; ".join(problems))


@dataclass
class ChunkResult:
    """A chunk plus optional extra outputs (timings, candidate scores, residual size) for diagnostics."""

    actions: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


PolicyResult = ChunkResult  # the name the refinement issue uses


class Policy(ABC):
    """Maps an observation history to a chunk of future actions.

    Execution contract (the sim agent, robot_learning/eval/policy_agent.py, and the deploy
    controller, robot_learning/deploy/controller.py, both follow it): the caller asks for a chunk,
    then for every executed action of it calls ``step_action(current_obs_history, planned_action,
    step_in_chunk)`` and executes what it returns. The default hook is the identity, so a policy
    without one runs its chunks open-loop exactly as before; a wrapper such as a residual actor
    overrides it to correct each step from the newest observation (closed loop on an open-loop base).
    """

    spec: PolicySpec
    policy_type: ClassVar[str] = ""  # set by @register_policy for saveable types

    def reset(self) -> None:  # noqa: B027 - optional hook, most policies are stateless
        """Forget any per-episode state (call at every episode boundary)."""

    def reseed(self, seed: int) -> None:  # noqa: B027 - deterministic policies have no noise
        """Restart the sampling noise stream (same seed and inputs -> same chunks)."""

    def reseed_from(self, obs_history: dict[str, np.ndarray]) -> None:  # noqa: B027
        """Seed the noise from observation content (a rollout's noise then depends only on what it sees)."""

    def close(self) -> None:  # noqa: B027 - most policies hold no processes or sockets
        """Release processes, sockets or devices the policy holds; it must not be used afterwards."""

    @abstractmethod
    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """Return one action chunk of shape ``(horizon, action_dim)`` in robot action units."""

    def predict_chunk_with_info(self, obs_history: dict[str, np.ndarray]) -> ChunkResult:
        """``predict_chunk`` plus diagnostics in ``info`` (default: none); override both together."""
        return ChunkResult(np.asarray(self.predict_chunk(obs_history)), {})

    def sample_chunks(self, obs_history: dict[str, np.ndarray], k: int) -> np.ndarray:
        """Return ``k`` candidate chunks ``(k, horizon, action_dim)``; stochastic policies batch this."""
        return np.stack([self.predict_chunk(obs_history) for _ in range(k)])

    # -- per-step hook --------------------------------------------------------------------------
    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray,
                    step_in_chunk: int) -> np.ndarray:
        """The action to execute now, given the newest observation history and the planned action
        (step ``step_in_chunk`` of the current chunk, already blended by the caller); default identity."""
        return planned_action

    @property
    def has_step_hook(self) -> bool:
        """Whether ``step_action`` is overridden (callers skip building the history otherwise)."""
        return type(self).step_action is not Policy.step_action

    def step_hook(self) -> StepHook | None:
        """A picklable object that runs ``step_action`` (and ``reset``/``reseed``) on its own.

        Used where the policy lives in another process (deploy ``isolation=process``): the hook is
        sent back to the control process and runs there, in the control thread, so correcting an
        action never waits for the child's chunk inference. Default: the policy itself when it has
        a hook (override to return something lighter, e.g. only a residual actor), else None.
        """
        return self if self.has_step_hook else None

    def save(self, path: str | Path) -> None:
        """Write one self-contained checkpoint file (config, normalizer, weights, spec)."""
        from robot_learning.policies.checkpoint import atomic_save

        atomic_save(self.checkpoint(), path)

    def checkpoint(self) -> dict[str, Any]:
        """The plain-data checkpoint (tensors, dicts, lists; loadable with ``weights_only=True``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")


@runtime_checkable
class StepHook(Protocol):
    """What ``Policy.step_hook`` returns: the per-step correction without the chunk policy."""

    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray,
                    step_in_chunk: int) -> np.ndarray:
        """Corrected action (see ``Policy.step_action``)."""
        ...

    def reset(self) -> None:
        """Episode boundary."""
        ...


def warm_up(policy: Policy) -> bool:
    """Run one prediction on a blank observation history and reset; returns whether it worked.

    Some policies build their inference graphs lazily at the first call (seconds, see
    policies/fast_inference.py); servers and control nodes call this before taking requests so that
    the first real observation is not the one that pays for it. A policy that cannot act on a blank
    history (e.g. a scripted one that reads the robot) is simply left cold.
    """
    spec = policy.spec
    blank = {k: np.zeros((spec.n_obs_steps, *shape), dtype=np.uint8 if len(shape) == 3 else np.float32)
             for k, shape in spec.obs_shapes.items()}
    try:
        policy.predict_chunk(blank)
    except Exception:  # noqa: BLE001 - warming is best-effort; real requests report real errors
        return False
    finally:
        policy.reset()
    return True


def check_spec_matches(saved: PolicySpec, current: PolicySpec, where: str) -> None:
    """Raise ValueError listing every obs key/shape or action dim that differs."""
    problems = []
    for key in sorted(set(saved.obs_shapes) | set(current.obs_shapes)):
        a, b = saved.obs_shapes.get(key), current.obs_shapes.get(key)
        if a != b:
            problems.append(f"'{key}': checkpoint {a}, {where} {b}")
    if saved.action_dim != current.action_dim:
        problems.append(f"action_dim: checkpoint {saved.action_dim}, {where} {current.action_dim}")
    for name in ("n_obs_steps", "horizon", "n_action_steps"):
        if getattr(saved, name) != getattr(current, name):
            problems.append(f"{name}: checkpoint {getattr(saved, name)}, {where} {getattr(current, name)}")
    if problems:
        raise ValueError(f"checkpoint does not match the {where}: " + "; ".join(problems))
