"""Pieces of the training loop that decide exactness: data order, RNG capture, config validation."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from robot_learning.config import compose
from robot_learning.train.checkpointing import (
    check_resume_config,
    rng_states,
    saved_threads,
    set_rng_states,
    step_seed,
    warn_thread_change,
)
from robot_learning.train.config import validate_run_config
from robot_learning.train.loop import StepBatches
from robot_learning.train.metrics import CsvLog


def test_step_batches_are_a_function_of_the_step() -> None:
    full = list(StepBatches(50, 4, seed=1, rank=0, world=1, start_step=0, end_step=30))
    resumed = list(StepBatches(50, 4, seed=1, rank=0, world=1, start_step=17, end_step=30))
    assert resumed == full[17:]
    per_epoch = 50 // 4
    epoch0 = [i for b in full[:per_epoch] for i in b]
    assert len(set(epoch0)) == len(epoch0) == per_epoch * 4  # no repeats inside an epoch
    assert full[:per_epoch] != full[per_epoch : 2 * per_epoch]  # a new permutation per epoch
    assert list(StepBatches(50, 4, seed=2, rank=0, world=1, start_step=0, end_step=3)) != full[:3]


def test_step_batches_split_the_global_batch_between_ranks() -> None:
    r0 = list(StepBatches(40, 4, seed=0, rank=0, world=2, start_step=0, end_step=5))
    r1 = list(StepBatches(40, 4, seed=0, rank=1, world=2, start_step=0, end_step=5))
    for a, b in zip(r0, r1, strict=True):
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatches(7, 4, seed=0, rank=0, world=2, start_step=0, end_step=1)


def test_rng_states_round_trip() -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    saved = rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_states(saved)
    assert torch.equal(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert step_seed(0, 5, 0) == step_seed(0, 5, 0) != step_seed(0, 5, 1) != step_seed(0, 6, 0)


def test_csv_log_drops_rows_after_the_resumed_step(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    log = CsvLog(path, 0)
    for step in (10, 20, 30):
        log.write({"step": step, "loss": 1.0 / step})
    CsvLog(path, 20).write({"step": 30, "loss": 0.5})
    rows = path.read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["10", "20", "30"] and rows[-1].startswith("30,0.5")


def test_config_validation_names_the_key() -> None:
    cfg = compose("train", ["train=toy"])
    run = validate_run_config(cfg)
    assert run.train.steps == 20 and run.policy.type == "diffusion" and run.task["name"] == "lift"
    with pytest.raises(ValueError, match="n_action_steps=20 must be in 1..policy.horizon"):
        validate_run_config(compose("train", ["policy.n_action_steps=20"]))
    with pytest.raises(ValueError, match="batch_sizee"):
        validate_run_config(compose("train", ["+train.batch_sizee=3"]))
    with pytest.raises(ValueError, match="steps"):
        validate_run_config(compose("train", ["train.steps=abc"]))


def test_rlstack_reports_bad_config_in_one_line_with_exit_code_2(capsys, monkeypatch) -> None:
    from robot_learning.cli import main as rlstack

    monkeypatch.delenv("RLSTACK_TRACEBACK", raising=False)
    assert rlstack(["train", "policy=diffusion", "foo.bar=1"]) == 2
    err = capsys.readouterr().err
    assert "rlstack train: error: Could not override 'foo.bar'" in err and "Traceback" not in err
    assert rlstack(["train", "policy=diffusion_onestep"]) == 2
    assert "Missing mandatory value: teacher (config key policy.params.teacher)" in capsys.readouterr().err
    assert rlstack(["eval", "checkpoint=missing.pt"]) == 2
    assert "checkpoint not found: missing.pt" in capsys.readouterr().err
    monkeypatch.setenv("RLSTACK_TRACEBACK", "1")  # debugging the stack itself: the exception propagates
    with pytest.raises(FileNotFoundError):
        rlstack(["eval", "checkpoint=missing.pt"])


def test_numpy_generator_state_survives_a_weights_only_checkpoint(tmp_path) -> None:
    from robot_learning.train.checkpointing import (
        load_resume,
        numpy_generator_state,
        save_checkpoint,
        set_numpy_generator_state,
    )

    rng = np.random.default_rng(5)
    rng.integers(0, 10, 7)
    save_checkpoint(tmp_path / "checkpoints" / "latest.pt",
                    {"format": "rlstack.policy", "version": 1, "rng": numpy_generator_state(rng)})
    expected = rng.integers(0, 1000, 5)
    other = np.random.default_rng(0)
    set_numpy_generator_state(other, load_resume(tmp_path)["rng"])
    np.testing.assert_array_equal(other.integers(0, 1000, 5), expected)
    assert load_resume(tmp_path / "nothing") is None


def test_resume_config_check_names_what_changed() -> None:
    saved = {"lr": 1e-4, "steps": 100, "net": {"hidden": [64, 64], "score": "chunk"}, "vgps": {"k": 10}}
    check_resume_config(saved, {**saved, "steps": 200, "vgps": {"k": 5}}, "run", may_change=("steps", "vgps"))
    check_resume_config(None, saved, "run")  # a resume file from before configs were saved
    check_resume_config(saved, {**saved, "net": {"hidden": (64, 64), "score": "chunk"}, "new_key": 1}, "run")
    with pytest.raises(ValueError, match=r"run: cannot resume.*lr: 0\.0001 -> 0\.001; net\.score: 'chunk' -> 'first'"):
        check_resume_config(saved, {**saved, "lr": 1e-3, "net": {"hidden": [64, 64], "score": "first"}}, "run")


def test_resume_with_another_thread_count_warns() -> None:
    now = torch.get_num_threads()
    with pytest.warns(UserWarning, match=f"trained with {now + 1} torch thread"):
        warn_thread_change(now + 1, "run/checkpoints/latest.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_thread_change(now, "run/checkpoints/latest.pt")  # same count: silent
        warn_thread_change(None, "run/checkpoints/latest.pt")  # a checkpoint from before the count was kept


def test_rl_runs_read_their_thread_count_from_the_stored_config() -> None:
    """rlstack finetune / train-critic store ``threads`` in their config; 0 means one thread, as they run it."""
    assert saved_threads({"threads": 2, "seed": 0}) == 2
    assert saved_threads({"threads": 0}) == 1
    assert saved_threads({"seed": 0}) is None and saved_threads(None) is None
