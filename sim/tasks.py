"""Tabletop tasks: scene objects, per-episode placement, sparse success and privileged state.

A task knows nothing about the robot arm; it owns its bodies in one physics client. Every task exposes
the same hooks so the robot, experts, gym wrapper and evaluation stay task-agnostic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pybullet as p

from sim import assets

CUBE = 0.05  # cube edge (m): fits the 8 cm Panda gripper with margin


@dataclass
class SceneObject:
    """A body the task owns, with the nominal values domain randomization scales."""

    body: int
    rgba: tuple[float, float, float, float]
    mass: float
    friction: float
    dynamic: bool = True


def wrap_angle(a: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


def yaw_of(quat: tuple[float, ...] | np.ndarray) -> float:
    """Rotation about world z of a quaternion xyzw."""
    x, y, z, w = quat
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


class Task:
    """Base task: subclasses build bodies, place them, and judge success."""

    name = "base"
    max_steps = 100
    description = ""

    def __init__(self) -> None:
        self.client = -1
        self.objects: dict[str, SceneObject] = {}

    # -- hooks -------------------------------------------------------------------------------------
    def build(self, client: int) -> None:
        """Create this task's bodies in ``client`` (once per robot)."""
        self.client = client

    def reset(self, rng: np.random.Generator) -> None:
        """Place objects for a new episode."""
        raise NotImplementedError

    def success(self) -> bool:
        """Sparse task success in the current state."""
        raise NotImplementedError

    def privileged(self) -> dict[str, np.ndarray]:
        """Named low-dim state of the scene (object poses, goals) for experts and critics."""
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        """Extra per-step measures reported by evaluation (e.g. push_t coverage)."""
        return {}

    # -- helpers -----------------------------------------------------------------------------------
    def pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and quaternion xyzw of object ``name``."""
        pos, orn = p.getBasePositionAndOrientation(self.objects[name].body, physicsClientId=self.client)
        return np.array(pos), np.array(orn)

    def place(self, name: str, xyz: tuple[float, float, float], yaw: float) -> None:
        """Teleport object ``name`` to a pose at rest."""
        body = self.objects[name].body
        orn = p.getQuaternionFromEuler([0, 0, yaw])
        p.resetBasePositionAndOrientation(body, xyz, orn, physicsClientId=self.client)
        p.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    def _add(self, name: str, body: int, rgba: tuple[float, ...], mass: float, friction: float, dynamic: bool = True) -> None:
        p.changeDynamics(body, -1, lateralFriction=friction, physicsClientId=self.client)
        self.objects[name] = SceneObject(body, tuple(rgba), mass, friction, dynamic)  # type: ignore[arg-type]

    def _pose_vec(self, name: str) -> np.ndarray:
        pos, orn = self.pose(name)
        return np.concatenate([pos, orn]).astype(np.float32)


def sample_xy(rng: np.random.Generator, low: tuple[float, float], high: tuple[float, float]) -> np.ndarray:
    """A uniform point in an axis-aligned rectangle."""
    return rng.uniform(low, high)


class LiftTask(Task):
    """Pick up a cube and lift it 10 cm above the table."""

    name = "lift"
    max_steps = 80
    description = "pick the red cube and lift it"
    lift_height = 0.10

    def build(self, client: int) -> None:
        """Create the cube."""
        super().build(client)
        body = assets.create_box(client, (CUBE, CUBE, CUBE), 0.2, (0.85, 0.15, 0.15, 1.0))
        self._add("cube", body, (0.85, 0.15, 0.15, 1.0), 0.2, 1.0)

    def reset(self, rng: np.random.Generator) -> None:
        """Cube anywhere in a 20 x 30 cm area with any yaw."""
        xy = sample_xy(rng, (0.45, -0.15), (0.65, 0.15))
        self.place("cube", (xy[0], xy[1], CUBE / 2), float(rng.uniform(-math.pi, math.pi)))

    def success(self) -> bool:
        """Cube centre at least ``lift_height`` above its resting height."""
        return bool(self.pose("cube")[0][2] > CUBE / 2 + self.lift_height)

    def privileged(self) -> dict[str, np.ndarray]:
        """Cube pose."""
        return {"cube_pose": self._pose_vec("cube")}


class PushTask(Task):
    """Push a cube into a circular goal region without grasping it."""

    name = "push"
    max_steps = 120
    description = "push the blue cube onto the green target"
    goal_radius = 0.04

    def build(self, client: int) -> None:
        """Create the cube and the goal marker."""
        super().build(client)
        body = assets.create_box(client, (CUBE, CUBE, CUBE), 0.3, (0.15, 0.3, 0.85, 1.0))
        self._add("cube", body, (0.15, 0.3, 0.85, 1.0), 0.3, 0.6)
        marker = assets.create_marker(client, (0.08, 0.08), (0.2, 0.8, 0.2, 1.0))
        self._add("goal", marker, (0.2, 0.8, 0.2, 1.0), 0.0, 0.0, dynamic=False)
        self.goal = np.zeros(2)

    def reset(self, rng: np.random.Generator) -> None:
        """Cube and goal 10-25 cm apart inside the workspace."""
        while True:  # rejection sampling; the draw count depends only on the rng, so it stays deterministic
            cube = sample_xy(rng, (0.40, -0.18), (0.62, 0.18))
            goal = sample_xy(rng, (0.40, -0.18), (0.62, 0.18))
            if 0.10 <= np.linalg.norm(goal - cube) <= 0.25:
                break
        self.goal = goal
        self.place("cube", (cube[0], cube[1], CUBE / 2), float(rng.uniform(-math.pi, math.pi)))
        self.place("goal", (goal[0], goal[1], 0.0006), 0.0)

    def distance(self) -> float:
        """Planar distance from the cube centre to the goal centre."""
        return float(np.linalg.norm(self.pose("cube")[0][:2] - self.goal))

    def success(self) -> bool:
        """Cube centre within ``goal_radius`` of the goal."""
        return self.distance() < self.goal_radius

    def privileged(self) -> dict[str, np.ndarray]:
        """Cube pose and goal position."""
        return {"cube_pose": self._pose_vec("cube"), "goal_xy": self.goal.astype(np.float32)}

    def metrics(self) -> dict[str, float]:
        """Distance to goal."""
        return {"goal_distance": self.distance()}


class PushTTask(Task):
    """Push a T-shaped block onto a fixed target pose (Push-T); success when coverage >= threshold."""

    name = "push_t"
    max_steps = 300
    description = "push the T block onto the green T"
    goal_xy = np.array([0.55, 0.0])
    goal_yaw = math.pi / 4
    coverage_threshold = 0.85

    def build(self, client: int) -> None:
        """Create the T block and its target marker."""
        super().build(client)
        body = assets.create_t_block(client, 0.3, (0.55, 0.55, 0.6, 1.0))
        self._add("tblock", body, (0.55, 0.55, 0.6, 1.0), 0.3, 0.5)
        marker = assets.create_t_block(client, 0.0, (0.2, 0.8, 0.2, 1.0), visual_only=True)
        self._add("goal", marker, (0.2, 0.8, 0.2, 1.0), 0.0, 0.0, dynamic=False)
        self._mask = assets.t_block_mask_points()

    def reset(self, rng: np.random.Generator) -> None:
        """Block at a random pose at least 8 cm or 0.5 rad away from the target."""
        while True:
            xy = sample_xy(rng, (0.42, -0.16), (0.66, 0.16))
            yaw = float(rng.uniform(-math.pi, math.pi))
            far = np.linalg.norm(xy - self.goal_xy) > 0.08 or abs(wrap_angle(yaw - self.goal_yaw)) > 0.5
            if far and np.linalg.norm(xy - self.goal_xy) > 0.02:
                break
        self.place("tblock", (xy[0], xy[1], assets.T_HEIGHT / 2), yaw)
        self.place("goal", (self.goal_xy[0], self.goal_xy[1], -assets.T_HEIGHT / 2 + 0.0008), self.goal_yaw)

    def block_pose2d(self) -> np.ndarray:
        """(x, y, yaw) of the block."""
        pos, orn = self.pose("tblock")
        return np.array([pos[0], pos[1], yaw_of(orn)])

    def coverage(self) -> float:
        """Fraction of the target T's area covered by the block (rasterized on a 4 mm grid)."""
        x, y, yaw = self.block_pose2d()
        c, s = math.cos(self.goal_yaw), math.sin(self.goal_yaw)
        world = self._mask @ np.array([[c, s], [-s, c]]) + self.goal_xy  # goal-frame points -> world
        c, s = math.cos(yaw), math.sin(yaw)
        local = (world - np.array([x, y])) @ np.array([[c, -s], [s, c]])  # world -> block frame
        return float(assets.inside_t_block(local).mean())

    def success(self) -> bool:
        """Coverage of the target at or above ``coverage_threshold``."""
        return self.coverage() >= self.coverage_threshold

    def privileged(self) -> dict[str, np.ndarray]:
        """Block pose and target pose (x, y, yaw)."""
        goal = np.array([*self.goal_xy, self.goal_yaw], dtype=np.float32)
        return {"tblock_pose": self._pose_vec("tblock"), "goal_pose2d": goal}

    def metrics(self) -> dict[str, float]:
        """Coverage of the target."""
        return {"coverage": self.coverage()}


