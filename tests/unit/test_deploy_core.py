"""Unit tests of the deploy core: scheduler, observation history, safety layer, controller."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from robot_learning.deploy.controller import PolicyController
from robot_learning.deploy.history import ObservationHistory, ObservationRejected
from robot_learning.deploy.safety import SafetyConfig, SafetyLayer
from robot_learning.deploy.scheduler import ActionScheduler, SchedulerConfig
from robot_learning.policies.base import Policy, PolicySpec

DT = 0.1


def ramp_chunk(start: float, n: int = 8, dim: int = 2) -> np.ndarray:
    """Chunk whose action i is (start + i) in every dim, so the executed index is visible."""
    return np.repeat((start + np.arange(n, dtype=np.float64))[:, None], dim, axis=1)


# -- scheduler ------------------------------------------------------------------------------------
def test_hold_index_keeps_an_action_whose_period_is_still_running() -> None:
    s = ActionScheduler(DT, SchedulerConfig(blend="latest"))  # index=hold, the default
    # captured at 10.0, arrived 0.27 s later: actions 0 and 1 have ended, action 2 covers [10.2, 10.3)
    assert s.add_chunk(ramp_chunk(0), t0=10.0, now=10.27) == 6 and s.stats.late_dropped == 2
    assert s.action_at(10.28)[0] == 2.0
    assert s.action_at(10.38)[0] == 3.0
    # a chunk that lands 60 ms after its observation keeps its first action (nearest would drop it)
    s2 = ActionScheduler(DT, SchedulerConfig(blend="latest"))
    assert s2.add_chunk(ramp_chunk(0), t0=20.0, now=20.06) == 8 and s2.stats.late_dropped == 0
    assert s2.action_at(20.07)[0] == 0.0
    assert list(s2.stats.obs_to_action_s) == pytest.approx([0.07])  # capture -> first action only
    s2.action_at(20.17)
    assert len(s2.stats.obs_to_action_s) == 1


def test_late_actions_are_dropped_and_the_rest_follow_the_observation_clock() -> None:
    s = ActionScheduler(DT, SchedulerConfig(blend="latest", index="nearest"))
    # observation captured at t=10.0, chunk arrives 0.27 s later: actions 0..2 are in the past
    usable = s.add_chunk(ramp_chunk(0), t0=10.0, now=10.27)
    assert usable == 5 and s.stats.late_dropped == 3
    assert s.action_at(10.3)[0] == 3.0
    assert s.action_at(10.4)[0] == 4.0
    assert s.action_at(10.7)[0] == 7.0
    assert s.action_at(10.9) is None and s.stats.starved_ticks == 1


def test_stale_and_out_of_order_chunks_are_not_scheduled() -> None:
    s = ActionScheduler(DT, SchedulerConfig(blend="latest"))
    assert s.add_chunk(ramp_chunk(0), t0=10.0, now=11.0) == 0 and s.stats.stale_chunks == 1
    assert s.add_chunk(ramp_chunk(100), t0=10.5, now=10.55) > 0
    assert s.add_chunk(ramp_chunk(200), t0=10.4, now=10.56) == 0 and s.stats.out_of_order_chunks == 1
    assert s.action_at(10.6)[0] == 101.0


def test_temporal_ensemble_weights_overlapping_chunks() -> None:
    s = ActionScheduler(DT, SchedulerConfig(blend="temporal_ensemble", ensemble_decay=0.0))
    s.add_chunk(ramp_chunk(0), t0=10.0, now=10.0)
    s.add_chunk(ramp_chunk(100), t0=10.2, now=10.2)
    # at t=10.3 the old chunk says 3, the new one says 101: equal weights with decay 0
    assert s.action_at(10.3)[0] == pytest.approx(52.0)


def test_crossfade_moves_gradually_from_old_to_new_chunk() -> None:
    s = ActionScheduler(DT, SchedulerConfig(blend="crossfade", blend_steps=4))
    s.add_chunk(np.zeros((8, 1)), t0=10.0, now=10.0)
    s.add_chunk(np.ones((8, 1)), t0=10.2, now=10.2)
    values = [s.action_at(10.2 + k * DT)[0] for k in range(5)]
    assert values == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_scheduler_config_rejects_unknown_blend() -> None:
    with pytest.raises(ValueError, match="scheduler.blend"):
        SchedulerConfig(blend="average")


# -- observation history -----------------------------------------------------------------------------
def test_history_samples_on_grid_and_pads_short_history() -> None:
    h = ObservationHistory({"a": (1,), "b": (1,)}, align="at_or_before", reference="newest")
    for t in (1.00, 1.05, 1.10, 1.15, 1.20):
        h.add("a", np.array([t], np.float32), t)
    h.add("b", np.array([7.0], np.float32), 1.18)
    obs, t_ref = h.sample(3, 0.1)
    assert t_ref == pytest.approx(1.20)
    assert obs["a"][:, 0] == pytest.approx([1.00, 1.10, 1.20])
    assert obs["b"][:, 0] == pytest.approx([7.0, 7.0, 7.0])  # padded with its only sample


def test_history_pairs_streams_of_one_instant_and_consecutive_ticks_under_jitter() -> None:
    h = ObservationHistory({"cam": (1,), "joint": (1,)})  # reference=complete, align=nearest (defaults)
    ticks = [1.000, 1.104, 1.203, 1.298]  # a robot at 10 Hz with a few ms of stamp jitter
    for k, t in enumerate(ticks):
        h.add("cam", np.array([k], np.float32), t)
        h.add("joint", np.array([k], np.float32), t)
    h.add("joint", np.array([4], np.float32), 1.402)  # the next tick's joints came before its frame
    obs, t_ref, used = h.sample_with_stamps(2, 0.1)
    assert t_ref == pytest.approx(1.298)  # the newest instant every stream has reached
    assert obs["cam"][:, 0].tolist() == [2, 3] and obs["joint"][:, 0].tolist() == [2, 3]
    assert used["joint"] == pytest.approx([1.203, 1.298])
    old = ObservationHistory({"cam": (1,)}, align="at_or_before")
    for k, t in enumerate(ticks):
        old.add("cam", np.array([k], np.float32), t)
    assert old.sample(2, 0.1)[0]["cam"][:, 0].tolist() == [1, 3]  # skipped a tick: the bug it replaced


def test_history_future_stamp_and_clock_jump_do_not_block_valid_samples() -> None:
    now = [100.0]
    h = ObservationHistory({"j": (1,)}, clock=lambda: now[0])
    h.add("j", np.zeros(1, np.float32), 99.9)
    with pytest.raises(ObservationRejected, match="j.*in the future"):
        h.add("j", np.zeros(1, np.float32), 5000.0)
    h.add("j", np.ones(1, np.float32), 100.0)  # the next valid sample is stored
    assert h.newest_stamps() == {"j": 100.0}
    with pytest.raises(ObservationRejected, match="out of order"):  # one stale message: rejected
        h.add("j", np.full(1, 9, np.float32), 40.0)
    h.add("j", np.full(1, 9, np.float32), 100.05)
    for k, t in enumerate((49.8, 49.9)):  # then the clock steps back 50 s: rejected until it is a pattern
        with pytest.raises(ObservationRejected, match="out of order"):
            h.add("j", np.full(1, k, np.float32), t)
    h.add("j", np.full(1, 2, np.float32), 50.0)  # third in a row: a clock jump, the buffer restarts there
    assert h.newest_stamps() == {"j": 50.0} and h.stats.clock_jumps == 1
    assert h.stats.warnings and "50.050 s" in h.stats.warnings[0]
    h.add("j", np.full(1, 3, np.float32), 50.1)
    assert h.sample(2, 0.1)[0]["j"][:, 0].tolist() == [2, 3]


def test_history_rejects_malformed_and_out_of_order_samples_with_reasons() -> None:
    h = ObservationHistory({"joint_pos": (3,)})
    h.add("joint_pos", np.zeros(3, np.float32), 5.0)
    with pytest.raises(ObservationRejected, match="joint_pos.*out of order"):
        h.add("joint_pos", np.zeros(3, np.float32), 4.0)
    with pytest.raises(ObservationRejected, match="joint_pos.*shape"):
        h.add("joint_pos", np.zeros(4, np.float32), 6.0)
    with pytest.raises(ObservationRejected, match="NaN"):
        h.add("joint_pos", np.array([0, np.nan, 0], np.float32), 6.0)
    with pytest.raises(ObservationRejected, match="unknown stream"):
        h.add("camera_top", np.zeros(3, np.float32), 6.0)
    assert h.stats.rejected == {"out_of_order": 1, "bad_shape": 1, "non_finite": 1, "unknown": 1}
    assert h.newest_stamps() == {"joint_pos": 5.0}


# -- safety layer ------------------------------------------------------------------------------------
def make_safety(**kw) -> SafetyLayer:
    cfg = SafetyConfig(action_low=[-1.0] * 5, action_high=[1.0] * 5, **kw)
    return SafetyLayer(cfg, 5)


def test_nan_and_out_of_range_actions_are_rejected_and_hold() -> None:
    s = make_safety()
    ok = s.filter(np.array([0.1, 0, 0, 0, 0.8]), now=1.0)
    assert ok.status == "ok"
    bad = s.filter(np.array([0.1, np.nan, 0, 0, 0.8]), now=1.1)
    assert bad.status == "hold" and "NaN" in bad.reasons[0]
    assert bad.action.tolist() == [0, 0, 0, 0, 0.8]  # motion zero, gripper kept
    far = s.filter(np.array([0, 0, 3.0, 0, 0]), now=1.2)
    assert far.status == "hold" and "dims [2] out of range" in far.reasons[0]
    near = s.filter(np.array([0, 0, 1.03, 0, 0]), now=1.3)
    assert near.status == "limited" and near.action[2] == 1.0


def test_watchdog_holds_on_stale_or_missing_streams() -> None:
    s = make_safety(stale_timeout_s=0.2)
    fresh = s.filter(np.full(5, 0.5), now=10.0, newest_stamps={"joint_pos": 9.9})
    assert fresh.status == "ok"
    stale = s.filter(np.full(5, 0.5), now=10.0, newest_stamps={"joint_pos": 9.7})
    assert stale.status == "hold" and "joint_pos last captured 0.300 s ago" in stale.reasons[0]
    missing = s.filter(np.full(5, 0.5), now=10.0, newest_stamps={"joint_pos": float("nan")})
    assert "never received" in missing.reasons[0]


def test_estop_latches_until_reset() -> None:
    s = make_safety()
    s.estop("operator button")
    for t in range(3):
        d = s.filter(np.full(5, 0.3), now=float(t))
        assert d.status == "hold" and "operator button" in d.reasons[0]
    s.reset_estop()
    assert s.filter(np.full(5, 0.3), now=5.0).status == "ok"


def test_velocity_acceleration_and_workspace_limits() -> None:
    s = make_safety(max_velocity=[0.5] * 5, max_acceleration=[0.2] * 5,
                    workspace_low=[0.0, -0.5, 0.0], workspace_high=[1.0, 0.5, 1.0], delta_scale_m=0.1)
    d = s.filter(np.array([1.0, 0, 0, 0, 0]), now=0.0, ee_pos=np.array([0.5, 0, 0.5]))
    assert d.action[0] == pytest.approx(0.2)  # from rest: acceleration limit
    for _ in range(5):
        d = s.filter(np.array([1.0, 0, 0, 0, 0]), now=0.0, ee_pos=np.array([0.5, 0, 0.5]))
    assert d.action[0] == pytest.approx(0.5)  # velocity limit
    # 0.02 m from the top of the box: a downward-safe, upward-limited z command
    s2 = make_safety(workspace_low=[0.0, -0.5, 0.0], workspace_high=[1.0, 0.5, 1.0], delta_scale_m=0.1)
    d = s2.filter(np.array([0, 0, 1.0, 0, 0]), now=0.0, ee_pos=np.array([0.5, 0, 0.98]))
    assert d.action[2] == pytest.approx(0.2) and "workspace limited" in d.reasons
    d = s2.filter(np.array([0, 0, -1.0, 0, 0]), now=0.0, ee_pos=np.array([0.5, 0, 0.98]))
    assert d.action[2] == pytest.approx(-1.0)


def test_joint_limits_hold() -> None:
    s = make_safety(joint_low=[-1.0, -1.0], joint_high=[1.0, 1.0])
    d = s.filter(np.zeros(5), now=0.0, joint_pos=np.array([0.0, 1.2]))
    assert d.status == "hold" and "joints [1]" in d.reasons[0]


def test_safety_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="workspace_low"):
        SafetyConfig(workspace_low=[0, 0, 0], workspace_high=[1, 1])
    with pytest.raises(ValueError, match="max_velocity"):
        SafetyLayer(SafetyConfig(max_velocity=[1.0, 1.0]), 5)


# -- controller ---------------------------------------------------------------------------------------
class StepPolicy(Policy):
    """Chunk = newest low-dim observation value + step index; optional delay and NaN output."""

    def __init__(self, delay_s: float = 0.0, nan: bool = False) -> None:
        self.spec = PolicySpec(obs_shapes={"x": (2,)}, action_dim=2, n_obs_steps=2, horizon=8,
                               n_action_steps=4, control_hz=20.0)
        self.delay_s, self.nan, self.calls = delay_s, nan, 0

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        self.spec.check_obs_history(obs_history)
        self.calls += 1
        time.sleep(self.delay_s)
        out = np.zeros((8, 2)) + 0.01 * np.arange(8)[:, None]
        return out * np.nan if self.nan else out


def run_controller(ctrl: PolicyController, seconds: float, feed: bool = True) -> list:
    """Feed observations and tick at the control rate in real time; return the tick results."""
    results = []
    period = 1.0 / ctrl.control_hz
    end = time.time() + seconds
    while time.time() < end:
        now = time.time()
        if feed:
            ctrl.on_observation("x", np.zeros(2, np.float32), now)
        results.append(ctrl.tick(now))
        time.sleep(period)
    return results


class GatedPolicy(StepPolicy):
    """StepPolicy whose inference does not return until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.started = threading.Event()

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        self.started.set()
        assert self.gate.wait(10)
        return super().predict_chunk(obs_history)


