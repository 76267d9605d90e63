"""The policy node's logic in plain Python: observations in, one safe command per control tick out.

``PolicyController`` owns the observation history, the action scheduler, the safety layer and an
inference worker thread. The control timer calls ``tick()``, which only takes a short lock to read
the scheduled action: inference never blocks it. The worker starts a new inference early enough
(by the measured observation-to-chunk latency) that the next chunk arrives before the executed
part of the current one runs out. The ROS 2 node (``ros_nodes/policy_node.py``) is thin wiring
around this class, so it is unit-tested without a ROS graph.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot_learning.deploy.diagnostics import LoopDiagnostics
from robot_learning.deploy.history import HistoryConfig, ObservationHistory, ObservationRejected
from robot_learning.deploy.safety import SafetyConfig, SafetyLayer
from robot_learning.deploy.scheduler import ActionScheduler, SchedulerConfig
from robot_learning.policies.base import Policy

TAKEOVER_MODES = ("yield", "forward")


@dataclass
class TickResult:
    """One control tick: the command to publish (None = publish nothing) and who is in control."""

    action: np.ndarray | None
    source: str  # policy | human | hold | estop
    status: str  # ok | limited | hold | yielded
    reasons: list[str] = field(default_factory=list)


class PolicyController:
    """Observation history + async inference + scheduling + safety, independent of ROS."""

    def __init__(
        self,
        policy: Policy,
        safety: SafetyConfig,
        scheduler: SchedulerConfig | None = None,
        control_hz: float | None = None,
        extra_streams: dict[str, tuple[int, ...]] | None = None,
        takeover: str = "yield",
        inference_backoff_s: float = 0.2,
        clock: Callable[[], float] = time.time,
        history: HistoryConfig | None = None,
        trace: Any = None,
        rollout: Any = None,
    ) -> None:
        spec = policy.spec
        self.policy = policy
        self.spec = spec
        self.policy_dt = 1.0 / spec.control_hz
        self.control_hz = float(control_hz or spec.control_hz)
        if abs(self.control_hz - spec.control_hz) > 1e-6 and safety.action_mode == "ee_delta":
            raise ValueError(f"control_hz {self.control_hz} differs from the policy's {spec.control_hz} Hz: "
                             "ee_delta actions are per control period, so the rates must match")
        if takeover not in TAKEOVER_MODES:
            raise ValueError(f"takeover: '{takeover}' is not one of {TAKEOVER_MODES}")
        self.takeover = takeover
        self.clock = clock
        self.inference_backoff_s = inference_backoff_s
        streams = dict(spec.obs_shapes)
        for k, shape in (extra_streams or {}).items():
            streams.setdefault(k, tuple(shape))
        hcfg = history or HistoryConfig()
        self.history_cfg = hcfg
        self.history = ObservationHistory(streams, align=hcfg.align, reference=hcfg.reference,
                                          max_future_s=hcfg.max_future_s, clock_jump_s=hcfg.clock_jump_s, clock=clock)
        self.rollout = rollout  # a RolloutRecorder (deploy/rollout.py) or None: every episode into a store
        self.trace = trace  # a DeployTrace (deploy/trace.py) or None: what the policy was fed, what ran
        self.scheduler = ActionScheduler(self.policy_dt, scheduler)
        self.safety = SafetyLayer(safety, spec.action_dim)
        self.diag = LoopDiagnostics(1.0 / self.control_hz)
        self._lock = threading.Lock()  # guards scheduler + mode flags; held only briefly
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.intervention = False
        self._operator: tuple[np.ndarray, float] | None = None
        self.latency_est_s = 0.0  # EMA of observation capture -> chunk arrival
        self._latencies: deque[float] = deque(maxlen=21)  # recent capture -> arrival, for the tick phase
        self.last_tick: TickResult | None = None
        self.last_problem = ""
        self._last_t_obs = 0.0  # capture stamp of the newest observation already inferred on
        self._generation = 0  # bumped by reset_episode
        # Per-step hook (Policy.step_action): runs here, in the control thread, once per executed policy
        # action, on the newest observation history. A policy in a child process (isolation=process)
        # hands its hook back to this process at start (deploy/worker.py), so the hook never waits for
        # chunk inference; a policy without a hook skips all of this and behaves as before.
        self._step_hook = bool(policy.has_step_hook)
        self.step_hook_ms = float("nan")
        self.policy_info: dict[str, float] = {}  # scalar entries of the latest chunk's info

    # -- inputs -------------------------------------------------------------------------------
    def on_observation(self, key: str, value: np.ndarray, stamp: float) -> None:
        """Store one observation sample; raise ObservationRejected (counted) if it is unusable."""
        try:
            self.history.add(key, value, stamp)
        except ObservationRejected as exc:
            self.last_problem = str(exc)
            raise
        self._wake.set()

    def set_intervention(self, active: bool) -> None:
        """Operator takes over (True) or hands back (False)."""
        with self._lock:
            if active == self.intervention:
                return
            self.intervention = active
            # Chunks computed before or during a takeover describe a different state of the scene.
            self.scheduler.clear()
            self._operator = None
            if not active:
                self.safety.last = None  # ramp up from rest through the acceleration limit
        self._wake.set()

    def set_operator_action(self, action: np.ndarray, stamp: float) -> None:
        """The operator's latest command (forwarded through the safety layer in ``forward`` mode)."""
        with self._lock:
            self._operator = (np.asarray(action, dtype=np.float64).reshape(-1), stamp)

    def estop(self, reason: str = "e-stop topic") -> None:
        """Latch the e-stop: hold until ``reset_estop``."""
        with self._lock:
            self.safety.estop(reason)
            self.scheduler.clear()

    def reset_estop(self) -> None:
        """Release the e-stop; the policy resumes from fresh observations."""
        with self._lock:
            self.safety.reset_estop()
            self.scheduler.clear()
            self.safety.last = None
        self._wake.set()

    def reset_episode(self) -> None:
        """Episode boundary: commit the rollout, forget chunks, history and the policy's per-episode state."""
        if self.rollout is not None:
            self.rollout.end_episode()
        with self._lock:
            self.scheduler.clear()
            self.history.clear()
            self._last_t_obs = 0.0
            self._generation += 1  # a chunk still being computed belongs to the old episode
            self.safety.last = None  # the new episode starts from rest, not from the last episode's command
        self.policy.reset()
        if self.trace is not None:
            self.trace.new_episode()

    # -- control tick -------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> TickResult:
        """The command for this control period (never waits for inference)."""
        now = self.clock() if now is None else now
        self.diag.tick(time.perf_counter())
        stamps = self.history.newest_stamps()
        ee = self.history.latest("ee_pose") if "ee_pose" in stamps else None
        joints = self.history.latest("joint_pos") if "joint_pos" in stamps else None
        with self._lock:
            if self.intervention and not self.safety.estopped:
                if self.takeover == "yield":
                    result = TickResult(None, "human", "yielded", ["operator in control"])
                    self.last_tick = result
                    self._record(now, result)
                    return result
                op = self._operator
                proposal = op[0] if op is not None and now - op[1] <= self.safety.config.stale_timeout_s else None
                source = "human"
                if proposal is None:  # hold, and say why in the operator's terms
                    decision = self.safety.filter(None, now, stamps, joint_pos=joints)
                    if decision.reasons[0].startswith("no_action"):
                        decision.reasons = ["no_action: no fresh operator command on the takeover topic"]
                    result = TickResult(decision.action, "hold", decision.status, decision.reasons)
                    self.last_tick, self.last_problem = result, decision.reasons[0]
                    self._record(now, result)
                    return result
            else:
                proposal = self.scheduler.action_at(now)
                source = "policy"
                if proposal is not None and self._step_hook:
                    proposal = self._apply_step_hook(proposal, now)
            decision = self.safety.filter(proposal, now, stamps, ee_pos=None if ee is None else ee[:3],
                                          joint_pos=joints)
        if decision.status == "hold":
            source = "estop" if self.safety.estopped else "hold"
            self.last_problem = decision.reasons[0]
        result = TickResult(decision.action, source, decision.status, decision.reasons)
        self.last_tick = result
        if self.trace is not None:
            self.trace.tick(now, result.action, source)
        self._record(now, result)
        self._wake.set()
        return result

    def _record(self, now: float, result: TickResult) -> None:
        """Hand the executed step to the rollout recorder (the operator's command during a takeover)."""
        if self.rollout is None:
            return
        action = result.action
        if action is None and result.source == "human":  # yield: the operator drives the robot directly
            op = self._operator
            action = op[0] if op is not None and now - op[1] <= self.safety.config.stale_timeout_s else None
        keys = list(self.history.shapes)
        obs = {k: self.history.latest(k) for k in keys}
        self.rollout.on_tick(now, obs, self.history.newest_stamps(), action, result.source,
                             self.intervention)

    def _apply_step_hook(self, planned: np.ndarray, now: float) -> np.ndarray | None:
        """The policy's correction of the planned action from the current observations (None = hold)."""
        newest = self.scheduler.newest()
        step = newest.index_at(now) if newest is not None else None
        try:
            obs, _ = self.history.sample(self.spec.n_obs_steps, self.policy_dt)
            t = time.perf_counter()
            action = np.asarray(self.policy.step_action(obs, planned, 0 if step is None else step), dtype=np.float64)
            self.step_hook_ms = (time.perf_counter() - t) * 1e3
        except Exception as exc:  # a failing correction holds the robot (never an uncorrected guess)
            self.diag.inference_error(f"step hook: {type(exc).__name__}: {exc}")
            self.last_problem = f"step hook failed: {exc}"
            return None
        if action.shape != planned.shape:
            self.last_problem = f"step hook returned shape {action.shape}, expected {planned.shape}"
            return None
        return action

    # -- inference worker ---------------------------------------------------------------------------
    def _should_infer(self, now: float) -> bool:
        if self.intervention or self.safety.estopped or not self.history.ready():
            return False
        newest = self.scheduler.newest()
        if newest is None:
            return True
        n_exec = self.spec.n_action_steps
        if self.history_cfg.replan == "observation":
            # Re-plan from the observation captured when the executed part of the chunk is used up, as
            # the direct evaluation and training do; if that observation is late, re-plan early enough
            # (by the measured latency) that the plan does not run out.
            if self.history.reference_stamp() >= newest.t0 + (n_exec - 0.5) * self.policy_dt:
                return True
            return now + self.latency_est_s >= newest.t0 + (len(newest.actions) - 1) * self.policy_dt
        # early: start by the measured latency so the next chunk lands before this one's end
        return now + self.latency_est_s >= newest.t0 + (n_exec - 1) * self.policy_dt

    def _infer_once(self) -> bool:
        """Run one inference if one is due; return whether it ran."""
        now = self.clock()
        with self._lock:
            due = self._should_infer(now)
        if not due:
            return False
        try:
            obs, t_obs, used = self.history.sample_with_stamps(self.spec.n_obs_steps, self.policy_dt)
        except ObservationRejected:
            return False
        if now - t_obs > self.safety.config.stale_timeout_s:
            return False  # the watchdog holds the robot; inferring on old data would be wasted
        if t_obs <= self._last_t_obs:
            return False  # nothing new since the last inference: the same input gives the same chunk
        self._last_t_obs = t_obs
        generation = self._generation
        t_start = time.perf_counter()
        try:
            chunk = self.policy.predict_chunk_with_info(obs)  # info: e.g. candidate scores, for diagnostics
            actions = np.asarray(chunk.actions, dtype=np.float64)
            self.policy_info = {k: float(v) for k, v in chunk.info.items() if isinstance(v, int | float)}
        except Exception as exc:  # server down, policy bug: report, hold (starved), retry after a pause
            self.diag.inference_error(f"{type(exc).__name__}: {exc}")
            self.last_problem = f"inference failed: {exc}"
            self._stop.wait(self.inference_backoff_s)
            return False
        self.diag.inference((time.perf_counter() - t_start) * 1e3)
        arrived = self.clock()
        with self._lock:
            if self.intervention or self.safety.estopped or generation != self._generation:
                return True
            if actions.shape != (self.spec.horizon, self.spec.action_dim):
                self.diag.inference_error(f"chunk of shape {actions.shape}, expected "
                                          f"{(self.spec.horizon, self.spec.action_dim)}")
                return True
            rejected = self.safety.reject_chunk(actions)
            if rejected is not None:
                # a broken output: drop the whole plan and hold until the next valid chunk
                self.scheduler.clear()
                self.last_problem = rejected
                return True
            self.scheduler.add_chunk(actions, t_obs, arrived)
            if self.trace is not None:
                self.trace.inference(obs, used, t_obs, arrived, actions)
            lat = arrived - t_obs
            self._latencies.append(lat)
            self.latency_est_s = lat if self.latency_est_s == 0.0 else 0.8 * self.latency_est_s + 0.2 * lat
        return True

    def next_tick_time(self, now: float, last_tick: float | None, offset_s: float = 0.0) -> float | None:
        """Wall time of the next control tick phase-locked to the robot's sample clock (None: no samples yet).

        Ticks fall ``offset`` after the robot's sample instants, with ``offset`` the measured
        capture-to-chunk latency + 10 ms (or ``offset_s``), so a chunk computed from an observation is
        in the scheduler when the tick after that observation reads it; never two ticks within half a period.
        """
        ref = self.history.reference_stamp()
        if not np.isfinite(ref):
            return None
        period = 1.0 / self.control_hz
        # the median, not the mean: on a loaded machine a few inferences take 10x longer, and a tick
        # placed after those would delay every other chunk's first action
        typical = float(np.median(self._latencies)) if self._latencies else self.latency_est_s
        offset = offset_s or min(max(typical + 0.01, 0.015), 0.8 * period)
        base = ref + offset
        earliest = max(now, (last_tick + 0.5 * period) if last_tick is not None else now)
        k = max(0, int(np.ceil((earliest - base) / period - 1e-9)))
        t = base + k * period
        return t if t - now <= 2 * period else None  # stamps far off this clock (jump): free-run

    def _run_worker(self) -> None:
        while not self._stop.is_set():
            if not self._infer_once():
                self._wake.wait(self.policy_dt / 2)
                self._wake.clear()

    def start(self) -> None:
        """Start the inference worker thread."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._run_worker, name="policy-inference", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        """Stop the worker (waits for an inference in flight)."""
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=10)
            self._worker = None

    # -- diagnostics ----------------------------------------------------------------------------
    def diagnostics(self) -> dict[str, Any]:
        """Everything the diagnostics topic publishes."""
        s = self.scheduler.stats
        o2a = np.asarray(s.obs_to_action_s) * 1e3
        d: dict[str, Any] = {
            "control_hz_target": self.control_hz,
            **self.diag.loop_figures(),
            **self.diag.inference_figures(),
            "obs_to_action_p50_ms": float(np.percentile(o2a, 50)) if len(o2a) else float("nan"),
            "chunks": s.chunks,
            "late_dropped_actions": s.late_dropped,
            "stale_chunks": s.stale_chunks,
            "out_of_order_chunks": s.out_of_order_chunks,
            "starved_ticks": s.starved_ticks,
            "executed_actions": s.executed,
            "holds": dict(self.safety.counts),
            "estop": self.safety.estop_reason,
            "intervention": self.intervention,
            "rejected_observations": dict(self.history.stats.rejected),
            "last_problem": self.last_problem,
            "latency_est_ms": self.latency_est_s * 1e3,
            "step_hook_ms": self.step_hook_ms,
            "policy_info": dict(self.policy_info),
        }
        if self.last_tick is not None:
            d["source"] = self.last_tick.source
        return d