class StackTask(Task):
    """Two stages: pick the red cube, then place it on the green cube and let go."""

    name = "stack"
    max_steps = 150
    description = "stack the red cube on the green cube"

    def build(self, client: int) -> None:
        """Create both cubes."""
        super().build(client)
        top = assets.create_box(client, (CUBE, CUBE, CUBE), 0.2, (0.85, 0.15, 0.15, 1.0))
        self._add("cube", top, (0.85, 0.15, 0.15, 1.0), 0.2, 1.0)
        base = assets.create_box(client, (0.06, 0.06, CUBE), 0.5, (0.15, 0.7, 0.2, 1.0))
        self._add("base", base, (0.15, 0.7, 0.2, 1.0), 0.5, 1.0)

    def reset(self, rng: np.random.Generator) -> None:
        """Cubes 12-25 cm apart."""
        while True:
            a = sample_xy(rng, (0.42, -0.18), (0.64, 0.18))
            b = sample_xy(rng, (0.42, -0.18), (0.64, 0.18))
            if 0.12 <= np.linalg.norm(a - b) <= 0.25:
                break
        self.place("cube", (a[0], a[1], CUBE / 2), float(rng.uniform(-math.pi, math.pi)))
        self.place("base", (b[0], b[1], CUBE / 2), float(rng.uniform(-math.pi, math.pi)))

    def stacked(self) -> bool:
        """Red cube resting on the green one (centred within 2.5 cm, one cube height up)."""
        top, _ = self.pose("cube")
        base, _ = self.pose("base")
        return bool(np.linalg.norm(top[:2] - base[:2]) < 0.025 and abs(top[2] - base[2] - CUBE) < 0.01)

    def success(self) -> bool:
        """Stacked and released: no finger touches the red cube."""
        if not self.stacked():
            return False
        contacts = p.getContactPoints(bodyA=self.objects["cube"].body, physicsClientId=self.client)
        touching_other = [c for c in contacts if c[2] not in (self.objects["base"].body,)]
        return not touching_other

    def privileged(self) -> dict[str, np.ndarray]:
        """Both cube poses."""
        return {"cube_pose": self._pose_vec("cube"), "base_pose": self._pose_vec("base")}

    def metrics(self) -> dict[str, float]:
        """Whether the first stage (cube lifted) happened is visible through cube height."""
        return {"cube_height": float(self.pose("cube")[0][2])}


TASKS: dict[str, type[Task]] = {t.name: t for t in (LiftTask, PushTask, PushTTask, StackTask)}


def make_task(name: str) -> Task:
    """A fresh task by name; unknown names raise ValueError listing the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}' (choose from {', '.join(TASKS)})")
    return TASKS[name]()
