"""Replay over the episode store: n-step targets at terminal vs truncated ends, mixing, refresh, rewards."""

from __future__ import annotations

import numpy as np
import pytest

from robot_learning.data.store import EpisodeMeta, EpisodeStore
from robot_learning.rl import rewards as R
from robot_learning.rl.replay import EpisodeFilter, MixedReplay, ReplaySource, n_step_table, split_counts


def add(store: EpisodeStore, ep: int, rewards: list[float], terminal: bool, success: bool = True,
        source: str = "teleop", intervention: list[bool] | None = None) -> int:
    """An episode whose joint_pos is (ep, t) so that a sampled row names itself."""
    n = len(rewards)
    t = np.arange(n, dtype=np.float32)
    data = {"joint_pos": np.stack([np.full(n, ep, np.float32), t], 1), "action": np.stack([t, -t], 1),
            "reward": np.asarray(rewards, np.float32), "done": np.arange(n) == n - 1,
            "terminal": (np.arange(n) == n - 1) & terminal,
            "intervention": np.asarray(intervention if intervention is not None else [False] * n)}
    return store.add_episode(EpisodeMeta(task="lift", source=source, rates={"step": 10.0}), data,
                             {"step": 100.0 * ep + 0.1 * np.arange(n), "joint_pos": 100.0 * ep + 0.1 * np.arange(n)},
                             success=success)


@pytest.fixture
def store(tmp_path) -> EpisodeStore:
    s = EpisodeStore.open(str(tmp_path / "r.zarr"), mode="a", image_codec="lossless")
    add(s, 0, [1, 2, 3, 4, 5], terminal=True)
    add(s, 1, [1, 2, 3, 4, 5], terminal=False, success=False)
    return s


def _by_row(src: ReplaySource) -> dict[tuple[int, int], dict]:
    b = src.gather(np.arange(len(src)))
    out = {}
    for i in range(len(src)):
        ep, t = b["obs"]["joint_pos"][i, -1]
        out[int(ep), int(t)] = {k: (v[i] if not isinstance(v, dict) else {kk: vv[i] for kk, vv in v.items()})
                                for k, v in b.items()}
    return out


def test_n_step_targets_cut_at_a_terminal_end_and_bootstrap_from_the_last_obs_at_a_truncation(store) -> None:
    src = ReplaySource(store, ["joint_pos"], n_step=3, gamma=0.5, n_obs_steps=2)
    rows = _by_row(src)
    # terminal episode: all 5 steps are transitions
    assert sorted(t for e, t in rows if e == 0) == [0, 1, 2, 3, 4]
    r = rows[0, 0]
    assert r["reward"] == pytest.approx(1 + 0.5 * 2 + 0.25 * 3) and r["discount"] == pytest.approx(0.125)
    assert r["next_obs"]["joint_pos"][-1].tolist() == [0, 3] and not r["terminal"] and r["n_steps"] == 3
    r = rows[0, 3]  # window reaches the end: two rewards, no bootstrap
    assert r["reward"] == pytest.approx(4 + 0.5 * 5) and r["discount"] == 0 and r["terminal"] and r["n_steps"] == 2
    r = rows[0, 4]
    assert r["reward"] == pytest.approx(5) and r["discount"] == 0 and r["terminal"]
    # truncated episode: the last step has no stored successor, so it is not a transition
    assert sorted(t for e, t in rows if e == 1) == [0, 1, 2, 3]
    r = rows[1, 2]  # bootstraps from the last stored observation (t = 4) after 2 steps
    assert r["reward"] == pytest.approx(3 + 0.5 * 4) and r["discount"] == pytest.approx(0.25)
    assert r["next_obs"]["joint_pos"][-1].tolist() == [1, 4] and r["truncated"] and not r["terminal"]
    r = rows[1, 3]
    assert r["reward"] == pytest.approx(4) and r["discount"] == pytest.approx(0.5) and r["truncated"]
    assert not rows[1, 0]["truncated"] and rows[1, 0]["discount"] == pytest.approx(0.125)
    # histories are padded at an episode's start, never with the previous episode's rows
    assert rows[1, 0]["obs"]["joint_pos"].tolist() == [[1, 0], [1, 0]]
    assert rows[1, 1]["obs"]["joint_pos"].tolist() == [[1, 0], [1, 1]]
    assert rows[0, 2]["action"].tolist() == [2, -2]  # the executed action of step t
    # Monte-Carlo return-to-go (Cal-QL floor)
    assert rows[0, 3]["mc_return"] == pytest.approx(4 + 0.5 * 5)


def test_n_step_table_one_step_and_bad_n() -> None:
    tab = n_step_table(3, terminal=True, n=1, gamma=0.9, rewards=np.array([0, 0, 1], np.float32))
    assert tab["discount"].tolist() == pytest.approx([0.9, 0.9, 0.0]) and tab["next"].tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="n_step"):
        n_step_table(3, True, 0, 0.9, np.zeros(3))


