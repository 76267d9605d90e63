"""The parity instrument: what the controller fed the policy and executed, written and replayed."""

from __future__ import annotations

import time

import numpy as np

from robot_learning.deploy.controller import PolicyController
from robot_learning.deploy.safety import SafetyConfig
from robot_learning.deploy.trace import DeployTrace, load_trace, replay, slot_gaps
from robot_learning.policies.base import Policy, PolicySpec


class EchoPolicy(Policy):
    """Chunk = the newest observation value, so a replay on the recorded input must match exactly."""

    def __init__(self) -> None:
        self.spec = PolicySpec(obs_shapes={"x": (2,)}, action_dim=2, n_obs_steps=2, horizon=8,
                               n_action_steps=4, control_hz=20.0)

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        return np.repeat(obs_history["x"][-1][None].astype(np.float64) * 0.01, 8, axis=0)


def test_trace_records_inputs_slots_chunks_and_ticks_and_replays_exactly(tmp_path) -> None:
    trace = DeployTrace(tmp_path)
    ctrl = PolicyController(EchoPolicy(), SafetyConfig(action_low=[-1, -1], action_high=[1, 1], hold_keep_dims=[]),
                            trace=trace)
    ctrl.reset_episode()
    ctrl.start()
    try:
        t0 = time.time()
        for k in range(30):
            now = time.time()
            ctrl.on_observation("x", np.full(2, k, np.float32), now)
            ctrl.tick(now)
            time.sleep(max(0.0, t0 + (k + 1) / 20.0 - time.time()))
    finally:
        ctrl.stop()
    ctrl.reset_episode()  # writes episode 0
    t = load_trace(tmp_path / "episode_0000.npz")
    assert len(t["t_obs"]) >= 4 and t["chunks"].shape[1:] == (8, 2)
    assert t["obs"]["x"].shape[1:] == (2, 2) and len(t["tick_t"]) == 30
    assert replay(EchoPolicy(), t) == 0.0
    gaps = slot_gaps(t, 1 / 20.0)["x"]
    assert gaps[0] == 0.0 and np.all(gaps[1:] > 0)  # the first input pads; later slots hold distinct samples
    assert np.all(np.diff(t["t_obs"]) > 0)
    assert set(t["tick_source"].tolist()) <= {"policy", "hold"}
