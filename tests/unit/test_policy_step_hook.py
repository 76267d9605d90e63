"""The per-step hook: called once per executed action by the sim agent and by the deploy controller."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from robot_learning.deploy.controller import PolicyController
from robot_learning.deploy.safety import SafetyConfig
from robot_learning.deploy.scheduler import SchedulerConfig
from robot_learning.deploy.worker import GivenPolicy, ProcessPolicy
from robot_learning.eval.policy_agent import PolicyAgent
from robot_learning.policies.base import ChunkResult, Policy, PolicySpec

SPEC = PolicySpec(obs_shapes={"x": (2,)}, action_dim=2, n_obs_steps=2, horizon=8, n_action_steps=4, control_hz=20.0)
OFFSET = 0.5


class RampPolicy(Policy):
    """Chunk action i = 0.01 * i (the executed index is visible); no hook."""

    spec = SPEC

    def __init__(self) -> None:
        self.chunks = 0

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        self.spec.check_obs_history(obs_history)
        self.chunks += 1
        return np.zeros((8, 2)) + 0.01 * np.arange(8)[:, None]


class CountingHook:
    """Adds OFFSET + the newest observation; records every call and the process it ran in."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, int]] = []  # (step_in_chunk, planned[0], pid)
        self.resets = 0

    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray, step_in_chunk: int) -> np.ndarray:
        assert obs_history["x"].shape == (2, 2)
        self.calls.append((step_in_chunk, float(planned_action[0]), os.getpid()))
        return planned_action + OFFSET + obs_history["x"][-1]

    def reset(self) -> None:
        self.resets += 1


class InfoPolicy(RampPolicy):
    """Reports how many chunks it planned in the chunk info (what diagnostics should carry)."""

    def predict_chunk_with_info(self, obs_history):
        chunk = self.predict_chunk(obs_history)
        return ChunkResult(chunk, {"chunk": self.chunks, "scores": np.zeros(3)})


class HookedPolicy(InfoPolicy):
    """RampPolicy with a per-step hook (the hook object is what isolation=process sends back)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = CountingHook()

    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray, step_in_chunk: int) -> np.ndarray:
        return self.hook.step_action(obs_history, planned_action, step_in_chunk)

    def step_hook(self) -> CountingHook:
        return self.hook


def test_sim_agent_calls_the_hook_once_per_executed_action_with_the_newest_observation() -> None:
    policy = HookedPolicy()
    agent = PolicyAgent(policy)
    agent.reset(seed=0)
    actions = [agent.act({"x": np.full(2, 0.001 * t, np.float32)}) for t in range(10)]
    assert policy.chunks == 3 and len(policy.hook.calls) == 10  # 4 + 4 + 2 executed actions
    assert [c[0] for c in policy.hook.calls] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    expected = [0.01 * (t % 4) + OFFSET + 0.001 * t for t in range(10)]  # corrected from the *current* obs
    np.testing.assert_allclose([a[0] for a in actions], expected, atol=1e-6)
    plain = PolicyAgent(RampPolicy())
    plain.reset(seed=0)
    assert [plain.act({"x": np.zeros(2, np.float32)})[0] for _ in range(5)] == pytest.approx([0, 0.01, 0.02, 0.03, 0])


def _run(ctrl: PolicyController, seconds: float) -> list:
    results, end = [], time.time() + seconds
    while time.time() < end:
        now = time.time()
        ctrl.on_observation("x", np.zeros(2, np.float32), now)
        results.append(ctrl.tick(now))
        time.sleep(1.0 / ctrl.control_hz)
    return results


def _check_controller(policy: Policy, hook: CountingHook, in_pid: int) -> None:
    ctrl = PolicyController(policy, SafetyConfig(action_low=[-1, -1], action_high=[1, 1], hold_keep_dims=[]),
                            SchedulerConfig(blend="latest"))
    ctrl.start()
    try:
        results = _run(ctrl, 1.0)
    finally:
        ctrl.stop()
    executed = [r for r in results if r.source == "policy"]
    assert len(executed) >= 5 and len(hook.calls) == len(executed)  # once per executed action, never for holds
    for r, (step, planned, pid) in zip(executed, hook.calls, strict=True):
        assert pid == in_pid
        assert planned == pytest.approx(0.01 * step) and r.action[0] == pytest.approx(planned + OFFSET)
    assert ctrl.diagnostics()["step_hook_ms"] >= 0.0
    info = ctrl.diagnostics()["policy_info"]  # the chunk info reaches the diagnostics, also from a child process
    assert set(info) == {"chunk"} and info["chunk"] >= 1
    if not isinstance(policy, ProcessPolicy):
        assert info["chunk"] == float(policy.chunks)
    ctrl.reset_episode()


def test_controller_calls_the_hook_once_per_executed_action_in_the_control_thread() -> None:
    policy = HookedPolicy()
    _check_controller(policy, policy.hook, os.getpid())


def test_with_process_isolation_the_hook_runs_in_the_control_process() -> None:
    policy = ProcessPolicy(GivenPolicy(HookedPolicy()), timeout_s=10.0)
    try:
        assert policy.has_step_hook and policy.pid != os.getpid()
        _check_controller(policy, policy._hook, os.getpid())  # the hook's calls were made here, not in the child
        assert policy._hook.resets == 1  # reset_episode reached the local hook too
    finally:
        policy.close()


def test_a_failing_hook_holds_and_says_why() -> None:
    class Broken(HookedPolicy):
        def step_action(self, obs_history, planned_action, step_in_chunk):
            raise RuntimeError("residual exploded")

    ctrl = PolicyController(Broken(), SafetyConfig(action_low=[-1, -1], action_high=[1, 1], hold_keep_dims=[]))
    ctrl.start()
    try:
        results = _run(ctrl, 0.5)
    finally:
        ctrl.stop()
    assert all(r.source != "policy" and r.status == "hold" for r in results)
    assert ctrl.diagnostics()["inference_errors"] >= 1 and "residual exploded" in ctrl.diag.last_inference_error
    assert ctrl.policy.chunks >= 1  # chunks were planned; only their correction failed
