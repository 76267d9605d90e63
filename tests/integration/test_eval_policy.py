"""Evaluation of a tiny trained checkpoint in the real PyBullet sim: the Python API, the
``rlstack eval`` command (report + video), determinism, and spec-mismatch errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot_learning.config import compose
from robot_learning.eval.policy_agent import CheckpointAgentFactory, PolicyAgent, evaluate_checkpoint
from robot_learning.policies import load_policy
from robot_learning.train.loop import train

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE = 32
TASK = {"name": "lift", "cameras": ["front", "wrist"], "image_size": IMAGE, "control_hz": 10.0}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Two scripted lift demos at 32 px, a few training steps of a tiny diffusion policy."""
    from sim.config import load_task_config
    from sim.demos import generate_demos

    root = tmp_path_factory.mktemp("eval")
    store = root / "lift.zarr"
    generate_demos(store, load_task_config("lift", [f"image_size={IMAGE}"]), episodes=2, progress=False)
    cfg = compose("train", [
        "train=toy", "task=lift", f"task.image_size={IMAGE}", f"data.store={store}", f"out_dir={root / 'run'}",
        "train.steps=4", "train.batch_size=4", "train.eval_every=4", "train.eval_episodes=2", "train.eval_procs=1",
        "task.max_steps=6", "policy.params.encoder.width=8", "policy.params.encoder.keypoints=4",
        "policy.params.encoder.feature_dim=8", "policy.params.down_dims=[16,32]", "policy.params.num_inference_steps=3",
    ])
    return train(cfg)


def test_training_ran_a_periodic_sim_evaluation(tiny_checkpoint) -> None:
    rows = (tiny_checkpoint.parent / "metrics.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    evals = [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]
    evals = [r for r in evals if r["eval_success"] != ""]
    assert len(evals) == 1 and evals[0]["step"] == "4"
    assert 0.0 <= float(evals[0]["eval_ci_low"]) <= float(evals[0]["eval_success"]) <= float(evals[0]["eval_ci_high"])


def test_agent_executes_chunks_and_resets(tiny_checkpoint) -> None:
    policy = load_policy(tiny_checkpoint)
    agent = PolicyAgent(policy)
    assert agent.n_action_steps == 8
    rng = np.random.default_rng(0)
    frames = [{k: (rng.integers(0, 255, s, dtype=np.uint8) if len(s) == 3 else rng.normal(size=s).astype(np.float32))
               for k, s in policy.spec.obs_shapes.items()} for _ in range(10)]
    agent.reset(seed=5)
    first = [agent.act(f) for f in frames]
    assert agent.chunks == 2  # steps 0 and 8 re-plan; 1..7 and 9 execute the queued chunk
    assert all(a.shape == (5,) for a in first)
    agent.reset(seed=5)
    np.testing.assert_array_equal(np.stack([agent.act(f) for f in frames]), np.stack(first))
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['gripper'\]"):
        agent.act({k: v for k, v in frames[0].items() if k != "gripper"})


def test_evaluate_checkpoint_is_deterministic(tiny_checkpoint, tmp_path) -> None:
    kwargs = dict(n_episodes=2, seed=40, n_procs=2, max_steps=12)
    a = evaluate_checkpoint(tiny_checkpoint, TASK, video_dir=tmp_path / "videos", n_videos=1, **kwargs)
    assert a.n_episodes == 2 and a.seeds == [40, 41]
    assert all(1 <= e.length <= 12 for e in a.episodes)
    assert len(a.videos) == 1 and Path(a.videos[0]).stat().st_size > 0
    assert "2, Wilson 95% CI" in a.summary()
    b = evaluate_checkpoint(tiny_checkpoint, TASK, n_procs=1, **{k: v for k, v in kwargs.items() if k != "n_procs"})
    assert [e.length for e in a.episodes] == [e.length for e in b.episodes]
    assert [e.metrics for e in a.episodes] == [e.metrics for e in b.episodes]


def test_checkpoint_robot_mismatch_is_named(tiny_checkpoint) -> None:
    with pytest.raises(ValueError, match=r"'camera_front': policy expects \(32, 32, 3\), sim robot .* gives \(48, 48, 3\)"):
        evaluate_checkpoint(tiny_checkpoint, {**TASK, "image_size": 48}, n_episodes=1, seed=0, n_procs=1)
    with pytest.raises(ValueError, match="'camera_wrist' is not observed"):
        evaluate_checkpoint(tiny_checkpoint, {**TASK, "cameras": ["front"]}, n_episodes=1, seed=0, n_procs=1)
    assert CheckpointAgentFactory(tiny_checkpoint)().spec.action_dim == 5  # the factory is what workers call


def test_rlstack_eval_command_writes_report(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "robot_learning.cli", "eval", f"checkpoint={tiny_checkpoint}", "task=lift",
           f"task.image_size={IMAGE}", "episodes=2", "procs=2", "dr=none", "max_steps=6", "videos=1", f"out={out}"]
    result = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Wilson 95% CI" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["n_episodes"] == 2 and report["seeds"] == [100000, 100001] and len(report["ci95"]) == 2
    assert list(out.glob("*.mp4")) and (out / "config.yaml").exists()


def test_a_composite_wrapper_runs_in_sim_eval_with_its_hook(tiny_checkpoint, tmp_path) -> None:
    """A wrapper checkpoint goes through the same eval path as a plain one; its per-step hook moves the arm."""
    from robot_learning.policies.perturbed import PerturbedPolicy
    from sim import make_robot
    from sim.gym_env import run_episode

    base = load_policy(tiny_checkpoint)
    wrapped = tmp_path / "perturbed.pt"
    PerturbedPolicy(base, offset=[0.0, 0.0, 1.0, 0.0, 0.0]).save(wrapped)  # full speed up, every step
    report = evaluate_checkpoint(wrapped, TASK, n_episodes=2, seed=40, n_procs=2, max_steps=12)
    assert report.n_episodes == 2 and "perturbed.pt" in report.agent

    def final_height(path: Path) -> float:
        robot = make_robot("lift", cameras=("front", "wrist"), image_size=IMAGE)
        try:
            agent = PolicyAgent(load_policy(path))
            run_episode(robot, agent.act, seed=40, max_steps=12, reset_agent=lambda s: agent.reset(seed=s))
            return float(robot.observe().data["ee_pose"][2])
        finally:
            robot.close()

    assert final_height(wrapped) > final_height(tiny_checkpoint) + 0.05  # the offset was executed at every step
