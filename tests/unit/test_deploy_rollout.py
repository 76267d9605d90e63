"""Rollouts are data: the controller's ticks -> a real zarr store episode with the one step schema."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robot_learning.data.layout import CONTROL_SOURCES, STEP_SCHEMA, StoreError
from robot_learning.data.store import EpisodeStore
from robot_learning.deploy.controller import PolicyController
from robot_learning.deploy.rollout import RolloutConfig, RolloutRecorder, step_fields
from robot_learning.deploy.safety import SafetyConfig
from robot_learning.policies.base import Policy, PolicySpec


class ConstPolicy(Policy):
    """Every action is 0.1."""

    def __init__(self) -> None:
        self.spec = PolicySpec(obs_shapes={"x": (2,)}, action_dim=2, n_obs_steps=2, horizon=8,
                               n_action_steps=4, control_hz=20.0)

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        return np.full((8, 2), 0.1)


def test_step_fields_follow_the_store_schema() -> None:
    f = step_fields("hold", intervention=False)
    assert set(f) == set(STEP_SCHEMA) and f["control_source"] == CONTROL_SOURCES.index("hold")
    assert all(f[k].dtype == np.dtype(dt) for k, dt in STEP_SCHEMA.items())
    with pytest.raises(StoreError, match="control_source 'robot'"):
        step_fields("robot", intervention=False)


def test_controller_records_policy_and_forwarded_operator_steps_with_label(tmp_path) -> None:
    store_path = str(tmp_path / "roll.zarr")
    rec = RolloutRecorder(RolloutConfig(store=store_path, task="unit", operator="ann"), "const.pt", 20.0)
    ctrl = PolicyController(ConstPolicy(), SafetyConfig(action_low=[-1, -1], action_high=[1, 1], hold_keep_dims=[],
                                                         max_velocity=[2, 2], max_acceleration=[4, 4]),
                            takeover="forward", rollout=rec)
    ctrl.start()
    try:
        t0 = time.time()
        for k in range(40):  # 2 s at 20 Hz: policy, then the operator drives
            now = time.time()
            ctrl.on_observation("x", np.full(2, k, np.float32), now)
            if k == 20:
                ctrl.set_intervention(True)
            if k >= 20:
                ctrl.set_operator_action(np.array([-0.3, 0.2]), now)
            ctrl.tick(now)
            time.sleep(max(0.0, t0 + (k + 1) / 20.0 - time.time()))
        assert "success" in rec.label(True, by="keyboard")
        ctrl.reset_episode()  # the episode boundary commits it
    finally:
        ctrl.stop()
        rec.close()
    assert not rec.errors and rec.committed == [0]
    store = EpisodeStore.open(store_path, mode="r")
    info = store.episodes()[0]
    assert info.meta.source == "policy" and info.meta.policy_id == "const.pt" and info.success
    assert info.meta.tags["label"] == "success" and info.meta.tags["labelled_by"] == "keyboard"
    assert info.meta.tags["interventions"] == 1
    ep = store.read_episode(0)
    names = [CONTROL_SOURCES[c] for c in ep["control_source"]]
    assert "policy" in names and names[-1] == "human"
    human = np.asarray(names) == "human"
    assert np.allclose(ep["action"][human], [-0.3, 0.2])  # the operator's commands are the executed actions
    assert np.allclose(ep["action"][np.asarray(names) == "policy"], 0.1)
    assert ep["intervention"][human].all() and not ep["intervention"][~human].any()
    assert ep["done"][-1] and ep["terminal"][-1] and not ep["done"][:-1].any()
    assert np.all(ep["reward"] == 0.0)


def test_steps_with_streams_apart_beyond_tolerance_are_flagged(tmp_path) -> None:
    rec = RolloutRecorder(RolloutConfig(store=str(tmp_path / "r.zarr"), tolerance_s=0.05), "p", 10.0)
    now = time.time()
    for k in range(3):
        lag = 0.1 if k == 1 else 0.0  # camera 100 ms behind the joints at step 1
        rec.on_tick(now + k * 0.1, {"cam": np.zeros((4, 4, 3), np.uint8), "j": np.zeros(2, np.float32)},
                    {"cam": now + k * 0.1 - lag, "j": now + k * 0.1}, np.zeros(2), "policy", False)
    rec.close()
    info = EpisodeStore.open(str(tmp_path / "r.zarr"), mode="r").episodes()[0]
    assert info.meta.tags["misaligned_steps"] == [[1, 0.1]] and info.meta.tags["label"] == "none"
