"""``rlstack collect-mixed``: a learned base's rollouts appended to a demo store keep the demos' step schema.

Real parts: PyBullet demos at 16 px, a BC checkpoint trained for a few steps by ``rlstack train``, its
rollouts through ``collect_mixed`` into the same zarr store (filtered BC trains on exactly such a store).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from robot_learning.data.store import EpisodeStore

TASK = ["image_size=16", "max_steps=12"]


def test_base_rollouts_append_to_a_demo_store_with_its_schema(tmp_path: Path) -> None:
    from robot_learning.rl.mixed_data import collect_mixed
    from sim.config import load_task_config
    from sim.demos import generate_demos

    store = tmp_path / "demos.zarr"
    generate_demos(store, load_task_config("lift", TASK), 2, seed=0, progress=False)
    run = tmp_path / "bc"
    subprocess.run([sys.executable, "-m", "robot_learning.cli", "train", "policy=bc", "task=lift",
                    *[f"task.{o}" for o in TASK], f"data.store={store}", "data.success=null", "train.steps=3",
                    "train.batch_size=4", "train.warmup_steps=1", f"out_dir={run}"], check=True, capture_output=True)
    summary = collect_mixed(str(store), "lift", [], 0, seed=500, base=str(run / "policy.pt"), base_episodes=2,
                            task_overrides=TASK, progress=False, base_mode="predict")
    assert sum(n for _, n in summary.parts.values()) == 2

    s = EpisodeStore.open(str(store), mode="r")
    try:
        eps = s.episodes()
        assert len(eps) == 4
        rollouts = eps[2:]
        assert [e.meta.tags["seed"] for e in rollouts] == [500, 501]
        assert all(e.meta.source == "policy" and e.meta.policy_id.endswith("policy.pt") for e in rollouts)
        demo_keys = set(s.read_episode(eps[0].index))
        for e in rollouts:
            data = s.read_episode(e.index)
            assert set(data) == demo_keys
            done, terminal = data["done"].astype(bool), data["terminal"].astype(bool)
            assert done[-1] and not done[:-1].any()  # the last step ends the episode, success or time-out
            assert np.array_equal(terminal, done & bool(e.success))  # a time-out is a truncation
            assert data["reward"][-1] == float(e.success) and not data["intervention"].any()
    finally:
        s.close()
