"""SimRobot: a PyBullet Franka Panda behind the ``robot_learning.robot.Robot`` interface.

240 Hz physics, 10-20 Hz control. Actions are 5-d in [-1, 1]: ``[x, y, z, yaw, gripper]``; in
``ee_delta`` mode the first four are velocities scaled to a per-period step, in ``ee_abs`` mode they
address the workspace box. The gripper entry is always an absolute opening (-1 closed, +1 open).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pybullet as p

from robot_learning.robot import Observation, RobotSpec, StreamSpec
from sim import assets
from sim.randomization import EpisodeDR, get_preset, sample_episode
from sim.tasks import Task, make_task, yaw_of

PHYSICS_HZ = 240.0
ARM_JOINTS = list(range(7))
FINGER_JOINTS = [9, 10]
EE_LINK = 11  # panda_grasptarget: between the fingertips
HAND_LINK = 8
# Joint limits / rest pose for all 9 movable joints: IK silently ignores lists that are shorter.
LOWER = [-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671, 0.0, 0.0]
UPPER = [2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671, 0.04, 0.04]
RANGES = [u - lo for u, lo in zip(UPPER, LOWER, strict=True)]
REST = [0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785, 0.04, 0.04]
ARM_FORCES = [87.0] * 4 + [12.0] * 3
MAX_OPENING = 0.08
HOME_EE = (0.5, 0.0, 0.25)
WORKSPACE_LOW = np.array([0.30, -0.30, 0.005])
WORKSPACE_HIGH = np.array([0.75, 0.30, 0.40])
YAW_LIMIT = math.pi / 2
MAX_SPEED = 0.25  # m/s at action 1.0 in ee_delta mode
MAX_YAW_RATE = 1.0  # rad/s at action 1.0
IK_EVERY = 8  # physics substeps between IK updates inside one control period
ACTION_NAMES = ("x", "y", "z", "yaw", "gripper")
CAMERAS = ("front", "wrist")
TEXTURES = 3
ARM_DAMPING_PER_SCALE = 2.0  # extra arm joint damping per unit of damping scale above 1 (domain randomization)


class SimRobot:
    """A simulated Panda plus one task in its own physics client (DIRECT, headless)."""

    def __init__(
        self,
        task: str = "lift",
        cameras: tuple[str, ...] = CAMERAS,
        image_size: int | tuple[int, int] = 96,
        control_hz: float = 10.0,
        dr: str = "none",
        seed: int = 0,
        action_mode: str = "ee_delta",
        render: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.task: Task = make_task(task)
        self.preset = get_preset(dr)
        for cam in cameras:
            if cam not in CAMERAS:
                raise ValueError(f"unknown camera '{cam}' (choose from {', '.join(CAMERAS)})")
        if not 5.0 <= float(control_hz) <= 60.0 or PHYSICS_HZ % float(control_hz) != 0:
            raise ValueError(f"control_hz={control_hz}: must divide 240 and lie in [5, 60] (e.g. 10, 12, 15, 20)")
        if action_mode not in ("ee_delta", "ee_abs"):
            raise ValueError(f"action_mode='{action_mode}': choose 'ee_delta' or 'ee_abs'")
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(hw) != 2 or min(hw) < 8 or max(hw) > 1024:
            raise ValueError(f"image_size={image_size}: expected an int or (height, width) between 8 and 1024")
        self.cameras = tuple(cameras) if render else ()
        self.image_hw = (int(hw[0]), int(hw[1]))
        self.control_hz = float(control_hz)
        self.substeps = int(round(PHYSICS_HZ / self.control_hz))
        self.action_mode = action_mode
        self.clock = clock
        self._seed_rng = np.random.default_rng(seed)
        self.episode_seed: int | None = None
        self.steps = 0
        self._physics_steps = 0
        self.client = p.connect(p.DIRECT)
        try:
            self._build()
        except Exception:
            p.disconnect(self.client)
            raise
        self.spec = self._make_spec()
        self.reset(seed)

    # ---------------------------------------------------------------- scene
    def _build(self) -> None:
        c = self.client
        p.resetSimulation(physicsClientId=c)
        p.setPhysicsEngineParameter(
            fixedTimeStep=1.0 / PHYSICS_HZ, numSolverIterations=50, deterministicOverlappingPairs=1, physicsClientId=c
        )
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        self.table_rgba = (0.62, 0.55, 0.45, 1.0)
        self.table = assets.create_box(c, (1.6, 1.4, 0.04), 0.0, self.table_rgba, position=(0.3, 0.0, -0.02))
        p.changeDynamics(self.table, -1, lateralFriction=0.8, physicsClientId=c)
        self.panda = p.loadURDF(
            assets.lowpoly_panda_urdf(), [0, 0, 0], useFixedBase=True, physicsClientId=c
        )
        # The URDF's <mimic> on the second finger is ignored by pybullet: couple the fingers with a gear.
        gear = p.createConstraint(
            self.panda, FINGER_JOINTS[0], self.panda, FINGER_JOINTS[1], p.JOINT_GEAR, [1, 0, 0], [0, 0, 0], [0, 0, 0],
            physicsClientId=c,
        )
        p.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=50, physicsClientId=c)
        for j in FINGER_JOINTS:
            p.changeDynamics(self.panda, j, lateralFriction=1.5, spinningFriction=0.1, physicsClientId=c)
        self.nominal_damping = [p.getJointInfo(self.panda, j, physicsClientId=c)[6] for j in ARM_JOINTS]
        self.task.build(c)
        self.textures = self._load_textures() if self.preset.table_texture else []
        self.home_q = self._solve_home()
        for j, q in zip(ARM_JOINTS + FINGER_JOINTS, self.home_q, strict=True):
            p.resetJointState(self.panda, j, q, physicsClientId=c)
        self._park_objects()
        self._saved_state = p.saveState(physicsClientId=c)
        self._proj = p.computeProjectionMatrixFOV(
            fov=55.0, aspect=self.image_hw[1] / self.image_hw[0], nearVal=0.01, farVal=3.0
        )

    def _load_textures(self) -> list[int]:
        """Procedural table textures (noise and checkers), generated once and reused."""
        import cv2

        out = []
        rng = np.random.default_rng(1234)
        folder = Path(assets.lowpoly_panda_urdf()).parent
        for i in range(TEXTURES):
            path = folder / f"table_texture_{i}.png"
            if not path.exists():
                base = rng.uniform(60, 220, 3)
                img = np.clip(base + rng.normal(0, 25, (64, 64, 3)), 0, 255)
                if i % 2:
                    check = ((np.indices((64, 64)).sum(0) // 8) % 2)[..., None]
                    img = np.clip(img * (0.75 + 0.25 * check), 0, 255)
                tmp = path.with_suffix(f".{os.getpid()}.{id(self)}.png")
                cv2.imwrite(str(tmp), img.astype(np.uint8))
                tmp.replace(path)
            out.append(p.loadTexture(str(path), physicsClientId=self.client))
        return out

    def _solve_home(self) -> list[float]:
        """Joint angles that put the gripper at ``HOME_EE`` pointing down (iterated IK from REST)."""
        for j, q in zip(ARM_JOINTS + FINGER_JOINTS, REST, strict=True):
            p.resetJointState(self.panda, j, q, physicsClientId=self.client)
        orn = p.getQuaternionFromEuler([math.pi, 0.0, 0.0])
        q = REST
        for _ in range(50):
            q = self._ik(np.array(HOME_EE), orn)
            for j, v in zip(ARM_JOINTS, q, strict=True):
                p.resetJointState(self.panda, j, v, physicsClientId=self.client)
        return list(q[:7]) + [MAX_OPENING / 2, MAX_OPENING / 2]

    def _ik(self, pos: np.ndarray, orn: tuple[float, ...]) -> np.ndarray:
        """Damped-least-squares IK (never IK_SDLS, which segfaults) clipped to joint limits."""
        q = p.calculateInverseKinematics(
            self.panda, EE_LINK, pos.tolist(), orn, lowerLimits=LOWER, upperLimits=UPPER, jointRanges=RANGES,
            restPoses=REST, maxNumIterations=10, residualThreshold=1e-4, physicsClientId=self.client,
        )
        return np.clip(np.array(q[:7]), LOWER[:7], UPPER[:7])

    # ---------------------------------------------------------------- spec
    def _make_spec(self) -> RobotSpec:
        obs = {}
        for cam in self.cameras:
            key = f"camera_{cam}"
            obs[key] = StreamSpec(key, (*self.image_hw, 3), "uint8", "image", self.control_hz)
        for key, shape in (("joint_pos", (9,)), ("joint_vel", (9,)), ("ee_pose", (7,)), ("gripper", (1,))):
            obs[key] = StreamSpec(key, shape, "float32", "lowdim", self.control_hz)
        return RobotSpec(
            observations=obs, action_dim=5, action_low=(-1.0,) * 5, action_high=(1.0,) * 5,
            control_hz=self.control_hz, action_mode=self.action_mode, action_names=ACTION_NAMES,
        )

    @property
    def sim_time(self) -> float:
        """Simulated seconds since the last reset."""
        return self._physics_steps / PHYSICS_HZ

    # ---------------------------------------------------------------- episode
    def reset(self, seed: int | None = None) -> Observation:
        """Restore the home pose, draw randomization and object placement from ``seed``, observe."""
        self._check_open()
        if seed is None:
            seed = int(self._seed_rng.integers(0, 2**31 - 1))
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"reset(seed={seed!r}): the seed must be a non-negative integer")
        self.episode_seed = int(seed)
        rng = np.random.default_rng(self.episode_seed)
        c = self.client
        # Park objects apart and flush contact manifolds first: restoreState alone leaves the previous
        # episode's contact cache behind, which made a reused robot diverge from a fresh one.
        self._park_objects()
        p.performCollisionDetection(physicsClientId=c)
        p.restoreState(self._saved_state, physicsClientId=c)
        self.dr = sample_episode(self.preset, rng, len(self.task.objects) + 1, CAMERAS, len(self.textures))
        self._apply_dr(self.dr)
        self.task.reset(rng)
        self._noise_rng = np.random.default_rng(rng.integers(0, 2**63 - 1))
        self.target_pos = np.array(HOME_EE, dtype=float)
        self.target_yaw = 0.0
        self.target_opening = MAX_OPENING
        self._hold = np.array([0, 0, 0, 0, 1.0]) if self.action_mode == "ee_delta" else self._abs_action_of_target()
        self._pending: deque[np.ndarray] = deque()
        self.steps = 0
        self._physics_steps = 0
        self._command_joints(self.home_q[:7])
        # Let objects settle on the table before the first observation.
        for _ in range(int(PHYSICS_HZ * 0.05)):
            p.stepSimulation(physicsClientId=c)
        self._physics_steps = 0
        return self.observe()

    def _park_objects(self) -> None:
        for i, o in enumerate(self.task.objects.values()):
            p.resetBasePositionAndOrientation(o.body, [5.0 + i, 5.0, 1.0], [0, 0, 0, 1], physicsClientId=self.client)
            p.resetBaseVelocity(o.body, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    def _abs_action_of_target(self) -> np.ndarray:
        span = WORKSPACE_HIGH - WORKSPACE_LOW
        xyz = (self.target_pos - WORKSPACE_LOW) / span * 2 - 1
        return np.array([*xyz, self.target_yaw / YAW_LIMIT, 1.0])

    def _apply_dr(self, dr: EpisodeDR) -> None:
        c = self.client
        bodies = [(self.table, self.table_rgba)] + [(o.body, o.rgba) for o in self.task.objects.values()]
        for (body, rgba), shift in zip(bodies, dr.colour_shift, strict=True):
            colour = [*np.clip(np.array(rgba[:3]) + shift, 0.0, 1.0), rgba[3]]
            p.changeVisualShape(body, -1, rgbaColor=colour, physicsClientId=c)
        tex = self.textures[dr.texture_index] if dr.texture_index >= 0 else -1
        if self.textures:
            p.changeVisualShape(self.table, -1, textureUniqueId=tex, physicsClientId=c)
        # restoreState does not undo changeDynamics: set every randomized value each episode.
        for o in self.task.objects.values():
            if o.dynamic:
                p.changeDynamics(
                    o.body, -1, mass=o.mass * dr.mass_scale, lateralFriction=o.friction * dr.friction_scale,
                    linearDamping=0.04 * dr.damping_scale, angularDamping=0.04 * dr.damping_scale, physicsClientId=c,
                )
        # The URDF's arm joints have zero damping, so a scale alone would do nothing: scales above 1 add
        # joint damping (N m s/rad) on top of the nominal value, scales below 1 only thin the objects' damping.
        extra = ARM_DAMPING_PER_SCALE * max(0.0, dr.damping_scale - 1.0)
        for j, d in zip(ARM_JOINTS, self.nominal_damping, strict=True):
            p.changeDynamics(self.panda, j, jointDamping=d + extra, physicsClientId=c)

    # ---------------------------------------------------------------- acting
    def act(self, action: np.ndarray) -> None:
        """Validate and clip one action, then advance physics by one control period."""
        self._check_open()
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (5,):
            raise ValueError(f"action: expected shape (5,) [{', '.join(ACTION_NAMES)}], got {a.shape}")
        if not np.all(np.isfinite(a)):
            bad = [ACTION_NAMES[i] for i in np.flatnonzero(~np.isfinite(a))]
            raise ValueError(f"action: non-finite value in {bad}")
        a = np.clip(a, -1.0, 1.0)
        # Action latency (domain randomization): the robot keeps executing older commands.
        self._pending.append(a)
        if len(self._pending) > self.dr.latency_steps:
            applied = self._pending.popleft()
        else:
            applied = self._hold
        self._set_target(applied)
        self._step_period()
        self.steps += 1

    def _set_target(self, a: np.ndarray) -> None:
        dt = 1.0 / self.control_hz
        if self.action_mode == "ee_delta":
            goal = self.target_pos + a[:3] * MAX_SPEED * dt
            goal_yaw = self.target_yaw + a[3] * MAX_YAW_RATE * dt
        else:
            goal = WORKSPACE_LOW + (a[:3] + 1) / 2 * (WORKSPACE_HIGH - WORKSPACE_LOW)
            goal_yaw = a[3] * YAW_LIMIT
            # An absolute command moves at most twice the delta speed per period (a controller would too).
            step = goal - self.target_pos
            n = np.linalg.norm(step)
            limit = 2 * MAX_SPEED * dt
            if n > limit:
                goal = self.target_pos + step / n * limit
            goal_yaw = self.target_yaw + np.clip(goal_yaw - self.target_yaw, -2 * MAX_YAW_RATE * dt, 2 * MAX_YAW_RATE * dt)
        goal = np.clip(goal, WORKSPACE_LOW, WORKSPACE_HIGH)
        # Keep the commanded target near the real gripper so a blocked arm does not wind up.
        ee = self._ee_pos()
        off = goal - ee
        n = np.linalg.norm(off)
        if n > 0.06:
            goal = ee + off / n * 0.06
        self.target_pos = goal
        self.target_yaw = float(np.clip(goal_yaw, -YAW_LIMIT, YAW_LIMIT))
        self.target_opening = float((a[4] + 1) / 2 * MAX_OPENING)

    def _ee_pos(self) -> np.ndarray:
        return np.array(p.getLinkState(self.panda, EE_LINK, computeForwardKinematics=1, physicsClientId=self.client)[4])

    def _command_joints(self, q: np.ndarray | list[float]) -> None:
        c = self.client
        p.setJointMotorControlArray(
            self.panda, ARM_JOINTS, p.POSITION_CONTROL, targetPositions=list(q), forces=ARM_FORCES,
            positionGains=[0.1] * 7, physicsClientId=c,
        )
        half = getattr(self, "target_opening", MAX_OPENING) / 2
        p.setJointMotorControlArray(
            self.panda, FINGER_JOINTS, p.POSITION_CONTROL, targetPositions=[half, half], forces=[40.0, 40.0],
            physicsClientId=c,
        )

    def _step_period(self) -> None:
        orn = p.getQuaternionFromEuler([math.pi, 0.0, self.target_yaw])
        for i in range(self.substeps):
            if i % IK_EVERY == 0:  # re-solve IK inside the period: one-shot IK to a far target is ~3 cm off
                self._command_joints(self._ik(self.target_pos, orn))
            p.stepSimulation(physicsClientId=self.client)
            self._physics_steps += 1

    # ---------------------------------------------------------------- observing
    def _proprio(self) -> dict[str, np.ndarray]:
        c = self.client
        states = p.getJointStates(self.panda, ARM_JOINTS + FINGER_JOINTS, physicsClientId=c)
        q = np.array([s[0] for s in states], dtype=np.float32)
        qd = np.array([s[1] for s in states], dtype=np.float32)
        ls = p.getLinkState(self.panda, EE_LINK, computeForwardKinematics=1, physicsClientId=c)
        ee = np.array([*ls[4], *ls[5]], dtype=np.float32)
        grip = np.array([q[7] + q[8]], dtype=np.float32)
        return {"joint_pos": q, "joint_vel": qd, "ee_pose": ee, "gripper": grip}

    def _camera_view(self, cam: str) -> list[float]:
        shift = self.dr.camera_shift[cam]
        if cam == "front":
            eye = np.array([0.86, 0.0, 0.36]) + shift[:3]
            target = np.array([0.50, 0.0, 0.0]) + shift[3:]
            up = [0, 0, 1]
        else:  # wrist: on the hand, looking along the approach axis past the fingers
            ls = p.getLinkState(self.panda, HAND_LINK, computeForwardKinematics=1, physicsClientId=self.client)
            rot = np.array(p.getMatrixFromQuaternion(ls[5])).reshape(3, 3)
            pos = np.array(ls[4])
            eye = pos + rot @ (np.array([0.07, 0.0, 0.02]) + shift[:3] * 0.25)
            target = pos + rot @ (np.array([0.0, 0.0, 0.20]) + shift[3:])
            up = (rot @ np.array([1.0, 0.0, 0.0])).tolist()
        return p.computeViewMatrix(eye.tolist(), target.tolist(), up)

    def _render(self, cam: str) -> np.ndarray:
        h, w = self.image_hw
        _, _, rgba, _, _ = p.getCameraImage(
            w, h, self._camera_view(cam), self._proj, shadow=0, lightDirection=self.dr.light_direction.tolist(),
            lightColor=self.dr.light_colour.tolist(), renderer=p.ER_TINY_RENDERER,
            flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.client,
        )
        img = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[..., :3]
        if self.dr.image_noise > 0:
            noise = self._noise_rng.normal(0.0, self.dr.image_noise, img.shape)
            img = np.clip(img + noise, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(img)

    def render_frame(self, camera: str = "front", height: int = 240, width: int = 320) -> np.ndarray:
        """An RGB frame for videos at any size, independent of the observation cameras (no noise)."""
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera '{camera}' (choose from {', '.join(CAMERAS)})")
        proj = p.computeProjectionMatrixFOV(fov=55.0, aspect=width / height, nearVal=0.01, farVal=3.0)
        _, _, rgba, _, _ = p.getCameraImage(
            width, height, self._camera_view(camera), proj, shadow=0, lightDirection=self.dr.light_direction.tolist(),
            lightColor=self.dr.light_colour.tolist(), renderer=p.ER_TINY_RENDERER,
            flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.client,
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3].copy()

    def observe(self) -> Observation:
        """Proprioception and every camera, each stamped with its capture time from ``clock``."""
        self._check_open()
        data: dict[str, np.ndarray] = {}
        stamps: dict[str, float] = {}
        proprio = self._proprio()
        t = float(self.clock())
        for key, value in proprio.items():
            if self.dr.proprio_noise > 0:
                value = (value + self._noise_rng.normal(0.0, self.dr.proprio_noise, value.shape)).astype(np.float32)
            data[key], stamps[key] = value, t
        for cam in self.cameras:
            data[f"camera_{cam}"] = self._render(cam)
            stamps[f"camera_{cam}"] = float(self.clock())
        return Observation(data=data, stamps=stamps)

    def success(self) -> bool:
        """The task's sparse success."""
        return self.task.success()

    def metrics(self) -> dict[str, float]:
        """Task measures such as push_t coverage."""
        return self.task.metrics()

    def privileged(self) -> dict[str, np.ndarray]:
        """Noise-free named state: gripper pose/opening plus the task's object poses and goals."""
        prop = self._proprio()
        ee = prop["ee_pose"]
        return {
            "ee_pos": ee[:3].copy(),
            "ee_yaw": np.array([yaw_of(ee[3:])], dtype=np.float32),
            "target_yaw": np.array([self.target_yaw], dtype=np.float32),
            "gripper": prop["gripper"],
            **self.task.privileged(),
        }

    def privileged_state(self) -> np.ndarray:
        """``privileged()`` flattened in a fixed key order (float32)."""
        return np.concatenate([np.ravel(v) for v in self.privileged().values()]).astype(np.float32)

    def _check_open(self) -> None:
        if self.client < 0:
            raise RuntimeError(f"SimRobot({self.task.name}) is closed")

    def close(self) -> None:
        """Disconnect the physics client (idempotent)."""
        if self.client >= 0:
            try:
                p.disconnect(self.client)
            except p.error:
                pass
            self.client = -1

    def __enter__(self) -> SimRobot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
