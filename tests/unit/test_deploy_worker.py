"""ProcessPolicy: the policy runs in a real child process (spawn), out of the caller's GIL."""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial

import numpy as np
import pytest

from robot_learning.deploy.worker import GivenPolicy, PolicyWorkerError, ProcessPolicy
from robot_learning.policies.base import Policy, PolicySpec

SPEC = PolicySpec(obs_shapes={"joint_pos": (3,)}, action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=2,
                  control_hz=10.0)


class PidPolicy(Policy):
    """Action 0 = the pid that computed it, action 1 = resets seen; mean < -100 raises, == 7 holds the GIL 1 s, == 8 for 20 s."""

    def __init__(self) -> None:
        self.spec = SPEC
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        value = float(obs_history["joint_pos"][-1].mean())
        if value < -100:
            raise RuntimeError("policy exploded")
        if value in (7.0, 8.0):
            hold_gil(1.0 if value == 7.0 else 20.0)
        out = np.zeros((SPEC.horizon, SPEC.action_dim))
        out[:, 0], out[:, 1] = os.getpid(), self.resets
        return out


def hold_gil(seconds: float) -> None:
    """Block in native code *without* releasing the GIL (ctypes.PyDLL keeps it), like a C extension might."""
    import ctypes

    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


def failing_factory(message: str) -> Policy:
    raise ValueError(message)


def obs(value: float = 0.5) -> dict[str, np.ndarray]:
    return {"joint_pos": np.full((2, 3), value, np.float32)}


@pytest.fixture(scope="module")
def worker():
    p = ProcessPolicy(GivenPolicy(PidPolicy()), timeout_s=10.0)
    yield p
    p.close()


def test_predicts_in_a_child_process_and_forwards_reset(worker: ProcessPolicy) -> None:
    assert worker.spec == SPEC
    chunk = worker.predict_chunk(obs())
    assert chunk.shape == (4, 2)
    assert int(chunk[0, 0]) == worker.pid != os.getpid()
    before = chunk[0, 1]  # the child warmed the policy up (one prediction + reset) before reporting ready
    assert before == 1
    worker.reset()
    assert worker.predict_chunk(obs())[0, 1] == before + 1  # the reset reached the child's policy


def test_policy_errors_are_reported_and_the_worker_keeps_serving(worker: ProcessPolicy) -> None:
    with pytest.raises(PolicyWorkerError, match="RuntimeError: policy exploded"):
        worker.predict_chunk(obs(-1000.0))
    with pytest.raises(ValueError, match="key 'joint_pos'"):
        worker.predict_chunk({"joint_pos": np.zeros((2, 4), np.float32)})  # checked before it is sent
    assert worker.predict_chunk(obs())[0, 0] == worker.pid


def test_a_killed_worker_is_reported_then_restarted(worker: ProcessPolicy) -> None:
    first, restarts = worker.pid, worker.restarts
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with pytest.raises(PolicyWorkerError, match="died"):
        worker.predict_chunk(obs())
    chunk = worker.predict_chunk(obs())  # a fresh child
    assert worker.restarts == restarts + 1 and int(chunk[0, 0]) == worker.pid != first


def test_start_up_problems_name_the_cause() -> None:
    with pytest.raises(ValueError, match="building the policy failed: ValueError: checkpoint x.pt does not fit"):
        ProcessPolicy(partial(failing_factory, "checkpoint x.pt does not fit the robot"))

    class Unpicklable(PidPolicy):  # a local class cannot be pickled into a child process
        pass

    with pytest.raises(ValueError, match="policy.isolation=process: the policy cannot be sent"):
        ProcessPolicy(GivenPolicy(Unpicklable()))


def test_a_policy_holding_the_gil_does_not_stop_this_process(worker: ProcessPolicy) -> None:
    """The regression the worker exists for: while the child blocks with its GIL held, this process runs."""
    ticks = 0
    done = threading.Event()
    t = threading.Thread(target=lambda: (worker.predict_chunk(obs(7.0)), done.set()))
    t0 = time.perf_counter()
    t.start()
    while not done.is_set() and time.perf_counter() - t0 < 5:
        time.sleep(0.01)
        ticks += 1
    elapsed = time.perf_counter() - t0
    t.join(5)
    assert done.is_set() and elapsed >= 0.9  # the prediction really took ~1 s
    assert ticks >= 0.5 * elapsed / 0.01, f"only {ticks} 10 ms ticks in {elapsed:.2f} s"


def test_the_same_policy_in_this_process_would_stop_it() -> None:
    """Control for the test above: the GIL-holding call really blocks every thread of its process."""
    ticks: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            time.sleep(0.01)
            ticks.append(time.perf_counter())

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.1)
    t0 = time.perf_counter()
    PidPolicy().predict_chunk(obs(7.0))
    t1 = time.perf_counter()
    stop.set()
    t.join(5)
    assert t1 - t0 >= 0.9 and sum(t0 + 0.05 < x < t1 - 0.05 for x in ticks) == 0


def test_close_ends_a_prediction_in_flight_and_refuses_new_ones() -> None:
    p = ProcessPolicy(GivenPolicy(PidPolicy()), timeout_s=30.0)
    errors: list[Exception] = []

    def predict() -> None:
        try:
            p.predict_chunk(obs(8.0))  # blocks 20 s in the child; close() must not wait for it
        except PolicyWorkerError as exc:
            errors.append(exc)

    t = threading.Thread(target=predict)
    t.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    p.close()
    t.join(5)
    # far under the 20 s the prediction in flight would take (margin for a loaded machine's process teardown)
    assert time.perf_counter() - t0 < 10.0 and p.pid is None
    with pytest.raises(PolicyWorkerError, match="closed"):
        p.predict_chunk(obs())


class NoisyPolicy(PidPolicy):
    """Stochastic: fresh noise in every chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(1)

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        return super().predict_chunk(obs_history) + self.rng.normal(0, 0.1, (SPEC.horizon, SPEC.action_dim))


def test_sample_chunks_returns_k_different_chunks_from_the_child_in_one_request() -> None:
    pol = ProcessPolicy(GivenPolicy(NoisyPolicy()), timeout_s=30)
    try:
        obs = {"joint_pos": np.zeros((2, 3), np.float32)}
        chunks = pol.sample_chunks(obs, 4)
        assert chunks.shape == (4, SPEC.horizon, SPEC.action_dim)
        assert len({c.tobytes() for c in chunks}) == 4
        assert np.allclose(np.round(chunks[:, :, 0]), pol.pid)  # computed in the child
        with pytest.raises(ValueError, match="k must be >= 1"):
            pol.sample_chunks(obs, 0)
    finally:
        pol.close()
