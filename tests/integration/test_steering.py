"""V-GPS end to end on a toy setting: half of the base's chunks head the wrong way; a Cal-QL critic trained
offline on the base's own (mixed success/failure) episodes in a real store steers it to the goal.

Toy: a point in the plane must come within ``RADIUS`` of the origin in ``MAX_STEPS``. The base's chunk
moves ``SPEED`` per step towards the goal with probability 1/2, else in a random direction.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robot_learning.data.store import EpisodeMeta, EpisodeStore
from robot_learning.policies.base import Policy, PolicySpec
from robot_learning.rl.train_critic import CriticTrainConfig, train
from robot_learning.rl.vgps import CriticNetConfig, make_vgps
from robot_learning.stats import format_rate, wilson_interval

SPEC = PolicySpec(obs_shapes={"pos": (2,)}, action_dim=2, n_obs_steps=1, horizon=4, n_action_steps=4)
STATS = {"pos": {"min": [-2.0, -2.0], "max": [2.0, 2.0]}, "action": {"min": [-0.2, -0.2], "max": [0.2, 0.2]}}
SPEED, RADIUS, MAX_STEPS = 0.15, 0.15, 16


class HalfBadBase(Policy):
    """Each chunk: towards the goal with p = 1/2, else a random heading (seeded, batched)."""

    spec = SPEC

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the noise."""
        self.rng = np.random.default_rng(seed)

    def sample_chunks(self, obs_history: dict[str, np.ndarray], k: int) -> np.ndarray:
        """``k`` chunks in one vectorised draw."""
        pos = obs_history["pos"][-1]
        good = -pos / max(np.linalg.norm(pos), 1e-6)
        ang = self.rng.uniform(0, 2 * np.pi, k)
        rand = np.stack([np.cos(ang), np.sin(ang)], 1)
        heading = np.where(self.rng.random(k)[:, None] < 0.5, good[None], rand)
        return np.repeat((SPEED * heading)[:, None], SPEC.horizon, 1).astype(np.float32)

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """One chunk."""
        return self.sample_chunks(obs_history, 1)[0]


def rollout(policy: Policy, seed: int) -> tuple[bool, np.ndarray, np.ndarray]:
    """One episode; returns success, positions and actions per step."""
    rng = np.random.default_rng(10_000 + seed)
    ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 1.4)
    pos = dist * np.array([np.cos(ang), np.sin(ang)])
    policy.reseed(seed)
    ps, acts = [], []
    while len(acts) < MAX_STEPS:
        chunk = policy.predict_chunk({"pos": pos[None].astype(np.float32)})
        for a in chunk[: SPEC.n_action_steps]:
            ps.append(pos.copy())
            acts.append(a)
            pos = pos + a
            if np.linalg.norm(pos) < RADIUS:
                return True, np.array(ps, np.float32), np.array(acts, np.float32)
    return False, np.array(ps, np.float32), np.array(acts, np.float32)


def collect(store_path: str, policy: Policy, episodes: int, seed: int) -> float:
    """Roll ``policy`` out and commit every episode (failures kept) with its success label."""
    store = EpisodeStore.open(store_path, mode="a", image_codec="lossless")
    wins = 0
    for s in range(seed, seed + episodes):
        ok, pos, act = rollout(policy, s)
        n = len(act)
        t = 100.0 * s + 0.1 * np.arange(n)
        store.add_episode(EpisodeMeta(task="toy", source="policy", rates={"step": 10.0}),
                          {"pos": pos, "action": act, "reward": np.zeros(n, np.float32), "done": np.arange(n) == n - 1},
                          {"step": t, "pos": t}, success=ok)
        wins += ok
    store.close()
    return wins / episodes


def success(policy: Policy, seeds: range) -> int:
    """Successes over ``seeds``."""
    return sum(rollout(policy, s)[0] for s in seeds)


def train_toy_critic(tmp: Path, algo: str = "calql", steps: int = 1000, episodes: int = 200):
    """Collect the base's episodes and train a critic on them; returns the TrainResult."""
    data = str(tmp / f"toy_{algo}.zarr")
    if not Path(data).exists():  # a benchmark re-run resumes on the same data
        collect(data, HalfBadBase(1), episodes, seed=0)
    cfg = CriticTrainConfig(base="-", data=[data], out_dir=str(tmp / f"critic_{algo}"), algo=algo, steps=steps,
                            batch_size=256, n_step=SPEC.n_action_steps, gamma=0.98, progress=False, task="toy",
                            net=CriticNetConfig(features="own", ensemble={"n_heads": 2, "hidden_dims": [128, 128],
                                                                    "target_subset": 2}))
    return train(cfg, HalfBadBase(), stats=STATS)


