"""WindowDataset, split_episodes and compute_stats on a real store on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robot_learning.data.dataset import WindowDataset, split_episodes
from robot_learning.data.stats import KeyStats, compute_stats
from robot_learning.data.store import EpisodeMeta, EpisodeStore
from robot_learning.data.synthetic import write_episode
from tests.unit.test_sampler import reference_window

LENGTHS = [9, 3, 14, 6]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "s.zarr"
    s = EpisodeStore.open(path, mode="w", image_codec="lossless")
    rng = np.random.default_rng(0)
    for i, n in enumerate(LENGTHS):
        write_episode(s, rng, n, success=i % 2 == 0,
                      meta=EpisodeMeta(task="lift" if i < 3 else "push", source="teleop" if i else "policy"),
                      hw=(16, 20))
    return EpisodeStore.open(path, mode="r")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_obs=st.integers(1, 4), horizon=st.integers(1, 10), n_act=st.integers(1, 10), cache=st.booleans(),
       cam_h=st.integers(1, 4))
def test_windows_equal_reference(store, n_obs, horizon, n_act, cache, cam_h):
    n_obs, n_act, cam_h = min(n_obs, horizon), min(n_act, horizon), min(cam_h, horizon)
    ds = WindowDataset(store, ["camera_front", "joint_pos"], n_obs_steps=n_obs, horizon=horizon,
                       n_action_steps=n_act, cache=cache, key_horizons={"camera_front": cam_h})
    episodes = {i: store.read_episode(i, ["camera_front", "joint_pos", "action"]) for i in range(len(store))}
    expected = sum(max(0, n - horizon + n_obs + n_act - 1) for n in LENGTHS)
    assert len(ds) == expected
    for i in range(0, len(ds), 3):
        ep_id, start = ds.window(i)
        ep = episodes[ep_id]
        item = ds[i]
        assert item["action"].dtype == torch.float32 and item["action"].shape == (horizon, 7)
        assert np.array_equal(item["action"].numpy(), reference_window(ep["action"], start, horizon))
        assert np.array_equal(item["obs"]["joint_pos"].numpy(), reference_window(ep["joint_pos"], start, horizon)[:n_obs])
        cam = item["obs"]["camera_front"]
        assert cam.dtype == torch.uint8 and cam.shape == (cam_h, 16, 20, 3)
        assert np.array_equal(cam.numpy(), reference_window(ep["camera_front"], start, horizon)[:cam_h])


def test_split_and_filters(store):
    train, val = split_episodes(store, val_fraction=0.25, seed=3)
    assert sorted(train + val) == [0, 1, 2, 3] and len(val) == 1
    assert split_episodes(store, val_fraction=0.25, seed=3) == (train, val)
    assert split_episodes(store, 0.5, seed=0, success=True) in (([0], [2]), ([2], [0]))
    with pytest.raises(ValueError, match="no episode .* matches success=None, source=intervention"):
        split_episodes(store, source="intervention")
    ds = WindowDataset(store, ["joint_pos"], horizon=4, n_obs_steps=2, n_action_steps=2, task="push")
    assert ds.episode_ids == [3]
    ds = WindowDataset(store, ["joint_pos"], horizon=4, n_obs_steps=2, n_action_steps=2, episodes=val)
    assert ds.episode_ids == val
    with pytest.raises(ValueError, match="no episode"):
        WindowDataset(store, ["joint_pos"], source="intervention")
    with pytest.raises(ValueError, match="key 'camera_side' is not in store"):
        WindowDataset(store, ["camera_side"])
    with pytest.raises(ValueError, match=r"episodes \[9\] are not in"):
        WindowDataset(store, ["joint_pos"], episodes=[9])


def test_dataloader_workers(store):
    ds = WindowDataset(store.uri, ["camera_front", "joint_pos"], n_obs_steps=2, horizon=4, n_action_steps=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    batches = list(loader)
    assert sum(len(b["action"]) for b in batches) == len(ds)
    first = batches[0]
    assert first["obs"]["camera_front"].shape == (5, 2, 16, 20, 3)
    assert torch.equal(first["action"][0], ds[0]["action"])


def test_stats(store):
    stats = compute_stats(store, ["joint_pos", "camera_front", "reward"])
    joint = np.concatenate([store.read_episode(i, ["joint_pos"])["joint_pos"] for i in range(len(store))])
    s = stats["joint_pos"]
    assert s.mean.dtype == np.float32 and s.mean.shape == (7,)
    assert np.allclose(s.mean, joint.mean(0), atol=1e-6) and np.allclose(s.std, joint.std(0), atol=1e-6)
    assert np.allclose(s.min, joint.min(0)) and np.allclose(s.q99, np.quantile(joint, 0.99, axis=0), atol=1e-6)
    assert np.all(s.q01 <= s.q99) and s.count == sum(LENGTHS)
    assert stats["camera_front"].mean.shape == (3,) and 0 <= stats["camera_front"].min.min()
    back = KeyStats.from_dict(s.to_dict())
    assert all(np.array_equal(getattr(back, k), getattr(s, k)) for k in ("min", "max", "mean", "std", "q01", "q99"))
    only_first = compute_stats(store, ["joint_pos"], episodes=[0])["joint_pos"]
    assert only_first.count == LENGTHS[0]
    with pytest.raises(ValueError, match="missing field"):
        KeyStats.from_dict({"min": [0]})


def test_batched_indexing_and_loader(store):
    for cache in (True, False):
        ds = WindowDataset(store, ["camera_front", "joint_pos"], n_obs_steps=2, horizon=5, n_action_steps=3, cache=cache)
        idx = [0, 3, len(ds) - 1, 3]
        batch = ds[idx]
        assert batch["obs"]["camera_front"].shape == (4, 2, 16, 20, 3) and batch["action"].shape == (4, 5, 7)
        for b, i in enumerate(idx):
            single = ds[i]
            assert torch.equal(batch["action"][b], single["action"])
            assert torch.equal(batch["obs"]["camera_front"][b], single["obs"]["camera_front"])
            assert torch.equal(batch["obs"]["joint_pos"][b], single["obs"]["joint_pos"])
    batches = list(ds.loader(batch_size=8, shuffle=True, seed=1))
    assert sum(len(b["action"]) for b in batches) == len(ds)
    again = list(ds.loader(batch_size=8, shuffle=True, seed=1))
    assert all(torch.equal(a["action"], b["action"]) for a, b in zip(batches, again, strict=True))
