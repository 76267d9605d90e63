"""Policy registry and composite checkpoints: a wrapper + its base in one file, rebuilt in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_learning.policies import load_policy
from robot_learning.policies.checkpoint import ModelPolicy, read_checkpoint
from robot_learning.policies.composite import WrapperPolicy
from robot_learning.policies.perturbed import PerturbedConfig, PerturbedPolicy
from robot_learning.policies.registry import policy_class, register_policy, registered_types
from tests.unit.test_policy_models import SPEC, _model, _obs_history

REPO = Path(__file__).resolve().parents[2]


def _composite(tmp_path: Path, base_ref: bool = False) -> tuple[Path, PerturbedPolicy]:
    base = ModelPolicy(_model("bc_gmm"), seed=5)
    wrapper = PerturbedPolicy(base, PerturbedConfig(noise_std=0.05, noise_seed=11), offset=[0.1, -0.05, 0.2])
    base.save(tmp_path / "base.pt")
    path = tmp_path / ("ref.pt" if base_ref else "composite.pt")
    wrapper.save(path, base_ref=tmp_path / "base.pt" if base_ref else None)
    return path, wrapper


def _rollout(policy, seed: int = 3) -> list[list[float]]:
    """Chunks, samples and per-step actions of ``policy`` for a fixed seed."""
    policy.reseed(seed)
    obs = _obs_history()
    chunk = policy.predict_chunk(obs)
    steps = [policy.step_action(obs, chunk[i], i) for i in range(4)]
    return np.concatenate([chunk.ravel(), policy.sample_chunks(obs, 3).ravel(), np.ravel(steps)]).tolist()


FRESH = """
import json, sys
from robot_learning.policies import load_policy
from robot_learning.policies.registry import _TYPES
assert "perturbed" not in _TYPES  # nothing imported the wrapper's module in this process
p = load_policy(sys.argv[1], seed=0)  # found through the module named in the checkpoint
from tests.unit.test_policy_composite import _rollout
print(json.dumps({"type": type(p).__name__, "base": type(p.base).__name__, "actions": _rollout(p)}))
"""


@pytest.mark.parametrize("base_ref", [False, True], ids=["embedded", "by_hash"])
def test_composite_round_trip_in_a_fresh_process_gives_the_same_actions(tmp_path: Path, base_ref: bool) -> None:
    path, wrapper = _composite(tmp_path, base_ref)
    expected = _rollout(wrapper)
    out = subprocess.run([sys.executable, "-c", FRESH, str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["type"] == "PerturbedPolicy" and got["base"] == "ModelPolicy"
    np.testing.assert_allclose(got["actions"], expected, atol=1e-6)
    # the offset moved every executed action (the hook ran, the comparison is not base vs base)
    assert not np.allclose(_rollout(wrapper.base)[-12:], expected[-12:])


def test_composite_file_is_plain_data_with_spec_and_normalizer(tmp_path: Path) -> None:
    path, wrapper = _composite(tmp_path)
    ckpt = torch.load(path, weights_only=True)  # no pickled classes anywhere in it
    assert ckpt["version"] == 2 and ckpt["policy_type"] == "perturbed"
    assert ckpt["policy_module"] == "robot_learning.policies.perturbed"
    assert ckpt["spec"] == SPEC.to_dict() and ckpt["normalizer"] == ckpt["base"]["normalizer"]
    assert ckpt["base"]["policy_type"] == "bc" and ckpt["base"]["version"] == 1
    torch.testing.assert_close(ckpt["state_dict"]["offset"], torch.tensor([0.1, -0.05, 0.2], dtype=torch.float64))


def test_referenced_base_that_changed_is_refused(tmp_path: Path) -> None:
    path, _ = _composite(tmp_path, base_ref=True)
    assert "base" not in read_checkpoint(path) and load_policy(path).base is not None
    ModelPolicy(_model("bc")).save(tmp_path / "base.pt")  # retrained in place
    with pytest.raises(ValueError, match="content hash"):
        load_policy(path)
    (tmp_path / "base.pt").unlink()
    with pytest.raises(FileNotFoundError, match="referenced base"):
        load_policy(path)


def test_old_single_network_checkpoints_still_load(tmp_path: Path) -> None:
    model = _model("bc")
    ModelPolicy(model).save(tmp_path / "new.pt")
    old = read_checkpoint(tmp_path / "new.pt")
    del old["policy_module"]  # what version-1 files written before the registry look like
    torch.save(old, tmp_path / "old.pt")
    np.testing.assert_allclose(load_policy(tmp_path / "old.pt").predict_chunk(_obs_history()),
                               ModelPolicy(model).predict_chunk(_obs_history()), atol=1e-6)


def test_registry_refuses_duplicates_foreign_modules_and_unknown_types(tmp_path: Path) -> None:
    assert {"diffusion", "bc", "diffusion_onestep", "perturbed"} <= set(registered_types())
    with pytest.raises(ValueError, match="already registered"):
        @register_policy("bc")
        class Impostor(WrapperPolicy):
            pass
    with pytest.raises(ValueError, match="outside the importable packages"):
        policy_class("evil", module="os")
    with pytest.raises(ValueError, match="cannot be imported"):
        policy_class("gone", module="robot_learning.rl.no_such_module")
    path, _ = _composite(tmp_path)
    ckpt = read_checkpoint(path)
    ckpt["policy_type"] = "nonexistent"
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unknown policy type 'nonexistent'"):
        load_policy(tmp_path / "bad.pt")


def test_wrapper_forwards_interface_and_info(tmp_path: Path) -> None:
    _, wrapper = _composite(tmp_path)
    res = wrapper.predict_chunk_with_info(_obs_history())
    assert res.actions.shape == (SPEC.horizon, SPEC.action_dim) and res.info["base"]["infer_ms"] > 0
    assert wrapper.has_step_hook and not wrapper.base.has_step_hook and wrapper.base.step_hook() is None
    hook = wrapper.step_hook()
    planned = np.zeros(3)
    wrapper.config.noise_std = hook.config.noise_std = 0.0
    np.testing.assert_allclose(hook.step_action(_obs_history(), planned, 0), wrapper.step_action(_obs_history(), planned, 0))
    with pytest.raises(ValueError, match="offset has shape"):
        PerturbedPolicy(wrapper.base, offset=[0.0, 1.0])
