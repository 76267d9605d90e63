"""Scripted experts on privileged state, with a quality knob, usable as a simulated intervener.

Each expert is a small phase machine that computes a clean action from the robot's privileged state
(``robot.privileged()``). ``quality`` in [0, 1] degrades it the way human demonstrators are imperfect:
Gaussian action noise, hesitation (pauses), and occasional botched grasps/pushes that must be recovered.
Phase timers are keyed on ``robot.steps`` so planning twice in one step (act + intervention check) is safe.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sim.robot import MAX_SPEED, MAX_YAW_RATE
from sim.tasks import CUBE, wrap_angle, yaw_of

OPEN, CLOSED = 1.0, -1.0
LATENCY_GAIN = 0.6


def _grasp_yaw(cube_quat: np.ndarray, current: float) -> float:
    """Gripper yaw that aligns the fingers with the cube's faces, nearest to ``current`` (cube is 90-degree symmetric)."""
    y = yaw_of(cube_quat)
    best = min((y + k * math.pi / 2 for k in range(-4, 5)), key=lambda c: abs(c - current) + (10 if abs(c) > 1.4 else 0))
    return float(best)


class ScriptedExpert:
    """Base class: quality-dependent perturbations around a task-specific clean controller."""

    task = "base"

    def __init__(self, quality: float = 1.0, seed: int = 0) -> None:
        if not 0.0 <= float(quality) <= 1.0:
            raise ValueError(f"expert quality={quality}: must lie in [0, 1]")
        self.quality = float(quality)
        self.seed = int(seed)
        self._episode = 0
        self.reset()

    # -- public ------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (draws its imperfections); pass the episode seed for split-independent results."""
        self.rng = np.random.default_rng([self.seed, self._episode if seed is None else 1_000_000 + int(seed)])
        self._episode += 1
        bad = 1.0 - self.quality
        self.noise_std = 0.6 * bad
        self.hesitate_p = 0.15 * bad
        self.botch = bool(self.rng.random() < 0.8 * bad)  # one failed attempt this episode
        self.pause_until = -1
        self.intervene_until = -1
        self.phase = "start"
        self.phase_step = 0
        self.attempts = 0
        self._last_step = -1
        self._on_reset()

    def act(self, robot: Any) -> np.ndarray:
        """The next 5-d action in [-1, 1] for ``robot`` (a SimRobot), with this expert's imperfections."""
        clean = self.plan(robot)
        step = robot.steps
        if self.hesitate_p > 0 and step >= self.pause_until and self.rng.random() < self.hesitate_p:
            self.pause_until = step + int(self.rng.integers(2, 6))
        if step < self.pause_until:
            clean = clean.copy()
            clean[:4] = 0.0
        noisy = clean.copy()
        if self.noise_std > 0:
            noisy[:4] += self.rng.normal(0.0, self.noise_std, 4)
        return np.clip(noisy, -1.0, 1.0)

    def wants_to_intervene(self, robot: Any, policy_action: np.ndarray) -> bool:
        """Simulated human takeover: the policy heads away from where the expert would go (or drops a grasp).

        Once triggered, the human keeps control for a few steps, as in RLIF/HIL-SERL interventions.
        """
        step = robot.steps
        if step < self.intervene_until:
            return True
        expert = self.plan(robot)
        a = np.clip(np.asarray(policy_action, dtype=float), -1, 1)
        e_move, p_move = expert[:3], a[:3]
        wrong_way = np.linalg.norm(e_move) > 0.5 and float(e_move @ p_move) < -0.1 * np.linalg.norm(e_move)
        wrong_grip = self.gripper_matters() and np.sign(a[4]) != np.sign(expert[4]) and abs(a[4]) > 0.3
        if wrong_way or wrong_grip:
            self.intervene_until = step + 5
            return True
        return False

    # -- for subclasses ----------------------------------------------------------------------------
    def _on_reset(self) -> None:
        pass

    def plan(self, robot: Any) -> np.ndarray:
        """Clean action for the current state (updates the phase machine)."""
        raise NotImplementedError

    def gripper_matters(self) -> bool:
        """Whether a wrong gripper command now would ruin the attempt."""
        return False

    def _set_phase(self, name: str, robot: Any) -> None:
        if name != self.phase:
            self.phase = name
            self.phase_step = robot.steps

    @staticmethod
    def move(robot: Any, target: np.ndarray, yaw: float, grip: float, gain: float = 1.0) -> np.ndarray:
        """Action that drives the gripper towards ``target`` (xyz) and ``yaw`` at full speed when far."""
        st = robot.privileged()
        dt = 1.0 / robot.control_hz
        # Like an operator on a laggy robot, move more gently under action latency (a dead-beat
        # P-controller with one period of delay overshoots and oscillates).
        lag = LATENCY_GAIN if robot.dr.latency_steps > 0 else 1.0
        dxyz = (np.asarray(target) - st["ee_pos"]) / (MAX_SPEED * dt) * gain * lag
        dyaw = wrap_angle(yaw - float(st["target_yaw"][0])) / (MAX_YAW_RATE * dt) * lag
        out = np.array([*dxyz, dyaw, grip], dtype=float)
        return np.clip(out, -1.0, 1.0)


