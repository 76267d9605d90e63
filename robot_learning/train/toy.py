"""A tiny synthetic episode store for smoke tests and the training tests (seconds to train on).

Each episode moves a point toward a random goal; the image shows the point as a bright square, the
low-dim ``joint_pos`` holds its position and the action is the clipped step toward the goal, so a
policy can learn it from either input. Capture times are the real wall-clock times of writing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def write_toy_store(
    path: str | Path, episodes: int = 6, length: int = 24, image_size: int = 16, seed: int = 0, nan_episode: int | None = None
) -> Path:
    """Write ``episodes`` toy episodes (keys camera_front, joint_pos, gripper, action) to a new store."""
    from robot_learning.data.store import EpisodeMeta, EpisodeStore

    rng = np.random.default_rng(seed)
    # a NaN episode (to test that training names it) needs the store to accept NaN in actions
    allow = ("action",) if nan_episode is not None else ()
    store = EpisodeStore.open(str(path), mode="w", image_codec="lossless", allow_nonfinite=allow)
    try:
        for ep in range(episodes):
            pos = rng.uniform(-1, 1, 2)
            goal = rng.uniform(-1, 1, 2)
            writer = store.begin_episode(EpisodeMeta(task="toy", source="scripted", rates={"camera_front": 10.0}))
            for t in range(length):
                action = np.clip((goal - pos) * 0.5, -0.2, 0.2)
                img = np.zeros((image_size, image_size, 3), np.uint8)
                r, c = ((pos + 1) / 2 * (image_size - 3)).astype(int)
                img[r : r + 3, c : c + 3] = 255
                act = np.concatenate([action, [1.0 if t > length // 2 else -1.0]]).astype(np.float32)
                if nan_episode == ep and t == length // 2:
                    act[0] = np.nan
                now = time.time()
                writer.append(
                    {
                        "camera_front": img,
                        "joint_pos": np.concatenate([pos, goal]).astype(np.float32),
                        "gripper": np.array([0.04 if t > length // 2 else 0.0], np.float32),
                        "action": act,
                    },
                    {"step": now, "camera_front": now, "joint_pos": now, "gripper": now},
                )
                pos = pos + action
            writer.commit(success=ep % 5 != 4)  # every fifth episode is a failure (for filter tests)
    finally:
        store.close()
    return Path(path)
