"""`rlstack demo` at toy size: the whole loop (ROS 2 collection, training, ROS 2 deployment, sim
evaluation) runs from one command and leaves every artefact where it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_demo_dry_run_lists_every_stage() -> None:
    out = subprocess.run([sys.executable, "-m", "robot_learning.cli", "demo", "--dry-run", "demos=7"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    for command in ("rlstack collect", "rlstack data info", "rlstack train", "rlstack deploy", "rlstack eval"):
        assert command in out
    assert "episodes=7" in out


def test_demo_bad_override_is_named() -> None:
    proc = subprocess.run([sys.executable, "-m", "robot_learning.cli", "demo", "--dry-run", "demos=many"],
                          cwd=REPO, capture_output=True, text=True)
    # a user error: exit code 2, one message that names the key and the bad value, no traceback
    assert proc.returncode == 2, proc.stderr
    assert "full_key: demos" in proc.stderr and "'many'" in proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout.strip()


def test_demo_runs_the_whole_loop_at_toy_size(tmp_path: Path, ros_env) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "robot_learning.cli", "demo", "demos=2", "train_steps=4", "batch_size=8",
           "deploy_episodes=1", "eval_episodes=2", f"out={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=ros_env.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo finished" in proc.stdout

    from robot_learning.data.store import EpisodeStore

    store = EpisodeStore.open(str(out / "lift.zarr"), mode="r")
    assert len(store) == 2 and all(ep.success for ep in store.episodes())
    assert (out / "run_bc" / "policy.pt").is_file()
    report = json.loads((out / "eval" / "report.json").read_text())
    assert [ep["seed"] for ep in report["episodes"]] == [100000, 100001]
    deploy = json.loads((out / "deploy_logs" / "deploy_report.json").read_text())
    assert deploy["episodes"] == 1