class PickExpert(ScriptedExpert):
    """Grasp the cube called ``obj`` and bring it to ``carry_pos``; subclasses decide what comes next."""

    obj = "cube"
    hover = 0.10  # approach height above the cube centre
    grasp_z = 0.018  # grasp-target height when closing (fingertips just above the table)
    close_steps = 5

    def _on_reset(self) -> None:
        self.grasp_offset = np.zeros(2)
        self.grasp_yaw: float | None = None

    def gripper_matters(self) -> bool:
        """Closing early or opening while carrying loses the cube."""
        return self.phase in ("descend", "close", "lift", "carry", "lower")

    def _cube(self, robot: Any) -> tuple[np.ndarray, np.ndarray]:
        v = robot.privileged()[f"{self.obj}_pose"]
        return v[:3].astype(float), v[3:].astype(float)

    def holding(self, robot: Any) -> bool:
        """Cube between the fingers (near the grasp target and the gripper not fully shut)."""
        st = robot.privileged()
        pos, _ = self._cube(robot)
        return bool(np.linalg.norm(pos - st["ee_pos"]) < 0.035 and st["gripper"][0] > 0.02)

    def grasp_plan(self, robot: Any) -> np.ndarray | None:
        """Phases start/approach/descend/close; returns None once the cube is held and lifted a little."""
        st = robot.privileged()
        ee = st["ee_pos"].astype(float)
        pos, quat = self._cube(robot)
        cur_yaw = float(st["target_yaw"][0])
        if self.phase in ("start", "retry"):
            self.attempts += 1
            # A botched attempt grasps off-centre; the retry after it is clean.
            self.grasp_offset = self.rng.uniform(0.03, 0.045, 2) * self.rng.choice([-1, 1], 2) if (
                self.botch and self.attempts == 1) else np.zeros(2)
            self.grasp_yaw = None
            self._set_phase("approach", robot)
        if self.grasp_yaw is None or self.phase == "approach":
            self.grasp_yaw = _grasp_yaw(quat, cur_yaw)
        aim = pos[:2] + self.grasp_offset
        if self.phase == "approach":
            target = np.array([*aim, pos[2] + self.hover])
            near = np.linalg.norm(ee[:2] - aim) < 0.01 and abs(wrap_angle(self.grasp_yaw - cur_yaw)) < 0.1
            if near:
                self._set_phase("descend", robot)
            else:
                # Stay high until above the cube so the fingers do not sweep it away.
                if np.linalg.norm(ee[:2] - aim) > 0.03:
                    target[2] = max(target[2], ee[2]) if ee[2] < pos[2] + 0.06 else target[2]
                return self.move(robot, target, self.grasp_yaw, OPEN)
        if self.phase == "descend":
            target = np.array([*aim, pos[2] - CUBE / 2 + self.grasp_z])
            if ee[2] - target[2] < 0.008:
                self._set_phase("close", robot)
            else:
                return self.move(robot, target, self.grasp_yaw, OPEN)
        if self.phase == "close":
            target = np.array([*aim, pos[2] - CUBE / 2 + self.grasp_z])
            if robot.steps - self.phase_step >= self.close_steps:
                self._set_phase("lift", robot)
            else:
                return self.move(robot, target, self.grasp_yaw, CLOSED)
        return None


class LiftExpert(PickExpert):
    """Lift: grasp, then raise the cube to 25 cm; retry when the cube was not picked up."""

    task = "lift"

    def plan(self, robot: Any) -> np.ndarray:
        """Clean action."""
        out = self.grasp_plan(robot)
        if out is not None:
            return out
        ee = robot.privileged()["ee_pos"]
        if robot.steps - self.phase_step > 3 and not self.holding(robot):
            self._set_phase("retry", robot)
            return self.move(robot, ee + np.array([0, 0, 0.05]), float(robot.privileged()["target_yaw"][0]), OPEN)
        return self.move(robot, np.array([ee[0], ee[1], 0.25]), float(self.grasp_yaw or 0.0), CLOSED)


