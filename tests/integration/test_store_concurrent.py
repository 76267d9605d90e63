"""A reader in this process follows a writer process appending to the same store (training while collecting)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import pytest

from robot_learning.data.dataset import WindowDataset
from robot_learning.data.maintenance import validate
from robot_learning.data.store import EpisodeStore
from robot_learning.data.synthetic import episode_digest, write_episode

EPISODES = 6


@pytest.mark.integration
def test_reader_sees_new_episodes_after_refresh(tmp_path):
    import numpy as np

    path = tmp_path / "live.zarr"
    seed_store = EpisodeStore.open(path, mode="w", image_codec="jpeg")
    write_episode(seed_store, np.random.default_rng(0), 8)
    seed_store.close()

    reader = EpisodeStore.open(path, mode="r")
    assert len(reader) == 1
    cmd = [sys.executable, "-m", "robot_learning.data.synthetic", str(path), "--episodes", str(EPISODES),
           "--seed", "1", "--min-length", "10", "--max-length", "20", "--step-delay", "0.01", "--flush-steps", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

    reported: dict[int, str] = {}
    counts_seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        reader.refresh()
        n = len(reader)
        counts_seen.append(n)
        # every visible episode is complete and identical to what the writer committed
        while not lines.empty():
            tag, *rest = lines.get().split()
            if tag == "committed":
                reported[int(rest[0])] = rest[1]
        for i, digest in reported.items():
            if i < n:
                assert episode_digest(reader.read_episode(i)) == digest
        if n >= 1:
            ds = WindowDataset(reader, ["camera_front", "joint_pos"], n_obs_steps=2, horizon=4, n_action_steps=2)
            assert ds[len(ds) - 1]["action"].shape == (4, 7)
        if n == EPISODES + 1 and proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    reader.refresh()
    assert len(reader) == EPISODES + 1
    assert len(set(counts_seen)) >= 3, f"the reader never saw the store grow: {sorted(set(counts_seen))}"
    assert counts_seen == sorted(counts_seen)  # episodes only ever appear, never vanish
    assert validate(reader, deep=True).ok
    for i, digest in reported.items():
        assert episode_digest(reader.read_episode(i)) == digest