def test_ticks_never_wait_for_inference_in_flight() -> None:
    policy = GatedPolicy()
    ctrl = PolicyController(policy, SafetyConfig(action_low=[-1, -1], action_high=[1, 1], hold_keep_dims=[]))
    ctrl.start()
    try:
        now = time.time()
        ctrl.on_observation("x", np.zeros(2, np.float32), now)
        assert policy.started.wait(5)
        # inference is stuck inside the policy: every tick still answers at once, with a safe hold
        held = [ctrl.tick(now + 0.01 * k) for k in range(5)]
        assert all(r.status == "hold" and r.reasons[0].startswith("no_action") for r in held)
        policy.gate.set()
        deadline = time.time() + 5
        while time.time() < deadline and ctrl.scheduler.stats.chunks == 0:
            time.sleep(0.01)
        t = time.time()
        r = ctrl.tick(t)
        due = int(np.floor((t - now) / 0.05 + 0.5))  # the chunk's action i is due at now + i * dt
        assert r.source == "policy" and r.action.tolist() == pytest.approx([0.01 * due] * 2)
    finally:
        policy.gate.set()
        ctrl.stop()


def test_controller_streams_policy_actions_and_drops_late_ones() -> None:
    policy = StepPolicy(delay_s=0.12)  # longer than two control periods
    ctrl = PolicyController(policy, SafetyConfig(action_low=[-1, -1], action_high=[1, 1], hold_keep_dims=[]))
    ctrl.start()
    try:
        results = run_controller(ctrl, 1.0)
    finally:
        ctrl.stop()
    sources = [r.source for r in results]
    assert sources[0] == "hold" and "policy" in sources
    d = ctrl.diagnostics()
    assert d["chunks"] >= 2 and d["late_dropped_actions"] >= 2  # 0.12 s latency drops >= 2 actions per chunk


