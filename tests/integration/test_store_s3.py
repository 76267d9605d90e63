"""The store on s3:// through fsspec, against moto's S3 server started here on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from robot_learning.data.dataset import WindowDataset, split_episodes
from robot_learning.data.maintenance import merge, repair, validate
from robot_learning.data.stats import compute_stats
from robot_learning.data.store import EpisodeMeta, EpisodeStore, StoreError
from robot_learning.data.synthetic import episode_digest, write_episode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="robot-data")
    yield options
    server.stop()


@pytest.mark.integration
def test_s3_write_read_refresh_dataset(s3, tmp_path):
    uri = "s3://robot-data/lab/lift.zarr"
    writer_store = EpisodeStore.open(uri, mode="w", image_codec="jpeg", storage_options=s3)
    rng = np.random.default_rng(0)
    write_episode(writer_store, rng, 9, success=True, meta=EpisodeMeta(task="lift", source="teleop"))
    write_episode(writer_store, rng, 6, success=False, meta=EpisodeMeta(task="lift", source="policy"))

    reader = EpisodeStore.open(uri, mode="r", storage_options=s3)
    assert len(reader) == 2 and reader.image_codec == "jpeg"
    digests = [episode_digest(reader.read_episode(i)) for i in range(2)]
    write_episode(writer_store, rng, 5, success=True, meta=EpisodeMeta(task="lift", source="teleop"))
    assert len(reader) == 2
    reader.refresh()
    assert len(reader) == 3 and reader.episode(2).length == 5
    assert [episode_digest(reader.read_episode(i)) for i in range(2)] == digests

    # an uncommitted episode is invisible; discard trims it
    w = writer_store.begin_episode(EpisodeMeta(task="lift"))
    from robot_learning.data.synthetic import synthetic_step

    for t in range(4):
        w.append(synthetic_step(rng, t), {"step": float(t), "camera_front": float(t), "joint_pos": float(t),
                                          "joint_vel": float(t), "ee_pose": float(t), "gripper": float(t)})
    w._flush()
    reader.refresh()
    assert len(reader) == 3
    w.discard()
    assert validate(reader, deep=True).ok

    train, val = split_episodes(reader, val_fraction=0.34, seed=0, success=True)
    assert sorted(train + val) == [0, 2]
    ds = WindowDataset(uri, ["camera_front", "joint_pos"], n_obs_steps=2, horizon=4, n_action_steps=2,
                       episodes=train, storage_options=s3)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)))
    assert batch["obs"]["camera_front"].shape == (4, 2, 48, 64, 3)
    assert compute_stats(reader, ["joint_pos"])["joint_pos"].count == 20

    local = EpisodeStore.open(tmp_path / "copy.zarr", mode="w", image_codec="jpeg")
    assert merge([reader], local) == 3
    assert [episode_digest(local.read_episode(i)) for i in range(2)] == digests
    assert repair(writer_store) == []


@pytest.mark.integration
def test_s3_cli_and_errors(s3):
    uri = "s3://robot-data/cli.zarr"
    store = EpisodeStore.open(uri, mode="w", storage_options=s3)
    write_episode(store, np.random.default_rng(3), 4)
    opts = [f"--storage-option=endpoint_url={s3['endpoint_url']}", "--storage-option=key=testing",
            "--storage-option=secret=testing"]
    env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1")
    out = subprocess.run([sys.executable, "-m", "robot_learning.cli", "data", "info", uri, *opts],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "episodes   1, steps 4" in out.stdout
    with pytest.raises(StoreError, match="not an episode store"):
        EpisodeStore.open("s3://robot-data/nothing-here.zarr", mode="r", storage_options=s3)
