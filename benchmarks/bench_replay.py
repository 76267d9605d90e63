"""Replay sampling rate (transitions/s, 2 cameras) against the update rate of an RL learner.

A synthetic store with two 96 x 96 JPEG cameras (the sim default) plus proprioception is loaded by
``ReplaySource`` twice (a "demo" and an "online" source, sampled 50/50 as in RLPD); then

- sampling: ``MixedReplay.sample(batch)`` as torch tensors, obs + next obs histories of 2 frames;
- learner: one update of a 10-head LayerNorm critic (256 x 3) on encoder features; with the image
  encoder trained through the critic (images in the batch), and frozen with cached features;

and the table states how many transitions per second each learner consumes, so the ratio says
whether sampling can limit it (it must stay well above 1).

    .venv/bin/python benchmarks/bench_replay.py [--episodes 20 --length 100 --batch 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._table import load_note, markdown_table, write_section  # noqa: E402

CAMERAS = ("front", "wrist")


def _store(path: Path, episodes: int, length: int, size: int) -> None:
    from robot_learning.data.store import EpisodeMeta, EpisodeStore
    from robot_learning.data.synthetic import write_episode

    store = EpisodeStore.open(str(path), mode="w", image_codec="jpeg")
    rng = np.random.default_rng(0)
    for i in range(episodes):
        write_episode(store, rng, length, success=i % 2 == 0, cameras=CAMERAS, hw=(size, size),
                      meta=EpisodeMeta(task="lift", source="scripted", rates={"step": 10.0}))
    store.close()


def _rate(fn, seconds: float = 3.0, min_calls: int = 5) -> float:
    """Calls per second of ``fn`` over at least ``seconds`` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    """Measure and write the table into benchmarks/README.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    from robot_learning.policies.base import PolicySpec
    from robot_learning.rl.critics import CriticConfig, CriticEnsemble, td_loss
    from robot_learning.rl.features import ObsFeatures, feature_key
    from robot_learning.rl.replay import MixedReplay, ReplaySource, camera_features

    cams = [f"camera_{c}" for c in CAMERAS]
    keys = [*cams, "joint_pos", "gripper"]
    spec = PolicySpec(obs_shapes={**{c: (args.size, args.size, 3) for c in cams}, "joint_pos": (7,), "gripper": ()},
                      action_dim=7)
    stats = {"joint_pos": {"min": [-2.0] * 7, "max": [2.0] * 7}, "gripper": {"min": [0.0], "max": [1.0]},
             "action": {"min": [-3.0] * 7, "max": [3.0] * 7}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "replay.zarr"
        _store(path, args.episodes, args.length, args.size)
        t0 = time.perf_counter()
        demo = ReplaySource(str(path), keys, n_step=3, reward="sparse_success", name="demo")
        online = ReplaySource(str(path), keys, n_step=3, reward="sparse_success", name="online")
        load_s = (time.perf_counter() - t0) / 2
        steps = args.episodes * args.length
        mix = MixedReplay({"demo": demo, "online": online}, {"demo": 0.5, "online": 0.5}, seed=0)
        sample_rate = _rate(lambda: mix.sample(args.batch)) * args.batch

        torch.manual_seed(0)
        enc_cfg = {"width": 16, "keypoints": 32, "feature_dim": 64}
        trained = ObsFeatures.build(spec, enc_cfg, stats)
        frozen = ObsFeatures.build(spec, enc_cfg, stats, frozen=True)
        derived = {feature_key(c): camera_features(frozen.encoder, c) for c in cams}
        t0 = time.perf_counter()
        cached_src = ReplaySource(str(path), ["joint_pos", "gripper"], n_step=3, reward="sparse_success",
                                  derived=derived)
        cache_s = time.perf_counter() - t0
        cached = MixedReplay({"a": cached_src, "b": cached_src}, {"a": 0.5, "b": 0.5}, seed=0)
        cached_rate = _rate(lambda: cached.sample(args.batch)) * args.batch

        def learner(features: ObsFeatures, replay: MixedReplay):
            critic = CriticEnsemble(features.out_dim, 7, CriticConfig())
            params = [*critic.parameters(), *(q for q in features.parameters() if q.requires_grad)]
            opt = torch.optim.Adam(params, lr=1e-4)
            batch = replay.sample(args.batch)

            def update() -> None:
                f = features(batch["obs"])
                target = batch["reward"] + batch["discount"] * 0.0
                loss = td_loss(critic, f, batch["action"], target)
                opt.zero_grad()
                loss.backward()
                opt.step()

            return _rate(update, seconds=4.0, min_calls=3)

        trained_updates = learner(trained, mix)
        frozen_updates = learner(frozen, cached)

    mb = steps * len(cams) * args.size * args.size * 3 / 2**20
    rows.append(["2 cameras (images in RAM)", f"{load_s:.1f} s ({mb:.0f} MiB)", f"{sample_rate:,.0f}",
                 f"{trained_updates:.3g}", f"{trained_updates * args.batch:,.0f}",
                 f"{sample_rate / (trained_updates * args.batch):.0f}x"])
    rows.append(["cached frozen features", f"{cache_s:.1f} s (encoding included)", f"{cached_rate:,.0f}",
                 f"{frozen_updates:.3g}", f"{frozen_updates * args.batch:,.0f}",
                 f"{cached_rate / (frozen_updates * args.batch):.0f}x"])
    body = (
        f"Store: {args.episodes} episodes x {args.length} steps, two {args.size}x{args.size} JPEG cameras + "
        f"joint_pos + gripper; batch {args.batch} (50/50 from two sources), obs and next-obs histories of 2 "
        f"frames, 3-step returns. Learner: 10-head LayerNorm critic 256x3, encoder width 16 / 64 features "
        f"per camera, torch threads {args.threads}.\n\n"
        + markdown_table(["replay", "load", "sampled transitions/s", "learner updates/s",
                          "transitions/s the learner uses", "sampling headroom"], rows)
        + f"\n\nSampling runs at least {min(sample_rate / (trained_updates * args.batch), cached_rate / (frozen_updates * args.batch)):.0f}x "
        "faster than the learner consumes transitions in both modes, so it does not limit learner updates; the "
        "critic update (and, with images, the encoder's backward pass) is the cost. Cached features make the "
        "update itself faster at the price of encoding every stored frame once at load.\n\n"
        + load_note(load_before)
    )
    write_section("replay", "Replay sampling vs learner update rate", body,
                  f"python benchmarks/bench_replay.py --episodes {args.episodes} --length {args.length} "
                  f"--batch {args.batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