class EveryOtherChunkNaN(StepPolicy):
    """Valid and NaN chunks in turn."""

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        out = super().predict_chunk(obs_history)
        return out * np.nan if self.calls % 2 == 0 else out


@pytest.mark.parametrize("blend", ["crossfade", "temporal_ensemble", "latest"])
def test_a_nan_chunk_is_dropped_on_arrival_and_never_poisons_the_next_valid_one(blend: str) -> None:
    policy = EveryOtherChunkNaN()
    ctrl = PolicyController(policy, SafetyConfig(action_low=[-1, -1], action_high=[1, 1], hold_keep_dims=[]),
                            SchedulerConfig(blend=blend))
    ctrl.start()
    try:
        results = run_controller(ctrl, 1.0)
    finally:
        ctrl.stop()
    assert policy.calls >= 4 and ctrl.safety.counts.get("bad_action", 0) >= 2
    assert all(np.all(np.isfinite(r.action)) for r in results if r.action is not None)
    # after the first valid chunk: valid chunks drive the robot, a NaN one drops the plan (hold) until the next
    sources = [r.source for r in results]
    assert sources.count("policy") >= len(results) // 3 and "hold" in sources[sources.index("policy"):]


def test_controller_holds_on_nan_policy_and_on_watchdog_and_reports_why() -> None:
    ctrl = PolicyController(StepPolicy(nan=True), SafetyConfig(hold_keep_dims=[]))
    ctrl.start()
    try:
        results = run_controller(ctrl, 0.4)
        assert all(r.status == "hold" for r in results)
        assert ctrl.safety.counts.get("bad_action", 0) >= 1
        assert all(np.all(r.action == 0) for r in results)
    finally:
        ctrl.stop()
    ctrl2 = PolicyController(StepPolicy(), SafetyConfig(stale_timeout_s=0.1, hold_keep_dims=[]))
    ctrl2.start()
    try:
        run_controller(ctrl2, 0.4)
        late = run_controller(ctrl2, 0.4, feed=False)
    finally:
        ctrl2.stop()
    # observations stopped: hold within timeout + one control period (0.1 + 0.05 s = 3 ticks)
    assert all(r.status == "hold" and "stale_observation" in r.reasons[0] for r in late[3:])


