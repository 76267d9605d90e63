"""The one training loop on a real (toy) zarr store: outputs, exact resume after SIGKILL, DDP over
gloo with two CPU processes, and clear errors for bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_learning.config import compose
from robot_learning.policies import load_policy
from robot_learning.train.loop import LATEST, POLICY, train
from robot_learning.train.toy import write_toy_store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "train=toy",
    "policy.obs_keys=[camera_front,joint_pos]",
    "policy.horizon=8",
    "policy.n_action_steps=4",
    "policy.params.encoder.width=8",
    "policy.params.encoder.keypoints=4",
    "policy.params.encoder.feature_dim=8",
]
TINY_DIFFUSION = [*TINY, "policy=diffusion", "policy.params.down_dims=[16,32]", "policy.params.step_embed_dim=16",
                  "policy.params.num_inference_steps=4"]
TINY_BC = [*TINY, "policy=bc", "policy.params.hidden_dims=[32]"]


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory) -> Path:
    return write_toy_store(tmp_path_factory.mktemp("store") / "toy.zarr", episodes=6, length=24)


def _cfg(store: Path, out: Path, *extra: str):
    return compose("train", [*TINY_DIFFUSION, f"data.store={store}", f"out_dir={out}", *extra])


def test_train_writes_checkpoint_config_and_logs(toy_store, tmp_path) -> None:
    out = tmp_path / "run"
    path = train(_cfg(toy_store, out, "train.steps=10"))
    assert path == out / POLICY
    policy = load_policy(path)
    assert policy.spec.obs_shapes == {"camera_front": (16, 16, 3), "joint_pos": (4,)}
    assert policy.spec.action_dim == 3 and policy.spec.horizon == 8
    ckpt = torch.load(out / LATEST, weights_only=True)
    assert ckpt["train_state"]["step"] == 10 and ckpt["config"]["train"]["steps"] == 10
    assert "data:\n  store: " + str(toy_store) in (out / "config.yaml").read_text()
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == ["5", "10"]
    assert any((out / "tb").iterdir())
    # only successful episodes were used (the toy store's episode 4 failed)
    assert ckpt["normalizer"]["action"]["max"][2] == 1.0


@pytest.mark.parametrize(("extra", "head"), [(TINY_BC, "mlp"),
                                             ([*TINY, "policy=bc_gmm", "policy.params.hidden_dims=[32]"], "gmm")])
def test_bc_variants_train(toy_store, tmp_path, extra, head) -> None:
    cfg = compose("train", [*extra, f"data.store={toy_store}", f"out_dir={tmp_path}", "train.steps=6"])
    policy = load_policy(train(cfg))
    assert policy.policy_type == "bc" and policy.model.config.head == head
    n_out = policy.model.mlp[-1].out_features
    chunk = policy.spec.horizon * policy.spec.action_dim
    modes = policy.model.config.n_modes
    # the head really is this head (bc_gmm: one std per chunk dimension shared by the modes)
    assert n_out == (chunk if head == "mlp" else modes * (1 + chunk) + chunk)
    obs = {"camera_front": np.zeros((2, 16, 16, 3), np.uint8), "joint_pos": np.zeros((2, 4), np.float32)}
    samples = policy.sample_chunks(obs, 8)
    spread = float(samples.std(axis=0).max())
    # an MLP head is deterministic; a mixture head samples (different chunks for one observation)
    assert spread < 1e-6 if head == "mlp" else spread > 1e-3


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / LATEST, weights_only=True)["train_state"]["model"]


def _train_cmd(store: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "robot_learning.train.cli", *TINY_DIFFUSION, f"data.store={store}",
            f"out_dir={out}", "train.steps=60", "train.checkpoint_every=10", "train.log_every=10", *extra]


def test_resume_after_sigkill_matches_uninterrupted_run(toy_store, tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(toy_store, reference), check=True, env=env, cwd=REPO, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(toy_store, killed), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / LATEST).exists():  # kill right after the first checkpoint lands
        assert proc.poll() is None, "training exited before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    stopped_at = torch.load(killed / LATEST, weights_only=True)["train_state"]["step"]
    assert 10 <= stopped_at < 60

    subprocess.run(_train_cmd(toy_store, killed), check=True, env=env, cwd=REPO, capture_output=True)
    ref, res = _final_weights(reference), _final_weights(killed)
    assert torch.load(killed / LATEST, weights_only=True)["train_state"]["step"] == 60
    for key in ref:
        assert torch.equal(ref[key], res[key]), f"weights differ after resume at {key}"
    ref_ema = torch.load(reference / POLICY, weights_only=True)["state_dict"]
    res_ema = torch.load(killed / POLICY, weights_only=True)["state_dict"]
    assert all(torch.equal(ref_ema[k], res_ema[k]) for k in ref_ema)
    steps = [int(r.split(",")[0]) for r in (killed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(10, 61, 10))  # the log has no duplicate or missing rows after resume
    changed = subprocess.run(_train_cmd(toy_store, killed, "train.lr=0.5"), env=env, cwd=REPO, capture_output=True,
                             text=True)  # another run's settings in the same folder: refused, the folder unchanged
    assert changed.returncode != 0 and "cannot resume" in changed.stderr and "train.lr: 0.0001 -> 0.5" in changed.stderr
    assert torch.load(killed / LATEST, weights_only=True)["train_state"]["step"] == 60


def test_ddp_two_gloo_processes(toy_store, tmp_path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "robot_learning.train.cli", *TINY_BC, f"data.store={toy_store}", f"out_dir={out}",
           "train.steps=6", "train.batch_size=4", "train.checkpoint_every=3", "train.dist_timeout_s=60"]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(out / LATEST, weights_only=True)
    state = ckpt["train_state"]
    assert state["world"] == 2 and state["step"] == 6 and len(state["rng"]) == 2
    # DDP averaged gradients: the two processes used different crops and batches, yet one model came out
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    load_policy(out / POLICY)
    # resuming a 2-process run with one process is refused (the data order depends on the world size)
    with pytest.raises(ValueError, match="trained with 2"):
        train(compose("train", [*TINY_BC, f"data.store={toy_store}", f"out_dir={out}", "train.steps=8"]))


def test_bad_input_errors(toy_store, tmp_path) -> None:
    with pytest.raises(ValueError, match="no episode in .* matches"):
        train(_cfg(toy_store, tmp_path / "a", "data.task=stack"))
    with pytest.raises(ValueError, match=r"\['camera_wrist'\] are not in store"):
        train(_cfg(toy_store, tmp_path / "b", "policy.obs_keys=[camera_wrist,joint_pos]"))
    with pytest.raises(FloatingPointError, match="training loss is .* at step"):
        train(_cfg(toy_store, tmp_path / "c", "train.lr=1e30", "train.warmup_steps=0", "train.grad_clip=1e30"))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_cfg(toy_store, tmp_path / "d", "train.batch_size=100000"))
    with pytest.raises(ValueError, match="train.stepz|stepz"):
        train(_cfg(toy_store, tmp_path / "e", "+train.stepz=3"))


def test_resume_refuses_a_store_with_other_shapes(toy_store, tmp_path) -> None:
    out = tmp_path / "run"
    train(_cfg(toy_store, out, "train.steps=5"))
    other = write_toy_store(tmp_path / "other.zarr", episodes=6, length=24, image_size=20)
    with pytest.raises(ValueError, match=r"'camera_front': checkpoint \(16, 16, 3\), store .* \(20, 20, 3\)"):
        train(_cfg(other, out, "train.steps=10"))


def test_nan_in_data_is_named(tmp_path) -> None:
    store = write_toy_store(tmp_path / "nan.zarr", episodes=6, length=24, nan_episode=2)
    with pytest.raises(ValueError, match="'action'.*episode 2"):
        train(_cfg(store, tmp_path / "run"))
