"""Scripted policies behind the ``Policy`` interface, and ``build_policy`` for every policy source.

``ExpertPolicy`` runs the sim's scripted expert on the privileged-state stream that the
``sim_robot`` node publishes (``/sim/privileged_state``), so closed-loop deployment tests and demos
can exercise the real node, scheduler and safety layer without a trained checkpoint. It predicts a
short chunk (the expert's action for the newest observation, repeated) and is replanned at every
new observation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robot_learning.policies.base import Policy, PolicySpec

PRIVILEGED_KEY = "privileged_state"


class ExpertPolicy(Policy):
    """The sim's scripted expert as a policy over the ``privileged_state`` observation."""

    def __init__(self, task: str = "lift", control_hz: float = 10.0, quality: float = 1.0, seed: int = 0,
                 task_flags: tuple[str, ...] = (), layout: dict[str, int] | None = None) -> None:
        from sim import make_expert
        from sim.privileged import PrivilegedView, privileged_layout

        self.task = task
        self.layout = dict(layout or privileged_layout(task, task_flags))
        self.expert = make_expert(task, quality=quality, seed=seed)
        self.view = PrivilegedView(control_hz)  # the SimRobot API the expert reads, from one observation
        size = sum(self.layout.values())
        self.spec = PolicySpec(obs_shapes={PRIVILEGED_KEY: (size,)}, action_dim=5, n_obs_steps=1, horizon=2,
                               n_action_steps=1, control_hz=control_hz, action_mode="ee_delta")
        self._last_steps = -1

    def reset(self) -> None:
        """New episode: reset the expert's phase machine."""
        self.expert.reset()
        self._last_steps = -1

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """The expert's action for the newest observation, held for the chunk."""
        self.spec.check_obs_history(obs_history)
        flat = np.asarray(obs_history[PRIVILEGED_KEY][-1], dtype=np.float64)
        segments, offset = {}, 0
        for key, n in self.layout.items():
            segments[key] = flat[offset: offset + n]
            offset += n
        self.view.update(segments)
        if self.view.steps < self._last_steps:  # the sim was reset under us: start the phase machine over
            self.expert.reset()
        self._last_steps = self.view.steps
        action = self.expert.act(self.view)
        return np.repeat(np.asarray(action, dtype=np.float32)[None], self.spec.horizon, axis=0)


def make_scripted(name: str, control_hz: float = 10.0) -> Policy:
    """A built-in scripted policy by name: ``expert:<task>``."""
    kind, _, arg = name.partition(":")
    if kind == "expert" and arg:
        return ExpertPolicy(task=arg, control_hz=control_hz)
    raise ValueError(f"policy.scripted: unknown scripted policy '{name}' (use 'expert:<task>', e.g. expert:lift)")


def _remote(url: str, source: Any, obs_shapes: dict[str, tuple[int, ...]] | None, action_dim: int | None,
            action_mode: str | None) -> Policy:
    """A ``RemotePolicy`` to ``url``, retried for ``source.connect_wait_s`` while the server is not up yet."""
    import logging
    import time

    from robot_learning.serve.client import PolicyServerError, RemotePolicy

    give_up = time.monotonic() + source.connect_wait_s
    while True:
        try:
            return RemotePolicy(url, obs_shapes=obs_shapes, action_dim=action_dim, action_mode=action_mode,
                                timeout_s=source.timeout_s)
        except PolicyServerError as exc:  # not up yet: wait for it (a spec mismatch is not retried)
            if time.monotonic() > give_up:
                raise
            logging.getLogger(__name__).warning("%s; retrying for %.0f s", exc, give_up - time.monotonic())
            time.sleep(1.0)


def build_policy(source: Any, obs_shapes: dict[str, tuple[int, ...]] | None = None,
                 action_dim: int | None = None, action_mode: str | None = None) -> Policy:
    """A local, remote or scripted policy from a ``PolicySourceConfig``."""
    kind = source.kind()
    if kind == "scripted":
        return make_scripted(source.scripted, source.control_hz)
    if kind == "server":
        return _remote(source.server, source, obs_shapes, action_dim, action_mode)
    from robot_learning.policies.checkpoint import load_policy

    base_server = getattr(source, "base_server", "")
    base = _remote(base_server, source, obs_shapes, action_dim, action_mode) if base_server else None
    policy = load_policy(source.checkpoint, device=source.device, base=base)
    if obs_shapes is not None:
        from robot_learning.serve.server import spec_mismatches

        problems = spec_mismatches(policy.spec, obs_shapes, action_dim or policy.spec.action_dim, action_mode)
        if problems:
            raise ValueError(f"checkpoint {source.checkpoint} does not fit the robot: " + "; ".join(problems))
    return policy