def test_sources_mix_by_ratio_and_an_empty_source_gives_its_share_away(tmp_path) -> None:
    a = EpisodeStore.open(str(tmp_path / "a.zarr"), mode="a", image_codec="lossless")
    b = EpisodeStore.open(str(tmp_path / "b.zarr"), mode="a", image_codec="lossless")
    for i in range(3):
        add(a, i, [0.0] * 6, terminal=True)
        add(b, 10 + i, [0.0] * 6, terminal=True, source="policy")
    demo, online = ReplaySource(a, ["joint_pos"]), ReplaySource(b, ["joint_pos"])
    for ratios, want in [({"demo": 0.5, "online": 0.5}, (128, 128)), ({"demo": 0.25, "online": 0.75}, (64, 192))]:
        mix = MixedReplay({"demo": demo, "online": online}, ratios, seed=1)
        batch = mix.sample(256)
        assert tuple(int((batch["source"] == i).sum()) for i in range(2)) == want
        from_b = batch["obs"]["joint_pos"][:, -1, 0] >= 10
        assert from_b.tolist() == (batch["source"] == 1).tolist()  # every row comes from its source's store
    assert split_counts(7, [0.5, 0.5]).tolist() == [4, 3] and split_counts(5, [1, 0]).tolist() == [5, 0]
    empty = ReplaySource(b, ["joint_pos"], filter=EpisodeFilter(source="intervention"))
    mix = MixedReplay({"demo": demo, "interv": empty}, {"demo": 0.5, "interv": 0.5})
    with pytest.warns(UserWarning, match="'interv' is empty"):
        batch = mix.sample(32)
    assert (batch["source"] == 0).all() and len(batch["source"]) == 32
    with pytest.raises(ValueError, match="no transitions"):
        empty.sample_indices(4, np.random.default_rng(0))


def test_refresh_sees_newly_committed_episodes_and_filters_apply(tmp_path, store) -> None:
    reader = ReplaySource(str(store.uri), ["joint_pos"], filter=EpisodeFilter(source="teleop"))
    assert reader.n_episodes == 2 and len(reader) == 9
    add(store, 2, [0.0] * 4, terminal=True, source="policy")  # filtered out
    add(store, 3, [0.0] * 4, terminal=True, source="teleop")
    assert reader.n_episodes == 2  # nothing changes until refresh
    assert reader.refresh() == 1 and reader.n_episodes == 3 and len(reader) == 13
    assert reader.refresh() == 0
    eps = {int(e) for e in reader.gather(np.arange(len(reader)))["obs"]["joint_pos"][:, -1, 0]}
    assert eps == {0, 1, 3}
    only_success = ReplaySource(store, ["joint_pos"], filter=EpisodeFilter(success=True, predicate=lambda e: e.length > 4))
    assert only_success.episode_ids == [0]


def test_reward_labels_are_computed_not_stored(store) -> None:
    add(store, 2, [0.0] * 6, terminal=False, success=False, intervention=[False, False, True, True, False, True])
    info = store.episode(2)
    steps = store.read_episode(2, ["reward", "intervention"])
    assert R.intervention_reward(info, steps).tolist() == [0, -1, 0, 0, -1, 0]
    assert R.step_penalty(store.episode(0), {}).tolist() == [-1, -1, -1, -1, 0]
    assert R.step_penalty(info, {}).tolist() == [-1] * 6
    assert R.sparse_success(store.episode(0), {}).tolist() == [0, 0, 0, 0, 1]
    src = ReplaySource(store, ["joint_pos"], reward="intervention", filter=EpisodeFilter(predicate=lambda e: e.index == 2))
    assert sorted(src.gather(np.arange(len(src)))["reward"].tolist()) == [-1, -1, 0, 0, 0]
    np.testing.assert_array_equal(store.read_episode(2, ["reward"])["reward"], np.zeros(6))  # stored labels untouched
    with pytest.raises(ValueError, match="unknown reward labelling"):
        ReplaySource(store, ["joint_pos"], reward="dense")
    assert not R.end_is_terminal(info, steps) and R.end_is_terminal(store.episode(0), store.read_episode(0))


def test_cached_camera_features_equal_encoding_the_sampled_images(tmp_path) -> None:
    import torch

    from robot_learning.data.synthetic import write_episode
    from robot_learning.policies.base import PolicySpec
    from robot_learning.rl.features import ObsFeatures, feature_key
    from robot_learning.rl.replay import camera_features

    s = EpisodeStore.open(str(tmp_path / "img.zarr"), mode="a", image_codec="lossless")
    rng = np.random.default_rng(0)
    for _ in range(2):
        write_episode(s, rng, 6, cameras=("front",), hw=(16, 16))
    spec = PolicySpec(obs_shapes={"camera_front": (16, 16, 3), "joint_pos": (7,)}, action_dim=7)
    stats = {"joint_pos": {"min": [-2.0] * 7, "max": [2.0] * 7}, "action": {"min": [-3.0] * 7, "max": [3.0] * 7}}
    torch.manual_seed(0)
    enc = ObsFeatures.build(spec, {"width": 8, "keypoints": 4, "feature_dim": 8}, stats, frozen=True)
    with_images = ReplaySource(s, ["camera_front", "joint_pos"], reward="sparse_success")
    cached = ReplaySource(s, ["joint_pos"], reward="sparse_success",
                          derived={feature_key("camera_front"): camera_features(enc.encoder, "camera_front")})
    assert "camera_front" not in cached.gather(np.arange(3))["obs"]  # images are not kept in RAM
    idx = np.arange(len(with_images))
    a = enc(to_torch_obs(with_images.gather(idx)["next_obs"]))
    b = enc(to_torch_obs(cached.gather(idx)["next_obs"]))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert a.shape == (len(idx), enc.out_dim)