class StackExpert(PickExpert):
    """Stack (two stages): grasp the red cube, carry it over the green one, lower, release, back off."""

    task = "stack"

    def plan(self, robot: Any) -> np.ndarray:
        """Clean action."""
        if self.phase in ("release", "retreat"):
            return self._finish(robot)
        out = self.grasp_plan(robot)
        if out is not None:
            return out
        st = robot.privileged()
        ee = st["ee_pos"].astype(float)
        yaw = float(st["target_yaw"][0])
        if robot.steps - self.phase_step > 3 and not self.holding(robot):
            self._set_phase("retry", robot)
            return self.move(robot, ee + np.array([0, 0, 0.05]), yaw, OPEN)
        base = st["base_pose"][:3].astype(float)
        place_yaw = _grasp_yaw(st["base_pose"][3:], yaw)
        cube_pos, _ = self._cube(robot)
        grip_to_cube = cube_pos - ee  # keep the cube's offset in the hand when placing
        carry_z = base[2] + CUBE + 0.07
        if self.phase == "lift":
            if ee[2] > carry_z - 0.02:
                self._set_phase("carry", robot)
            else:
                return self.move(robot, np.array([ee[0], ee[1], carry_z]), yaw, CLOSED)
        goal_ee = base[:2] - grip_to_cube[:2]
        if self.phase == "carry":
            if np.linalg.norm(ee[:2] - goal_ee) < 0.006:
                self._set_phase("lower", robot)
            else:
                return self.move(robot, np.array([*goal_ee, carry_z]), place_yaw, CLOSED)
        # lower until the cube sits just above the base, then let go
        drop_z = base[2] + CUBE + 0.004 - grip_to_cube[2]
        if ee[2] - drop_z < 0.006:
            self._set_phase("release", robot)
            return self._finish(robot)
        return self.move(robot, np.array([*goal_ee, drop_z]), place_yaw, CLOSED, gain=0.6)

    def _finish(self, robot: Any) -> np.ndarray:
        st = robot.privileged()
        ee = st["ee_pos"].astype(float)
        yaw = float(st["target_yaw"][0])
        if self.phase == "release" and robot.steps - self.phase_step >= 4:
            self._set_phase("retreat", robot)
        if self.phase == "release":
            return self.move(robot, ee, yaw, OPEN)
        if robot.steps - self.phase_step > 6 and not robot.task.stacked():
            self._set_phase("retry", robot)  # the cube fell off: pick it again
        return self.move(robot, np.array([ee[0], ee[1], 0.25]), yaw, OPEN, gain=0.5)

    def gripper_matters(self) -> bool:
        """Opening before the cube is over the base drops it."""
        return self.phase in ("descend", "close", "lift", "carry", "lower")