def test_controller_yields_to_operator_and_forwards_in_forward_mode() -> None:
    clock = [time.time()]
    ctrl = PolicyController(StepPolicy(), SafetyConfig(action_low=[-1, -1], action_high=[1, 1], hold_keep_dims=[]),
                            takeover="forward", clock=lambda: clock[0])
    now = clock[0]
    ctrl.on_observation("x", np.zeros(2, np.float32), now)
    ctrl.set_intervention(True)
    ctrl.set_operator_action(np.array([0.3, -2.0]), now)
    r = ctrl.tick(now)
    assert r.source == "hold" and "out of range" in r.reasons[0]  # operator commands are checked too
    ctrl.set_operator_action(np.array([0.3, -0.2]), now)
    r = ctrl.tick(now)
    assert r.source == "human" and r.action.tolist() == [0.3, -0.2]
    clock[0] = now + 1.0
    ctrl.on_observation("x", np.zeros(2, np.float32), now + 1.0)
    r = ctrl.tick(now + 1.0)  # the operator's last command is 1 s old: hold, and say so
    assert r.source == "hold" and "no fresh operator command" in r.reasons[0] and r.action.tolist() == [0, 0]
    ctrl_y = PolicyController(StepPolicy(), SafetyConfig(hold_keep_dims=[]), takeover="yield")
    ctrl_y.set_intervention(True)
    r = ctrl_y.tick()
    assert r.action is None and r.source == "human"


