"""kill -9 a writer process at random moments, repeatedly; every committed episode must survive bit-identical."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from robot_learning.data.maintenance import repair, validate
from robot_learning.data.store import EpisodeStore
from robot_learning.data.synthetic import episode_digest, write_episode

KILLS = 12


def _start_writer(path, seed: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "robot_learning.data.synthetic", str(path), "--episodes", "1000",
           "--seed", str(seed), "--min-length", "3", "--max-length", "30", "--flush-steps", "4",
           "--codec", "jpeg"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _committed(out: str) -> dict[int, str]:
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("committed ")]
    return {int(i): digest for _tag, i, digest in lines}


@pytest.mark.integration
def test_sigkill_writer_repeatedly(tmp_path):
    path = tmp_path / "crash.zarr"
    rng = random.Random(1234)
    torn_rounds = 0  # kills that left a half-written episode behind
    known: dict[int, str] = {}  # episode index -> digest, from the writers' own reports and our reads
    for round_ in range(KILLS):
        proc = _start_writer(path, seed=round_)
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith("ready"), proc.stderr.read() if proc.stderr else ready
        time.sleep(rng.uniform(0.05, 0.9))  # lands anywhere: mid-step, mid-flush, mid-commit
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        reported = _committed(out)

        store = EpisodeStore.open(path, mode="r")
        report = validate(store, deep=True)
        assert report.ok, f"round {round_}: {report.errors}"
        torn_rounds += any("uncommitted rows" in w for w in report.warnings)
        assert len(store) >= max(reported, default=-1) + 1
        for i in range(len(store)):
            digest = episode_digest(store.read_episode(i))
            if i in known:
                assert digest == known[i], f"round {round_}: committed episode {i} changed"
            if i in reported:
                assert digest == reported[i], f"round {round_}: episode {i} differs from what the writer wrote"
            known[i] = digest
    assert len(known) >= 3, "the writers made too little progress between kills"
    assert torn_rounds >= 1, "no kill landed mid-episode"


    store = EpisodeStore.open(path, mode="a")
    repair(store)
    report = validate(store, deep=True)
    assert report.ok and not report.warnings, report
    n = len(store)
    write_episode(store, np.random.default_rng(7), 11)
    assert len(store) == n + 1 and store.episode(n).length == 11
    assert all(episode_digest(store.read_episode(i)) == d for i, d in known.items())