def to_torch_obs(obs: dict) -> dict:
    import torch

    return {k: torch.from_numpy(v) for k, v in obs.items()}


def test_a_nan_in_stored_data_is_named_at_load(tmp_path) -> None:
    s = EpisodeStore.open(str(tmp_path / "nan.zarr"), mode="a", image_codec="lossless", allow_nonfinite=("action",))
    add(s, 0, [0.0] * 4, terminal=True)
    n = 4
    data = {"joint_pos": np.zeros((n, 2), np.float32), "action": np.zeros((n, 2), np.float32),
            "reward": np.zeros(n, np.float32), "done": np.arange(n) == n - 1, "terminal": np.arange(n) == n - 1,
            "intervention": np.zeros(n, bool)}
    data["action"][2, 1] = np.nan
    s.add_episode(EpisodeMeta(task="lift", source="teleop", rates={"step": 10.0}), data,
                  {"step": 50.0 + 0.1 * np.arange(n), "joint_pos": 50.0 + 0.1 * np.arange(n)}, success=True)
    with pytest.raises(ValueError, match="'action' has NaN/inf in episode 1 at step 2"):
        ReplaySource(s, ["joint_pos"])


def test_planned_actions_relabel_demos_with_the_base_executing_its_chunks(store) -> None:
    from robot_learning.policies.base import Policy, PolicySpec
    from robot_learning.rl.replay import planned_actions

    class Echo(Policy):
        """Chunk action i = (newest t + i, oldest t): shows when it planned and from which history."""

        spec = PolicySpec(obs_shapes={"joint_pos": (2,)}, action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=3)

        def __init__(self) -> None:
            self.resets = 0

        def reset(self) -> None:
            self.resets += 1

        def predict_chunk(self, obs_history):
            t_new, t_old = obs_history["joint_pos"][-1, 1], obs_history["joint_pos"][0, 1]
            return np.stack([[t_new + i, t_old] for i in range(4)]).astype(np.float32)

    base = Echo()
    src = ReplaySource(store, ["joint_pos"], derived={"base_action": planned_actions(base)})
    assert base.resets == 2  # once per episode
    col = src._cols["base_action"].view()
    # episode 0 (5 steps): plans at t = 0 (history padded with t = 0) and t = 3 (history t = 2, 3)
    np.testing.assert_array_equal(col[:5], [[0, 0], [1, 0], [2, 0], [3, 2], [4, 2]])
    batch = src.gather(np.arange(len(src)))
    assert batch["obs"]["base_action"].shape == (len(src), 2, 2)


def test_planned_actions_apply_a_wrapper_bases_step_hook(store) -> None:
    """A base with its own per-step hook (here: adds the step's newest joint_pos) is relabelled as it executes."""
    from robot_learning.policies.base import Policy, PolicySpec
    from robot_learning.rl.replay import planned_actions

    class Hooked(Policy):
        spec = PolicySpec(obs_shapes={"joint_pos": (2,)}, action_dim=2, n_obs_steps=2, horizon=4, n_action_steps=3)

        def __init__(self) -> None:
            self.calls: list[tuple[int, float]] = []

        def predict_chunk(self, obs_history):
            return np.zeros((4, 2), np.float32)

        def step_action(self, obs_history, planned_action, step_in_chunk):
            assert obs_history["joint_pos"].shape == (2, 2)  # the step's own history
            self.calls.append((step_in_chunk, float(obs_history["joint_pos"][-1, 1])))
            return planned_action + 10.0 * obs_history["joint_pos"][-1]

    base = Hooked()
    plain = ReplaySource(store, ["joint_pos"], derived={"base_action": planned_actions(base, step_hook=False)})
    assert not base.calls and np.all(plain._cols["base_action"].view() == 0)
    src = ReplaySource(store, ["joint_pos"], derived={"base_action": planned_actions(base)})
    joints = src._cols["joint_pos"].view()
    np.testing.assert_allclose(src._cols["base_action"].view(), 10.0 * joints)
    assert [c[0] for c in base.calls[:5]] == [0, 1, 2, 0, 1]  # step_in_chunk restarts with each chunk
    assert [c[1] for c in base.calls[:5]] == list(joints[:5, 1])
