"""Deterministic synthetic episodes for tests, benchmarks and the crash/concurrency harness.

``python -m robot_learning.data.synthetic STORE --episodes N`` appends episodes and prints one line
``committed <index> <sha256>`` per commit (flushed), which the kill -9 test reads. Pixel content is a
smooth moving pattern plus sensor-like noise, closer to a camera picture than random bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np

from robot_learning.data.store import EpisodeMeta, EpisodeStore, EpisodeWriter, schema_step


def synthetic_frame(rng: np.random.Generator, t: int, height: int, width: int) -> np.ndarray:
    """One uint8 HxWx3 frame: gradients, a moving square and mild noise."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    np.full_like(x, (t * 7) % 256)], axis=-1).astype(np.int16)
    cy, cx = (t * 3) % max(height - 8, 1), (t * 5) % max(width - 8, 1)
    img[cy:cy + height // 6, cx:cx + width // 6] = (200, 40, 40)
    img += rng.integers(-6, 7, size=img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_step(
    rng: np.random.Generator, t: int, cameras: Sequence[str] = ("front",), hw: tuple[int, int] = (48, 64),
    dof: int = 7,
) -> dict[str, np.ndarray | float | bool]:
    """One control step with every standard key and the full step schema (``done`` False: see write_episode)."""
    step: dict[str, np.ndarray | float | bool] = {f"camera_{c}": synthetic_frame(rng, t + i, *hw)
                                                  for i, c in enumerate(cameras)}
    step["joint_pos"] = (np.sin(np.arange(dof) + 0.1 * t) + 0.01 * rng.standard_normal(dof)).astype(np.float32)
    step["joint_vel"] = rng.standard_normal(dof).astype(np.float32)
    step["ee_pose"] = rng.standard_normal(7).astype(np.float32)
    step["gripper"] = np.float32(rng.uniform())
    step["action"] = rng.standard_normal(dof).astype(np.float32)
    intervention = bool(rng.uniform() < 0.1)
    step.update(schema_step(reward=float(rng.uniform()), intervention=intervention,
                            control_source="human" if intervention else "policy"))
    return step


def write_episode(
    store: EpisodeStore, rng: np.random.Generator, length: int, success: bool = True,
    meta: EpisodeMeta | None = None, cameras: Sequence[str] = ("front",), hw: tuple[int, int] = (48, 64),
    t0: float | None = None, step_delay: float = 0.0,
) -> int:
    """Append one synthetic episode with per-stream capture stamps and commit it."""
    w = store.begin_episode(meta or EpisodeMeta(task="lift", rates={"step": 10.0}))
    t0 = time.time() if t0 is None else t0
    for t in range(length):
        step = synthetic_step(rng, t, cameras, hw)
        if t == length - 1:  # the last step ends the episode; a success is a true terminal state
            step.update(done=np.asarray(True), terminal=np.asarray(bool(success)))
        tick = t0 + 0.1 * t
        stamps = {k: tick - 0.004 * (i + 1) for i, k in enumerate(step) if k.startswith("camera_")}
        stamps.update({"step": tick, "joint_pos": tick - 0.001, "joint_vel": tick - 0.001, "ee_pose": tick - 0.002,
                       "gripper": tick - 0.001})
        w.append(step, stamps)
        if step_delay:
            time.sleep(step_delay)
    return w.commit(success=success)


def episode_digest(episode: Mapping[str, np.ndarray]) -> str:
    """sha256 over every array of an episode (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for key in sorted(episode):
        a = np.ascontiguousarray(episode[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Append synthetic episodes to a store, printing each commit's index and digest."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--min-length", type=int, default=5)
    p.add_argument("--max-length", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codec", choices=("jpeg", "lossless"), default="jpeg")
    p.add_argument("--flush-steps", type=int, default=None, help="write buffered steps this often")
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep per step (s), to let others interleave")
    args = p.parse_args(argv)
    if args.flush_steps:
        EpisodeWriter.flush_steps = args.flush_steps
    store = EpisodeStore.open(args.store, mode="a", image_codec=args.codec)
    rng = np.random.default_rng(args.seed)
    print(f"ready {len(store)}", flush=True)
    for _ in range(args.episodes):
        length = int(rng.integers(args.min_length, args.max_length + 1))
        idx = write_episode(store, rng, length, success=bool(rng.uniform() < 0.5), step_delay=args.step_delay)
        digest = episode_digest(store.read_episode(idx))
        print(f"committed {idx} {digest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