class PushExpert(ScriptedExpert):
    """Push: get behind the cube on the cube-goal line (approach from above), then push it along the line."""

    task = "push"
    push_z = 0.02
    safe_z = 0.09

    def _on_reset(self) -> None:
        self.push_bias = 0.0

    def _geometry(self, robot: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        st = robot.privileged()
        cube = st["cube_pose"][:2].astype(float)
        goal = st["goal_xy"].astype(float)
        d = goal - cube
        dist = float(np.linalg.norm(d))
        return st["ee_pos"].astype(float), cube, d / max(dist, 1e-6), dist

    def plan(self, robot: Any) -> np.ndarray:
        """Clean action."""
        ee, cube, d, dist = self._geometry(robot)
        yaw = math.atan2(d[1], d[0]) + math.pi / 2  # fingers side by side across the push direction
        yaw = wrap_angle(yaw)
        if abs(yaw) > math.pi / 2:
            yaw = wrap_angle(yaw + math.pi)
        if self.phase == "start":
            self.attempts += 1
            # a botched push starts off-line and usually has to re-approach
            self.push_bias = float(self.rng.choice([-1, 1]) * 0.03) if (self.botch and self.attempts == 1) else 0.0
            self._set_phase("approach", robot)
        normal = np.array([-d[1], d[0]])
        behind = cube - d * (CUBE / 2 + 0.035) + normal * self.push_bias
        rel = ee[:2] - cube
        along, lateral = float(rel @ d), float(rel @ normal)
        if self.phase == "push":
            off_line = abs(lateral) > 0.02 or along > -0.02
            if off_line:
                self.push_bias = 0.0
                self._set_phase("approach", robot)
            else:
                # push along the line, steer back onto it, slow down near the goal
                speed = float(np.clip(dist / 0.08, 0.3, 1.0))
                target = ee[:2] + d * 0.025 * speed - normal * lateral * 0.8
                return self.move(robot, np.array([*target, self.push_z]), yaw, CLOSED)
        # approach: rise, go above the pre-push point, descend
        at_xy = np.linalg.norm(ee[:2] - behind) < 0.01
        if at_xy and ee[2] < self.push_z + 0.01:
            self._set_phase("push", robot)
            return self.move(robot, np.array([*behind, self.push_z]), yaw, CLOSED)
        if at_xy:
            return self.move(robot, np.array([*behind, self.push_z]), yaw, CLOSED)
        if ee[2] < self.safe_z - 0.02 and np.linalg.norm(ee[:2] - behind) > 0.02:
            return self.move(robot, np.array([ee[0], ee[1], self.safe_z]), yaw, CLOSED)
        return self.move(robot, np.array([*behind, self.safe_z]), yaw, CLOSED)


def _t_outline() -> tuple[np.ndarray, np.ndarray]:
    """Contact candidates on the T's outline (block frame, about the centre of mass) and inward normals."""
    from sim import assets

    _, _, com = assets.t_block_parts()
    bw, bh = assets.T_BAR
    sw, sh = assets.T_STEM
    # counter-clockwise outline with the stem centred at the origin, then shifted to the centre of mass
    verts = np.array([
        [-sw / 2, -sh / 2], [sw / 2, -sh / 2], [sw / 2, sh / 2], [bw / 2, sh / 2], [bw / 2, sh / 2 + bh],
        [-bw / 2, sh / 2 + bh], [-bw / 2, sh / 2], [-sw / 2, sh / 2],
    ]) - com
    points, normals = [], []
    for a, b in zip(verts, np.roll(verts, -1, axis=0), strict=True):
        edge = b - a
        length = float(np.linalg.norm(edge))
        inward = np.array([-edge[1], edge[0]]) / length  # left of a CCW edge points inside
        for t in np.arange(0.006, length - 0.005, 0.008):
            points.append(a + edge / length * t)
            normals.append(inward)
    return np.array(points), np.array(normals)


class PushTExpert(ScriptedExpert):
    """Push-T: greedy stroke planner. Each stroke picks the outline point and push direction whose
    (quasi-static) translation + rotation best reduces the pose error, approaches it from outside,
    pushes a few centimetres, and re-plans. Strokes shorten as the block nears the target."""

    task = "push_t"
    push_z = 0.016
    safe_z = 0.07
    pad = 0.011  # effective radius of the closed fingertips
    done_coverage = 0.93

    def _on_reset(self) -> None:
        self.points, self.normals = _t_outline()
        self.stroke: tuple[np.ndarray, np.ndarray, float] | None = None
        self.strokes = 0

    def _block(self, robot: Any) -> tuple[np.ndarray, float, np.ndarray, float]:
        st = robot.privileged()
        pose = st["tblock_pose"].astype(float)
        goal = st["goal_pose2d"].astype(float)
        return pose[:2], yaw_of(pose[3:]), goal[:2], float(goal[2])

    def _choose_stroke(self, robot: Any) -> tuple[np.ndarray, np.ndarray, float]:
        from sim import assets

        xy, yaw, gxy, gyaw = self._block(robot)
        e_pos, e_yaw = gxy - xy, wrap_angle(gyaw - yaw)
        c, s = math.cos(yaw), math.sin(yaw)
        rot = np.array([[c, -s], [s, c]])
        pts = self.points @ rot.T + xy
        nrm = self.normals @ rot.T
        lever = pts - xy
        torque = lever[:, 0] * nrm[:, 1] - lever[:, 1] * nrm[:, 0]
        score = nrm @ e_pos + 1.2 * torque * e_yaw
        # the pusher must fit outside the block at its start point
        start = pts - nrm * (self.pad + 0.02)
        clear = np.ones(len(pts), dtype=bool)
        for dx, dy in ((0, 0), (0.011, 0), (-0.011, 0), (0, 0.011), (0, -0.011)):
            local = (start + np.array([dx, dy]) - xy) @ rot
            clear &= ~assets.inside_t_block(local)
        if self.botch and self.strokes == 1:
            score = score + self.rng.normal(0, 0.05, len(score))  # one poorly chosen stroke
        score[~clear] = -np.inf
        best = int(np.argmax(score))
        length = float(np.clip(np.linalg.norm(e_pos) * 0.8 + abs(e_yaw) * 0.03, 0.006, 0.04))
        return pts[best], nrm[best], length

    def _path_clear(self, robot: Any, a: np.ndarray, b: np.ndarray) -> bool:
        from sim import assets

        xy, yaw, _, _ = self._block(robot)
        c, s = math.cos(yaw), math.sin(yaw)
        rot = np.array([[c, -s], [s, c]])
        ts = np.linspace(0, 1, 12)[:, None]
        seg = a + (b - a) * ts
        ok = True
        for dx, dy in ((0, 0), (0.014, 0), (-0.014, 0), (0, 0.014), (0, -0.014)):
            ok &= not assets.inside_t_block((seg + np.array([dx, dy]) - xy) @ rot).any()
        return bool(ok)

    def plan(self, robot: Any) -> np.ndarray:
        """Clean action."""
        ee = robot.privileged()["ee_pos"].astype(float)
        if robot.task.coverage() >= self.done_coverage:
            self._set_phase("done", robot)
            return self.move(robot, np.array([ee[0], ee[1], self.safe_z]), 0.0, CLOSED)
        if self.stroke is None or self.phase in ("start", "done"):
            self.stroke = self._choose_stroke(robot)
            self.strokes += 1
            self._set_phase("approach", robot)
        contact, n, length = self.stroke
        start = contact - n * (self.pad + 0.02)
        if self.phase == "approach":
            low = ee[2] < self.push_z + 0.012
            if np.linalg.norm(ee[:2] - start) < 0.006 and low:
                self._set_phase("push", robot)
            elif np.linalg.norm(ee[:2] - start) < 0.006 or (low and self._path_clear(robot, ee[:2], start)):
                return self.move(robot, np.array([*start, self.push_z]), 0.0, CLOSED)
            elif ee[2] < self.safe_z - 0.015:
                return self.move(robot, np.array([ee[0], ee[1], self.safe_z]), 0.0, CLOSED)
            else:
                return self.move(robot, np.array([*start, self.safe_z]), 0.0, CLOSED)
        # push: drive through the contact point by the stroke length, then re-plan
        end = contact + n * (length - self.pad)
        if float((end - ee[:2]) @ n) < 0.003 or robot.steps - self.phase_step > 15:
            self.stroke = self._choose_stroke(robot)
            self.strokes += 1
            self._set_phase("approach", robot)
            return self.plan(robot)
        return self.move(robot, np.array([*end, self.push_z]), 0.0, CLOSED, gain=0.5)


EXPERTS: dict[str, type[ScriptedExpert]] = {e.task: e for e in (LiftExpert, PushExpert, PushTExpert, StackExpert)}


class ExpertAgent:
    """An expert as an evaluation agent (``reset``/``act(obs)``): picklable, reads the attached robot's state."""

    def __init__(self, task: str, quality: float = 1.0, seed: int = 0) -> None:
        self.expert = EXPERTS[task](quality=quality, seed=seed)
        self.robot: Any = None

    def attach(self, robot: Any) -> None:
        """Give the agent the robot whose privileged state it reads (called by evaluation)."""
        self.robot = robot

    def reset(self, seed: int | None = None) -> None:
        """New episode."""
        self.expert.reset(seed)

    def act(self, obs: Any) -> np.ndarray:
        """Expert action for the attached robot (``obs`` is unused: the expert is privileged)."""
        if self.robot is None:
            raise RuntimeError("ExpertAgent.act: call attach(robot) first")
        return self.expert.act(self.robot)


class ExpertAgentFactory:
    """Picklable zero-argument factory for ``evaluate``."""

    def __init__(self, task: str, quality: float = 1.0, seed: int = 0) -> None:
        if task not in EXPERTS:
            raise ValueError(f"unknown task '{task}' (choose from {', '.join(EXPERTS)})")
        self.task, self.quality, self.seed = task, quality, seed

    def __call__(self) -> ExpertAgent:
        return ExpertAgent(self.task, self.quality, self.seed)

    def __repr__(self) -> str:
        return f"expert({self.task}, quality={self.quality})"
