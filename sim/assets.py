"""Scene assets: a low-poly copy of the Panda URDF and task objects built with explicit mass/inertia."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pybullet as p
import pybullet_data

PANDA_DIR = Path(pybullet_data.getDataPath()) / "franka_panda"


def lowpoly_panda_urdf() -> str:
    """Path of a generated Panda URDF whose visuals are the collision meshes (~3.5k triangles).

    The shipped visual meshes (~100k triangles) make CPU rendering 6-7x slower; physics is unchanged
    because only ``<visual>`` elements are rewritten. Written atomically so parallel workers can race.
    """
    src = PANDA_DIR / "panda.urdf"
    text = src.read_text()
    mesh_root = str(PANDA_DIR / "meshes")
    text = text.replace("package://meshes/visual/", mesh_root + "/collision/")
    text = text.replace("package://meshes/collision/", mesh_root + "/collision/")
    out_dir = Path(tempfile.gettempdir()) / f"rlstack_sim_{os.getuid()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "panda_lowpoly.urdf"
    if not out.exists() or out.read_text() != text:
        tmp = out_dir / f".panda_lowpoly.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out)
    return str(out)


def box_inertia(mass: float, size: tuple[float, float, float]) -> np.ndarray:
    """Principal moments of inertia of a solid box with full edge lengths ``size``."""
    x, y, z = size
    return mass / 12.0 * np.array([y * y + z * z, x * x + z * z, x * x + y * y])


def create_box(
    client: int,
    size: tuple[float, float, float],
    mass: float,
    rgba: tuple[float, float, float, float],
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> int:
    """A solid box body with explicit mass and inertia (pybullet's cube URDFs have placeholder inertia)."""
    half = [s / 2 for s in size]
    col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=client)
    vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=rgba, physicsClientId=client)
    body = p.createMultiBody(
        baseMass=mass,
        baseCollisionShapeIndex=col,
        baseVisualShapeIndex=vis,
        basePosition=position,
        physicsClientId=client,
    )
    # createMultiBody derives inertia from the collision shape; set it explicitly all the same.
    p.changeDynamics(body, -1, localInertiaDiagonal=box_inertia(mass, size).tolist(), physicsClientId=client)
    return body


# T-block geometry (metres): a horizontal bar on top of a vertical stem, in the block's own xy frame.
T_BAR = (0.12, 0.03)  # length along x, width along y
T_STEM = (0.03, 0.09)  # width along x, length along y
T_HEIGHT = 0.03


def t_block_parts() -> tuple[list[tuple[float, float]], list[tuple[float, float]], np.ndarray]:
    """Centres and sizes of the two boxes of the T, relative to its centre of mass."""
    bar_c = np.array([0.0, T_STEM[1] / 2 + T_BAR[1] / 2])
    stem_c = np.array([0.0, 0.0])
    a_bar, a_stem = T_BAR[0] * T_BAR[1], T_STEM[0] * T_STEM[1]
    com = (a_bar * bar_c + a_stem * stem_c) / (a_bar + a_stem)
    centres = [tuple(bar_c - com), tuple(stem_c - com)]
    sizes = [T_BAR, T_STEM]
    return centres, sizes, com


def t_block_inertia(mass: float) -> np.ndarray:
    """Principal moments of the T about its centre of mass (parallel-axis theorem over both boxes)."""
    centres, sizes, _ = t_block_parts()
    areas = np.array([s[0] * s[1] for s in sizes])
    masses = mass * areas / areas.sum()
    inertia = np.zeros(3)
    for m, (cx, cy), (sx, sy) in zip(masses, centres, sizes, strict=True):
        own = box_inertia(float(m), (sx, sy, T_HEIGHT))
        inertia += own + m * np.array([cy * cy, cx * cx, cx * cx + cy * cy])
    return inertia