def test_controller_refuses_rate_mismatch_for_delta_actions() -> None:
    with pytest.raises(ValueError, match="control_hz 50.0 differs"):
        PolicyController(StepPolicy(), SafetyConfig(hold_keep_dims=[]), control_hz=50.0)


def test_absolute_mode_holds_the_last_command_and_limits_steps() -> None:
    s = SafetyLayer(SafetyConfig(action_mode="ee_abs", action_low=[-1.0] * 3, action_high=[1.0] * 3,
                                 max_velocity=[0.1] * 3, hold_keep_dims=[], position_dims=[0, 1, 2],
                                 workspace_low=[-0.5, -0.5, -0.5], workspace_high=[0.5, 0.5, 0.5]), 3)
    assert s.filter(np.array([0.0, 0.0, 0.0]), now=0.0).status == "ok"
    d = s.filter(np.array([0.5, 0.0, -0.05]), now=0.0)
    assert d.action.tolist() == pytest.approx([0.1, 0.0, -0.05])  # position step limited to 0.1
    d = s.filter(np.array([0.1, 0.9, 0.0]), now=0.0)
    assert d.action[1] == pytest.approx(0.1)
    held = s.filter(np.array([np.inf, 0, 0]), now=0.0)
    assert held.status == "hold" and held.action.tolist() == pytest.approx(d.action.tolist())
    fresh = SafetyLayer(SafetyConfig(action_mode="ee_abs", hold_keep_dims=[]), 3)
    assert fresh.filter(None, now=0.0).action is None  # no previous command: publish nothing


def test_diagnostics_histogram_and_jitter() -> None:
    from robot_learning.deploy.diagnostics import LoopDiagnostics

    d = LoopDiagnostics(period_s=0.02)
    for ms in (3, 7, 15, 15, 600, 2000):
        d.inference(ms)
    for t in (0.0, 0.02, 0.04, 0.07, 0.09):
        d.tick(t)
    h = d.inference_figures()["inference_histogram"]
    assert h["<=5ms"] == 1 and h["<=10ms"] == 1 and h["<=20ms"] == 2 and h["<=1000ms"] == 1 and h[">1000ms"] == 1
    loop = d.loop_figures()
    assert loop["jitter_max_ms"] == pytest.approx(10.0) and loop["loop_hz"] == pytest.approx(4 / 0.09)