@pytest.mark.integration
def test_steering_raises_success_and_random_choice_does_not(tmp_path: Path) -> None:
    res = train_toy_critic(tmp_path)
    seeds = range(1000, 1100)  # unseen by the critic's data (seeds 0..199)
    n = len(seeds)
    base = success(HalfBadBase(), seeds)
    steered = success(make_vgps(HalfBadBase(), res.critic, res.meta, k=5), seeds)
    rand = success(make_vgps(HalfBadBase(), res.critic, res.meta, k=5, selection="random"), seeds)
    print(f"base {format_rate(base, n)}, V-GPS K=5 {format_rate(steered, n)}, random K=5 {format_rate(rand, n)}")
    lo_s, _ = wilson_interval(steered, n)
    _, hi_b = wilson_interval(base, n)
    assert lo_s > hi_b  # CIs do not overlap: a significant gain
    lo_r, hi_r = wilson_interval(rand, n)
    assert lo_r <= base / n <= hi_r  # the control stays within noise of the base


def _serve(checkpoint: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``rlstack serve --checkpoint`` as its own process on a free loopback port; returns it and its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "robot_learning.cli", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port)], stdout=open(log, "a"), stderr=subprocess.STDOUT)  # noqa: SIM115
    end = time.time() + 240  # importing torch under a loaded CI box can take a minute or more
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"ws://127.0.0.1:{port}"
        assert proc.poll() is None, f"rlstack serve exited: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("rlstack serve did not start listening")


@pytest.mark.integration
def test_a_steering_composite_runs_with_its_base_on_rlstack_serve(tmp_path: Path) -> None:
    import dataclasses

    from robot_learning.deploy.config import PolicySourceConfig
    from robot_learning.deploy.scripted import build_policy
    from robot_learning.policies.checkpoint import ModelPolicy, load_policy
    from robot_learning.rl.vgps import SteeringCritic, VGPSPolicy
    from robot_learning.serve.client import RemotePolicy
    from tests.unit.test_policy_models import STATS, _model, _obs_history

    base = ModelPolicy(_model("bc_gmm"), seed=5)
    base.save(tmp_path / "base.pt")
    net = CriticNetConfig(ensemble={"n_heads": 2, "hidden_dims": [32], "target_subset": 2})
    critic = SteeringCritic.on_base(base, net, STATS)
    meta = {"net": dataclasses.asdict(critic.net_config), "spec": base.spec.to_dict(), "task": "", "stats": STATS}
    make_vgps(base, critic, meta, k=6).save(tmp_path / "vgps.pt", base_ref=tmp_path / "base.pt")
    proc, url = _serve(tmp_path / "base.pt", tmp_path / "serve.log")
    steered = None
    try:  # as `rlstack deploy deploy.policy.checkpoint=vgps.pt deploy.policy.base_server=ws://...` builds it
        steered = build_policy(PolicySourceConfig(checkpoint=str(tmp_path / "vgps.pt"), base_server=url, timeout_s=30.0))
        remote = steered.base
        assert isinstance(steered, VGPSPolicy) and isinstance(remote, RemotePolicy)
        assert not steered.shared_features  # the base's features live in the server: the critic encodes locally
        trips: list[tuple[str, object, np.ndarray]] = []
        request = remote._request

        def counted(message: dict) -> dict:
            reply = request(message)
            trips.append((message["type"], message.get("k"), reply.get("actions")))
            return reply

        remote._request = counted  # type: ignore[method-assign]
        obs = _obs_history()
        res = steered.predict_chunk_with_info(obs)
        assert [(t, k) for t, k, _ in trips] == [("sample", 6)]  # K candidates in one round trip
        candidates = trips[0][2]
        assert np.array_equal(res.actions, candidates[res.info["vgps_choice"]])
        assert res.info["vgps_choice"] == int(np.argmax(res.info["vgps_scores"]))
        # the same scores as the local composite, whose critic shares the base's encoding of the observation
        local = load_policy(tmp_path / "vgps.pt")
        assert local.shared_features
        _, feats = local.base.sample_chunks_with_features(obs, 1)
        assert np.allclose(local.score(obs, candidates, feats), res.info["vgps_scores"], atol=1e-4)
    finally:
        if steered is not None:
            steered.close()
        proc.terminate()
        proc.wait(timeout=20)
