"""Residual RL cancels a constant action offset on a biased base in the PyBullet lift task.

Toy setting (privileged low-dim observations, no cameras, so that it runs in CI in minutes): the
base is the scripted lift expert reading the privileged state (deploy/scripted.py: ExpertPolicy)
with a constant +0.5 offset on the x action (policies/perturbed.py), which drops its success to
~20 %. Demos are the unbiased expert, relabelled with the biased base (target residual = -offset).
The residual must learn the correction from sparse success rewards; the test asserts that the
fine-tuned success beats the base's on the same unseen seeds by a one-sided Fisher exact test.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from scipy.stats import fisher_exact

from robot_learning.data.layout import EpisodeMeta
from robot_learning.data.store import EpisodeStore
from robot_learning.eval.policy_agent import PolicyAgent
from robot_learning.rl.finetune import Finetuner, load_config, run_episode
from robot_learning.rl.residual import ResidualPolicy

pytestmark = pytest.mark.integration

OFFSET = np.array([0.5, 0.0, 0.0, 0.0, 0.0])


class PrivilegedObs(gym.ObservationWrapper):
    """Adds the flattened privileged state (the ExpertPolicy's input) to every observation."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        from sim.privileged import privileged_layout

        self.layout = privileged_layout("lift")

    def observation(self, observation: dict) -> dict:
        from sim.privileged import privileged_segments

        seg = privileged_segments(self.env.unwrapped.robot)
        return {**observation, "privileged_state": np.concatenate([seg[k] for k in self.layout]).astype(np.float32)}


def _env() -> gym.Env:
    from sim import make_env

    return PrivilegedObs(make_env("lift", cameras=(), render=False, max_steps=60))


def _demos(path: str, n: int) -> None:
    from robot_learning.deploy.scripted import ExpertPolicy

    env, agent = _env(), PolicyAgent(ResidualPolicy(ExpertPolicy("lift")))  # zero residual = the expert
    store = EpisodeStore.open(path, mode="a")
    for s in range(n):
        data, success, steps, _ = run_episode(env, agent, 500 + s, record=True)
        tick = np.arange(steps) / 10.0
        store.add_episode(EpisodeMeta(task="lift", source="scripted"), data,
                          {"step": tick, "privileged_state": tick, "planned_action": tick}, success=success)
    store.close()


def test_residual_cancels_a_constant_offset(tmp_path) -> None:
    from robot_learning.deploy.scripted import ExpertPolicy
    from robot_learning.policies.perturbed import PerturbedPolicy

    _demos(str(tmp_path / "demos.zarr"), 5)
    cfg, parts = load_config([
        "base=unused", f"demos={tmp_path / 'demos.zarr'}", f"out_dir={tmp_path / 'run'}", "env_steps=2500",
        "eval_every=100000", "eval_episodes=30", "warmup_episodes=3", "warmup_noise_std=0.1",
        "residual.action_scale=0.6", "residual.hidden_dims=[64,64]", "critic.n_heads=4",
        "critic.hidden_dims=[128,128]", "critic.lr=1e-3", "actor.lr=1e-3", "actor.exploration_std=0.1",
        "learner.critic_warmup_updates=200", "learner.utd_ratio=1", "replay.batch_size=64", "progress=false"])
    base = PerturbedPolicy(ExpertPolicy("lift"), offset=OFFSET)
    tuner = Finetuner(cfg, parts, base=base, env=_env())
    tuner.run()
    first, last = tuner.eval_rows[0], tuner.eval_rows[-1]
    _, p = fisher_exact([[last["successes"], last["n"] - last["successes"]],
                         [first["successes"], first["n"] - first["successes"]]], alternative="greater")
    print(f"base {first['successes']}/{first['n']} -> residual {last['successes']}/{last['n']}, Fisher p={p:.4f}")
    assert p < 0.05, (first, last)


def test_resume_after_a_stop_is_bit_exact(tmp_path) -> None:
    """A run stopped at an episode boundary and resumed ends with the same weights as one straight run."""
    import torch

    from robot_learning.deploy.scripted import ExpertPolicy
    from robot_learning.policies.perturbed import PerturbedPolicy

    _demos(str(tmp_path / "demos.zarr"), 2)

    def tuner(out: str, steps: int, *extra: str) -> Finetuner:
        cfg, parts = load_config([*extra,
            "base=unused", f"demos={tmp_path / 'demos.zarr'}", f"out_dir={tmp_path / out}", f"env_steps={steps}",
            "eval_every=100000", "eval_episodes=1", "warmup_episodes=1", "residual.hidden_dims=[32]",
            "critic.n_heads=3", "critic.hidden_dims=[32]", "learner.critic_warmup_updates=10",
            "replay.batch_size=16", "progress=false"])
        return Finetuner(cfg, parts, base=PerturbedPolicy(ExpertPolicy("lift"), offset=OFFSET), env=_env())

    straight = tuner("a", 150)
    straight.run()
    tuner("b", 60).run()  # stops after the episode that crosses 60 steps
    resumed = tuner("b", 150)
    resumed.run()
    assert resumed.env_steps == straight.env_steps and resumed.learner.updates == straight.learner.updates
    a, b = straight.learner.state_dict(), resumed.learner.state_dict()
    for part in ("net", "critic", "critic_target"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert [r["success"] for r in straight.train_rows] == [r["success"] for r in resumed.train_rows]
    resumed.store.close()  # one writer per store
    with pytest.raises(ValueError, match=r"actor\.lr: 3e-05 -> 0\.001"):  # a changed setting is not mixed into the run
        tuner("b", 200, "actor.lr=1e-3").run()
