"""The always-on safety layer between any action source (policy or operator) and the robot.

Checks run in a fixed order on every control tick; the first *hold* condition wins:

1. e-stop latched (until ``reset_estop``)          -> hold
2. stale observations (watchdog on capture stamps)  -> hold
3. joints outside their limits                       -> hold
4. no action due (inference starved / server down)  -> hold
5. NaN/inf or out-of-range action                    -> reject, hold
then the action is limited (not rejected): clipped to its bounds, per-step velocity and
acceleration limits, and the end-effector workspace (a delta that would leave the box is shortened).

Units: actions are in robot action units. For ``ee_delta`` the action *is* a per-step velocity
command, so ``max_velocity`` bounds ``|a|`` and ``max_acceleration`` bounds ``|a_t - a_{t-1}|``;
for ``ee_abs`` they bound ``|a_t - a_{t-1}|`` and its change. *Hold* means zero motion with the
``hold_keep_dims`` (gripper) kept at their last command for ``ee_delta``, and the last command for
``ee_abs``. Going into hold is immediate (never rate-limited); leaving it ramps up through the
acceleration limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SafetyConfig:
    """Limits of the safety layer; empty lists take the robot's/policy's values or disable a check."""

    action_mode: str = "ee_delta"  # ee_delta | ee_abs
    action_low: list[float] = field(default_factory=list)  # default: robot spec
    action_high: list[float] = field(default_factory=list)
    range_tolerance: float = 0.05  # beyond the bounds by more than this: rejected, not clipped
    max_velocity: list[float] = field(default_factory=list)  # per dim, action units per step
    max_acceleration: list[float] = field(default_factory=list)  # per dim, action units per step^2
    position_dims: list[int] = field(default_factory=lambda: [0, 1, 2])  # dims that move ee x, y, z
    delta_scale_m: float = 0.05  # ee_delta: metres moved per unit action per step (workspace check)
    workspace_low: list[float] = field(default_factory=list)  # ee xyz box, metres; empty = off
    workspace_high: list[float] = field(default_factory=list)
    joint_low: list[float] = field(default_factory=list)  # joint position limits; empty = off
    joint_high: list[float] = field(default_factory=list)
    stale_timeout_s: float = 0.25  # newest capture stamp of any stream older than this -> hold
    hold_keep_dims: list[int] = field(default_factory=lambda: [4])  # kept at last command in hold

    def __post_init__(self) -> None:
        if self.action_mode not in ("ee_delta", "ee_abs"):
            raise ValueError(f"safety.action_mode: '{self.action_mode}' is not ee_delta or ee_abs")
        for lo, hi in (("action_low", "action_high"), ("workspace_low", "workspace_high"),
                       ("joint_low", "joint_high")):
            a, b = getattr(self, lo), getattr(self, hi)
            if len(a) != len(b):
                raise ValueError(f"safety.{lo} has {len(a)} entries but safety.{hi} has {len(b)}")
            if any(x > y for x, y in zip(a, b, strict=True)):
                raise ValueError(f"safety.{lo} must be <= safety.{hi} element-wise")
        if self.workspace_low and len(self.workspace_low) != 3:
            raise ValueError("safety.workspace_low/high must have 3 entries (x, y, z) or be empty")
        if not self.stale_timeout_s > 0:
            raise ValueError(f"safety.stale_timeout_s must be positive, got {self.stale_timeout_s}")


@dataclass
class SafetyDecision:
    """What the safety layer made of one tick."""

    action: np.ndarray | None  # None: publish nothing (ee_abs with no previous command)
    status: str  # ok | limited | hold
    reasons: list[str] = field(default_factory=list)


class SafetyLayer:
    """Stateful filter: remembers the last command (for rate limits and hold) and the e-stop latch."""

    def __init__(self, config: SafetyConfig, action_dim: int) -> None:
        self.config = config
        self.action_dim = action_dim
        c = config
        self.low = np.asarray(c.action_low or [-np.inf] * action_dim, dtype=np.float64)
        self.high = np.asarray(c.action_high or [np.inf] * action_dim, dtype=np.float64)
        for name in ("action_low", "action_high", "max_velocity", "max_acceleration"):
            values = getattr(c, name)
            if values and len(values) != action_dim:
                raise ValueError(f"safety.{name} has {len(values)} entries, the action has {action_dim}")
        checked = (*(c.position_dims if c.workspace_low else ()), *c.hold_keep_dims)
        bad_dims = [d for d in checked if not 0 <= d < action_dim]
        if bad_dims:
            raise ValueError(f"safety: action dims {bad_dims} out of range for action_dim {action_dim}")
        self.max_vel = np.asarray(c.max_velocity, dtype=np.float64) if c.max_velocity else None
        self.max_acc = np.asarray(c.max_acceleration, dtype=np.float64) if c.max_acceleration else None
        self.last: np.ndarray | None = None  # last command sent to the robot
        self.prev_last: np.ndarray | None = None
        self.estop_reason = ""
        self.counts: dict[str, int] = {}

    # -- e-stop ---------------------------------------------------------------------------------
    @property
    def estopped(self) -> bool:
        """Whether the e-stop latch is set."""
        return bool(self.estop_reason)

    def estop(self, reason: str = "e-stop") -> None:
        """Latch the e-stop; it stays until ``reset_estop``."""
        if not self.estop_reason:
            self.estop_reason = reason or "e-stop"

    def reset_estop(self) -> None:
        """Release the e-stop latch."""
        self.estop_reason = ""

    # -- checks ---------------------------------------------------------------------------------
    def stale_streams(self, newest_stamps: dict[str, float], now: float) -> list[str]:
        """Streams whose newest capture is older than the timeout (or that never arrived)."""
        out = []
        for key, stamp in sorted(newest_stamps.items()):
            age = now - stamp
            if not math.isfinite(stamp):
                out.append(f"{key} never received")
            elif age > self.config.stale_timeout_s:
                out.append(f"{key} last captured {age:.3f} s ago")
        return out

    def hold_action(self) -> np.ndarray | None:
        """The command that keeps the robot where it is."""
        if self.config.action_mode == "ee_abs":
            return None if self.last is None else self.last.copy()
        hold = np.zeros(self.action_dim)
        if self.last is not None:
            for d in self.config.hold_keep_dims:
                hold[d] = self.last[d]
        return hold

    def reject_chunk(self, actions: np.ndarray) -> str | None:
        """Why a whole chunk must never be scheduled (NaN/inf anywhere), counted as ``bad_action``; else None.

        Checked at arrival as well as per tick: a blended schedule (crossfade) would otherwise mix a
        non-finite chunk into the valid chunks after it and poison them too.
        """
        bad = ~np.isfinite(np.asarray(actions, dtype=np.float64))
        if not bad.any():
            return None
        reason = f"bad_action: NaN/inf in chunk steps {np.flatnonzero(bad.any(axis=-1)).tolist()}"
        self.counts["bad_action"] = self.counts.get("bad_action", 0) + 1
        return reason

    def _hold(self, reason: str) -> SafetyDecision:
        key = reason.split(":")[0]
        self.counts[key] = self.counts.get(key, 0) + 1
        action = self.hold_action()
        self._remember(action)
        return SafetyDecision(action=action, status="hold", reasons=[reason])

    def _remember(self, action: np.ndarray | None) -> None:
        if action is not None:
            self.prev_last, self.last = self.last, action.copy()

    def filter(
        self,
        action: np.ndarray | None,
        now: float,
        newest_stamps: dict[str, float] | None = None,
        ee_pos: np.ndarray | None = None,
        joint_pos: np.ndarray | None = None,
    ) -> SafetyDecision:
        """Turn a proposed action into the command that is safe to send now."""
        c = self.config
        if self.estopped:
            return self._hold(f"estop: {self.estop_reason}")
        stale = self.stale_streams(newest_stamps or {}, now)
        if stale:
            return self._hold(f"stale_observation: {', '.join(stale)} (limit {c.stale_timeout_s} s)")
        if c.joint_low and joint_pos is not None:
            q = np.asarray(joint_pos, dtype=np.float64)[: len(c.joint_low)]
            out = [i for i, (v, lo, hi) in enumerate(zip(q, c.joint_low, c.joint_high, strict=False))
                   if not lo <= v <= hi]
            if out:
                return self._hold(f"joint_limit: joints {out} outside their limits")
        if action is None:
            return self._hold("no_action: no action due (inference late, failed or not started)")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.action_dim,):
            return self._hold(f"bad_action: shape {a.shape}, expected ({self.action_dim},)")
        if not np.all(np.isfinite(a)):
            return self._hold(f"bad_action: NaN/inf in dims {np.flatnonzero(~np.isfinite(a)).tolist()}")
        tol = c.range_tolerance
        outside = np.flatnonzero((a < self.low - tol) | (a > self.high + tol))
        if outside.size:
            return self._hold(f"bad_action: dims {outside.tolist()} out of range ({a[outside].round(3).tolist()})")
        reasons = []
        limited = np.clip(a, self.low, self.high)
        if not np.array_equal(limited, a):
            reasons.append("clipped to action bounds")
        limited = self._rate_limit(limited, reasons)
        limited = self._workspace(limited, ee_pos, reasons)
        self._remember(limited)
        return SafetyDecision(action=limited, status="limited" if reasons else "ok", reasons=reasons)

    def _rate_limit(self, a: np.ndarray, reasons: list[str]) -> np.ndarray:
        """Per-step velocity and acceleration limits."""
        delta_mode = self.config.action_mode == "ee_delta"
        ref = self.last if self.last is not None else (np.zeros_like(a) if delta_mode else a)
        if self.max_vel is not None:
            # velocity: the command itself (delta) or its change (absolute)
            vel = a if delta_mode else a - ref
            clipped = np.clip(vel, -self.max_vel, self.max_vel)
            if not np.array_equal(clipped, vel):
                reasons.append("velocity limited")
            a = clipped if delta_mode else ref + clipped
        if self.max_acc is not None:
            if delta_mode:
                change = np.clip(a - ref, -self.max_acc, self.max_acc)
                new = ref + change
            else:
                prev_vel = ref - (self.prev_last if self.prev_last is not None else ref)
                vel = np.clip((a - ref) - prev_vel, -self.max_acc, self.max_acc) + prev_vel
                new = ref + vel
            if not np.allclose(new, a):
                reasons.append("acceleration limited")
            a = new
        return a

    def _workspace(self, a: np.ndarray, ee_pos: np.ndarray | None, reasons: list[str]) -> np.ndarray:
        """Keep the end effector inside the workspace box."""
        c = self.config
        if not c.workspace_low:
            return a
        lo, hi = np.asarray(c.workspace_low), np.asarray(c.workspace_high)
        dims = list(c.position_dims)
        if c.action_mode == "ee_abs":
            new = a.copy()
            new[dims] = np.clip(a[dims], lo, hi)
        else:
            if ee_pos is None:
                return a
            pos = np.asarray(ee_pos, dtype=np.float64)[:3]
            target = pos + a[dims] * c.delta_scale_m
            # shorten each component so the target stays in the box; never push further outside
            allowed = (np.clip(target, lo, hi) - pos) / c.delta_scale_m
            outward = np.where(pos < lo, np.maximum(a[dims], 0.0), np.where(pos > hi, np.minimum(a[dims], 0.0), allowed))
            new = a.copy()
            new[dims] = np.where((pos < lo) | (pos > hi), outward, allowed)
        if not np.allclose(new, a):
            reasons.append("workspace limited")
        return new
