"""Deployment parity: a small trained BC policy through the real policy node against the real-time
sim_robot node reaches the success of direct in-process evaluation on the same seeds.

The checkpoint is trained by a module fixture (50 scripted lift demos at 32 px, a BC of 3000
steps: about 6 minutes of CPU) or taken from ``RLSTACK_PARITY_CHECKPOINT`` (any lift checkpoint; camera size and
names are read from its spec). Before the fixes in benchmarks/README.md (deploy parity) the node
lost most of the direct success (0.80 -> 0.15 on 20 seeds); 20 episodes per side have power
against a gap of that size (Fisher exact p < 0.01), and the direct rate must be high enough for the
comparison to mean something.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

EPISODES = 20
SEED = 1000
MAX_STEPS = 80
IMAGE_SIZE = 32


def _rlstack(args: list[str], cwd: Path, timeout: float) -> None:
    out = subprocess.run([sys.executable, "-m", "robot_learning.cli", *args], cwd=cwd, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"rlstack {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


@pytest.fixture(scope="module")
def parity_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small lift BC checkpoint: given by RLSTACK_PARITY_CHECKPOINT, or trained here from scripted demos."""
    given = os.environ.get("RLSTACK_PARITY_CHECKPOINT")
    if given:
        return Path(given).resolve()
    work = tmp_path_factory.mktemp("parity")
    # the benchmark's recipe (benchmarks/README.md, deploy parity): 0.50 direct on seeds 1000-1019; a 16 px,
    # narrow-encoder BC trained faster but scored 0/20, too weak for the comparison to mean anything
    _rlstack(["sim", "demos", "--task", "lift", "--episodes", "50", "--out", str(work / "demos.zarr"),
              f"image_size={IMAGE_SIZE}"], work, timeout=900)
    _rlstack(["train", "policy=bc", "task=lift", f"task.image_size={IMAGE_SIZE}", f"data.store={work / 'demos.zarr'}",
              f"out_dir={work / 'bc'}", "train.steps=3000", "train.batch_size=64"], work, timeout=1800)
    return work / "bc" / "policy.pt"


def _task_of(checkpoint: Path) -> dict[str, Any]:
    from robot_learning.policies.checkpoint import read_checkpoint

    spec = read_checkpoint(checkpoint)["spec"]
    cams = sorted(k[len("camera_"):] for k in spec["obs_shapes"] if k.startswith("camera_"))
    size = spec["obs_shapes"][f"camera_{cams[0]}"][0]
    return {"name": "lift", "cameras": cams, "image_size": int(size)}


@pytest.mark.timeout(1500)  # its fixture trains the BC checkpoint (~6 min of CPU, more on a shared machine)
def test_node_success_matches_direct_eval_on_the_same_seeds(parity_checkpoint: Path, ros_env: Any,
                                                            tmp_path: Path) -> None:
    from scipy.stats import fisher_exact

    from robot_learning.eval.policy_agent import evaluate_checkpoint
    from robot_learning.stats import wilson_interval
    from ros_nodes.deploy import deploy_in_sim

    task = _task_of(parity_checkpoint)
    direct = evaluate_checkpoint(parity_checkpoint, task, n_episodes=EPISODES, seed=SEED, n_procs=1,
                                 max_steps=MAX_STEPS)
    cams = "[" + ",".join(task["cameras"]) + "]"
    node = deploy_in_sim([f"deploy.policy.checkpoint={parity_checkpoint}", "task=lift",
                          f"task.image_size={task['image_size']}", f"task.cameras={cams}", f"episodes={EPISODES}",
                          f"max_steps={MAX_STEPS}", f"robot.seed={SEED}", f"domain_id={ros_env.domain_id}",
                          f"log_dir={tmp_path}", "store=none"])
    k_d, k_n = int(direct.successes), int(node["successes"])
    assert node["seeds"] == list(range(SEED, SEED + EPISODES)) == list(direct.seeds)
    summary = (f"direct {k_d}/{EPISODES}, node {k_n}/{EPISODES}; node diagnostics "
               f"{ {k: node['diagnostics'].get(k) for k in ('late_dropped_actions', 'holds', 'obs_to_action_p50_ms')} }")
    assert k_d >= 0.3 * EPISODES, f"the fixture policy is too weak for a parity comparison: {summary}"
    _, p = fisher_exact([[k_d, EPISODES - k_d], [k_n, EPISODES - k_n]])
    lo, _hi = wilson_interval(k_d, EPISODES)
    # indistinguishable (Fisher exact) and not below the direct rate's Wilson interval: the old node
    # (0.80 -> 0.15 in the issue; 0.50 -> 0.15 for a 0.50 policy in benchmarks/README.md) fails both
    assert p > 0.05 and k_n / EPISODES >= lo, f"node success differs from direct: p={p:.3f}; {summary}"
    assert node["diagnostics"]["inference_errors"] == 0, summary