def create_t_block(client: int, mass: float, rgba: tuple[float, float, float, float], visual_only: bool = False) -> int:
    """A T-shaped block from two boxes, with its frame at the centre of mass and hand-set inertia."""
    centres, sizes, _ = t_block_parts()
    half = [[s[0] / 2, s[1] / 2, T_HEIGHT / 2] for s in sizes]
    pos = [[c[0], c[1], 0.0] for c in centres]
    vis = p.createVisualShapeArray(
        shapeTypes=[p.GEOM_BOX, p.GEOM_BOX],
        halfExtents=half,
        visualFramePositions=pos,
        rgbaColors=[rgba, rgba],
        physicsClientId=client,
    )
    if visual_only:
        return p.createMultiBody(baseMass=0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=vis, physicsClientId=client)
    col = p.createCollisionShapeArray(
        shapeTypes=[p.GEOM_BOX, p.GEOM_BOX], halfExtents=half, collisionFramePositions=pos, physicsClientId=client
    )
    body = p.createMultiBody(baseMass=mass, baseCollisionShapeIndex=col, baseVisualShapeIndex=vis, physicsClientId=client)
    p.changeDynamics(body, -1, localInertiaDiagonal=t_block_inertia(mass).tolist(), physicsClientId=client)
    return body


def t_block_mask_points(resolution: float = 0.004) -> np.ndarray:
    """Grid points (N, 2) covering the T in its own frame, for coverage by rasterization."""
    centres, sizes, _ = t_block_parts()
    pts = []
    for (cx, cy), (sx, sy) in zip(centres, sizes, strict=True):
        xs = np.arange(-sx / 2 + resolution / 2, sx / 2, resolution) + cx
        ys = np.arange(-sy / 2 + resolution / 2, sy / 2, resolution) + cy
        gx, gy = np.meshgrid(xs, ys)
        pts.append(np.stack([gx.ravel(), gy.ravel()], axis=1))
    return np.concatenate(pts)


def inside_t_block(points: np.ndarray) -> np.ndarray:
    """Boolean mask: which points (N, 2), given in the T's own frame, lie inside the T."""
    centres, sizes, _ = t_block_parts()
    inside = np.zeros(len(points), dtype=bool)
    for (cx, cy), (sx, sy) in zip(centres, sizes, strict=True):
        inside |= (np.abs(points[:, 0] - cx) <= sx / 2) & (np.abs(points[:, 1] - cy) <= sy / 2)
    return inside


def create_marker(client: int, size: tuple[float, float], rgba: tuple[float, float, float, float]) -> int:
    """A flat visual-only goal marker lying on the table (no collision, no mass)."""
    vis = p.createVisualShape(
        p.GEOM_BOX, halfExtents=[size[0] / 2, size[1] / 2, 0.0005], rgbaColor=rgba, physicsClientId=client
    )
    return p.createMultiBody(baseMass=0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=vis, physicsClientId=client)


def create_tray(client: int, inner: float, wall: float, height: float, rgba: tuple[float, float, float, float]) -> int:
    """A static open tray (floor + four walls) built as one compound collision shape."""
    t = wall
    half = [
        [inner / 2 + t, inner / 2 + t, t / 2],  # floor
        [t / 2, inner / 2 + t, height / 2],
        [t / 2, inner / 2 + t, height / 2],
        [inner / 2, t / 2, height / 2],
        [inner / 2, t / 2, height / 2],
    ]
    off = inner / 2 + t / 2
    pos = [[0, 0, t / 2], [off, 0, height / 2], [-off, 0, height / 2], [0, off, height / 2], [0, -off, height / 2]]
    types = [p.GEOM_BOX] * 5
    col = p.createCollisionShapeArray(shapeTypes=types, halfExtents=half, collisionFramePositions=pos, physicsClientId=client)
    vis = p.createVisualShapeArray(
        shapeTypes=types, halfExtents=half, visualFramePositions=pos, rgbaColors=[rgba] * 5, physicsClientId=client
    )
    return p.createMultiBody(baseMass=0, baseCollisionShapeIndex=col, baseVisualShapeIndex=vis, physicsClientId=client)
