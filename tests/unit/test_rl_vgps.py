"""Value-guided steering: batched scoring, selection, composite round trip, refusals, critic training."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_learning.data.store import EpisodeMeta, EpisodeStore
from robot_learning.policies.checkpoint import ModelPolicy
from robot_learning.rl.train_critic import CriticTrainConfig, train
from robot_learning.rl.vgps import (
    CriticNetConfig,
    SteeringCritic,
    VGPSConfig,
    VGPSPolicy,
    make_vgps,
    validate_vgps,
)
from tests.unit.test_policy_models import SPEC, STATS, TINY_ENC, _model, _obs_history

REPO = Path(__file__).resolve().parents[2]
NET = CriticNetConfig(encoder=TINY_ENC, ensemble={"n_heads": 2, "hidden_dims": [16], "target_subset": 2})


def _steered(kind: str = "bc_gmm", features: str = "base", **settings) -> VGPSPolicy:
    torch.manual_seed(0)
    base = ModelPolicy(_model(kind), seed=5)
    critic = SteeringCritic.on_base(base, dataclasses.replace(NET, features=features), STATS)
    meta = {"net": dataclasses.asdict(critic.net_config), "spec": SPEC.to_dict(), "task": "", "stats": STATS,
            "algo": "calql"}
    return make_vgps(base, critic, meta, **settings)


@pytest.mark.parametrize("kind", ["bc_gmm", "diffusion"])
def test_k_chunks_come_from_one_sample_call_and_are_scored_in_one_batched_pass(kind: str) -> None:
    pol = _steered(kind, k=6)
    assert pol.shared_features  # the critic sits on the base's own (frozen) encoder
    pol.predict_chunk(_obs_history())  # builds diffusion's inference engine (which runs the encoder to check it)
    pol.reset()  # and forgets its cached frame features
    calls = {"sample": [], "q": [], "base_enc": 0, "critic_enc": 0}
    orig = pol.base.sample_chunks_with_features
    pol.base.sample_chunks_with_features = lambda obs, k: calls["sample"].append(k) or orig(obs, k)  # type: ignore
    pol.critic.q.register_forward_hook(lambda m, i, o: calls["q"].append(tuple(o.shape)))
    for cam in pol.base.model.encoder.cameras.values():  # the eager encoders (diffusion: unless compiled)
        cam.register_forward_hook(lambda m, i, o: calls.__setitem__("base_enc", calls["base_enc"] + 1))
    pol.critic.features.encoder.register_forward_hook(
        lambda m, i, o: calls.__setitem__("critic_enc", calls["critic_enc"] + 1))
    res = pol.predict_chunk_with_info(_obs_history())
    assert calls["sample"] == [6] and calls["q"] == [(2, 6)]  # one sample call, one (heads, K) critic pass
    # the observation is encoded once, for both (0 where diffusion runs a compiled camera graph)
    assert calls["critic_enc"] == 0 and (calls["base_enc"] == 1 or kind == "diffusion" and calls["base_enc"] == 0)
    assert res.actions.shape == (SPEC.horizon, SPEC.action_dim) and len(res.info["vgps_scores"]) == 6
    assert res.info["vgps_choice"] == int(np.argmax(res.info["vgps_scores"]))  # beta = 0: argmax
    assert res.info["vgps_shared_features"]
    # the shared features are exactly what the critic's own copy of the encoder computes (remote-base path)
    chunks = np.stack([res.actions] * 3)
    own = pol.score(_obs_history(), chunks)
    pol.base.reseed(0)
    _, feats = orig(_obs_history(), 1)
    assert np.allclose(pol.score(_obs_history(), chunks, feats), own, atol=1e-4)


def test_a_critic_on_other_encoder_weights_encodes_on_its_own() -> None:
    pol = _steered(features="own")
    assert not pol.shared_features and pol.critic.features.frozen is False
    res = pol.predict_chunk_with_info(_obs_history())
    assert not res.info["vgps_shared_features"] and len(res.info["vgps_scores"]) == pol.config.k
    frozen = _steered()
    with torch.no_grad():  # a critic whose encoder copy differs from the base's must not use the base's features
        next(frozen.critic.features.encoder.parameters()).add_(1.0)
    frozen.load_own_state_dict(frozen.critic.state_dict())
    assert not frozen.shared_features


def test_selection_argmax_softmax_and_random() -> None:
    pol = _steered(k=3)
    scores = np.array([1.0, 3.0, 2.0])
    assert pol.choose(scores) == 1
    pol.config.beta = 0.01  # near-greedy softmax
    assert {pol.choose(scores) for _ in range(50)} == {1}
    pol.config.beta = 1.0
    picks = np.bincount([pol.choose(scores) for _ in range(3000)], minlength=3) / 3000
    p = np.exp(scores - 3) / np.exp(scores - 3).sum()
    assert np.allclose(picks, p, atol=0.03)
    pol.config.selection = "random"
    picks = np.bincount([pol.choose(scores) for _ in range(3000)], minlength=3) / 3000
    assert np.allclose(picks, 1 / 3, atol=0.03)
    with pytest.raises(ValueError, match="beta"):
        validate_vgps(VGPSConfig(beta=-1))
    with pytest.raises(ValueError, match="k must be"):
        validate_vgps(VGPSConfig(k=0))


FRESH = """
import json, sys
import numpy as np
from robot_learning.policies import load_policy
from robot_learning.policies.registry import _TYPES
assert "vgps" not in _TYPES
p = load_policy(sys.argv[1], seed=0)
from tests.unit.test_policy_models import _obs_history
p.reseed(3)
r = p.predict_chunk_with_info(_obs_history())
print(json.dumps({"type": type(p).__name__, "k": p.config.k, "a": r.actions.ravel().tolist(), "s": r.info["vgps_scores"]}))
"""


def test_composite_round_trip_in_a_fresh_process(tmp_path: Path) -> None:
    pol = _steered(k=4)
    pol.save(tmp_path / "vgps.pt")
    pol.reseed(3)
    want = pol.predict_chunk_with_info(_obs_history())
    out = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "vgps.pt")], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["type"] == "VGPSPolicy" and got["k"] == 4
    assert np.allclose(got["a"], want.actions.ravel(), atol=1e-6)
    assert np.allclose(got["s"], want.info["vgps_scores"], atol=1e-6)


def test_a_deterministic_base_is_detected() -> None:
    pol = _steered("bc", k=4)
    with pytest.warns(UserWarning, match="deterministic"):
        assert not pol.check_stochastic(_obs_history())
    pol = _steered("bc", k=4)
    with pytest.warns(UserWarning, match="deterministic"):  # at run time: three identical re-plans in a row
        for _ in range(3):
            pol.predict_chunk(_obs_history())
    stochastic = _steered("bc_gmm", k=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stochastic.check_stochastic(_obs_history())


def test_wrong_spec_wrong_task_nan_weights_and_nan_scores_are_refused() -> None:
    pol = _steered()
    meta = dict(pol.config.critic)
    other = dict(meta, spec={**SPEC.to_dict(), "action_dim": 4})
    with pytest.raises(ValueError, match="action_dim"):
        VGPSPolicy(pol.base, VGPSConfig(critic=other))
    pol.base.checkpoint = lambda: {"config": {"task": "lift"}}  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="task 'push'.*'lift'"):
        VGPSPolicy(pol.base, VGPSConfig(critic=dict(meta, task="push")))
    sd = pol.own_state_dict()
    sd = {k: (torch.full_like(v, float("nan")) if k.endswith("weight") else v) for k, v in sd.items()}
    with pytest.raises(ValueError, match="NaN"):
        pol.load_own_state_dict(sd)
    with torch.no_grad():
        pol.critic.q.net[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite scores"):
        pol.predict_chunk(_obs_history())


def _store(path: Path) -> str:
    s = EpisodeStore.open(str(path), mode="a", image_codec="lossless")
    rng = np.random.default_rng(0)
    for ep in range(4):
        n = 6
        data = {"camera_front": rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
                "joint_pos": rng.uniform(-1, 1, (n, 4)).astype(np.float32),
                "action": rng.uniform(-0.2, 0.2, (n, 3)).astype(np.float32),
                "reward": np.zeros(n, np.float32), "done": np.arange(n) == n - 1}
        t = 10.0 * ep + 0.1 * np.arange(n)
        s.add_episode(EpisodeMeta(task="lift", source="scripted", rates={"step": 10.0}), data,
                      {"step": t, "camera_front": t, "joint_pos": t}, success=ep % 2 == 0)
    s.close()
    return str(path)


@pytest.mark.parametrize("algo", ["calql", "iql"])
def test_critic_training_resumes_exactly(tmp_path: Path, algo: str) -> None:
    data = _store(tmp_path / "d.zarr")
    base = ModelPolicy(_model("bc_gmm"), seed=5)

    def cfg(out: str, steps: int) -> CriticTrainConfig:
        return CriticTrainConfig(base="-", data=[data], out_dir=str(tmp_path / out), algo=algo, steps=steps,
                                 batch_size=8, log_every=2, ckpt_every=3, progress=False, net=NET, task="lift",
                                 vgps={"k": 3})

    full = train(cfg("a", 6), base)
    train(cfg("b", 3), base)
    resumed = train(cfg("b", 6), base)
    for k, v in full.critic.state_dict().items():
        assert torch.equal(v, resumed.critic.state_dict()[k]), k
    assert [r["step"] for r in resumed.rows] == [2, 3, 4, 6]  # the 3-step run logged its last step and resumed.composite is not None
    assert (tmp_path / "b" / "train.csv").read_text().count("\n") == 5
    changed = cfg("b", 9)
    changed.lr = 1e-3
    with pytest.raises(ValueError, match=r"lr: 0\.0003 -> 0\.001"):  # another run's settings are refused on resume
        train(changed, base)
    from robot_learning.policies import load_policy
    steered = load_policy(resumed.composite)
    assert isinstance(steered, VGPSPolicy) and steered.config.k == 3 and steered.task == "lift"
