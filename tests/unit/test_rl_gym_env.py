"""The gym env for RL: failure termination, truncation, vector envs, the simulated intervener, one episode loop."""

from __future__ import annotations

import numpy as np
import pytest

from sim import make_env, make_expert, make_robot
from sim.gym_env import make_vector_env, run_episode


def test_failure_terminates_and_the_step_limit_truncates() -> None:
    env = make_env("lift", render=False, max_steps=6, failure=lambda robot: robot.steps >= 3)
    try:
        env.reset(seed=0)
        outs = [env.step(np.zeros(5, np.float32)) for _ in range(3)]
        assert [o[2] for o in outs] == [False, False, True] and not any(o[3] for o in outs)
        assert outs[-1][4]["failed"] and not outs[-1][4]["success"] and outs[-1][1] == 0.0
    finally:
        env.close()
    env = make_env("lift", render=False, max_steps=4)
    try:
        env.reset(seed=0)
        outs = [env.step(np.zeros(5, np.float32)) for _ in range(4)]
        assert [o[3] for o in outs] == [False, False, False, True] and not any(o[2] for o in outs)
        assert not outs[-1][4]["failed"]
    finally:
        env.close()


def test_vector_env_steps_several_seeded_copies() -> None:
    venv = make_vector_env("lift", num_envs=2, render=False, max_steps=3)
    try:
        obs, info = venv.reset(seed=7)
        assert obs["joint_pos"].shape == (2, 9) and "privileged_state" not in obs  # privileged state is info only
        scene = info["privileged_state"].copy()
        assert not np.allclose(scene[0], scene[1])  # env i is seeded with 7 + i
        truncs = []
        for _ in range(3):
            obs, reward, term, trunc, info = venv.step(np.zeros((2, 5), np.float32))
            truncs.append(trunc.tolist())
        assert truncs == [[False, False], [False, False], [True, True]] and reward.shape == (2,)
        assert not np.allclose(venv.reset(seed=8)[1]["privileged_state"], scene)
        np.testing.assert_allclose(venv.reset(seed=7)[1]["privileged_state"], scene)  # same seed, same scenes
    finally:
        venv.close()


def test_the_intervener_takes_over_from_a_wrong_way_action() -> None:
    env = make_env("lift", render=False, intervene=True)
    try:
        env.reset(seed=0)
        expert = make_expert("lift")
        expert.reset(0)
        good = expert.act(env.robot).astype(np.float32)
        _, _, _, _, info = env.step(good)
        assert not info["intervention"] and np.allclose(info["executed_action"], good)
        bad = -expert.act(env.robot).astype(np.float32)
        _, _, _, _, info = env.step(bad)
        assert info["intervention"] and not np.allclose(info["executed_action"], bad)
        _, _, _, _, info = env.step(bad)  # the person keeps control for a few steps
        assert info["intervention"]
    finally:
        env.close()


def test_run_episode_is_the_loop_sim_eval_uses() -> None:
    robot = make_robot("lift", render=False)
    expert = make_expert("lift")
    seen = []
    try:
        out = run_episode(robot, lambda obs: expert.act(robot), seed=3, max_steps=80, reset_agent=expert.reset,
                          on_step=lambda obs, a, o: seen.append(o.steps))
        assert out.success and out.terminated and not out.truncated and seen == list(range(1, out.steps + 1))
        short = run_episode(robot, lambda obs: np.zeros(5), seed=3, max_steps=5)
        assert short.truncated and short.steps == 5 and not short.success
    finally:
        robot.close()
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env("lift", num_envs=0)
