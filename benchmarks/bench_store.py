"""Episode store figures: image codecs, sustained writer speed vs real time, loader windows/s vs raw numpy.

Run: ``python benchmarks/bench_store.py`` (about two minutes). Frames are PyBullet renders (Panda,
table, tray, cube; 640x480, TinyRenderer) with Gaussian sensor noise (sigma 2) added, because a
noise-free render compresses unrealistically well.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import load_note, markdown_table, write_section  # noqa: E402

from robot_learning.data.dataset import WindowDataset  # noqa: E402
from robot_learning.data.store import EpisodeMeta, EpisodeStore  # noqa: E402
from robot_learning.data.synthetic import synthetic_step  # noqa: E402


def render_frames(n: int, width: int = 640, height: int = 480, seed: int = 0) -> list[np.ndarray]:
    """PyBullet renders from a slowly moving camera, plus sensor noise."""
    import pybullet as p
    import pybullet_data

    cid = p.connect(p.DIRECT)
    p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=cid)
    for urdf, pos in [("plane.urdf", [0, 0, 0]), ("table/table.urdf", [0.5, 0, 0]), ("cube_small.urdf", [0.5, 0.1, 0.66]),
                      ("tray/traybox.urdf", [0.6, -0.2, 0.63])]:
        p.loadURDF(urdf, pos, physicsClientId=cid)
    p.loadURDF("franka_panda/panda.urdf", [0, 0, 0.62], useFixedBase=True, physicsClientId=cid)
    rng = np.random.default_rng(seed)
    frames = []
    proj = p.computeProjectionMatrixFOV(60, width / height, 0.05, 5)
    for k in range(n):
        view = p.computeViewMatrix([1.3, 0.3 + 0.02 * k, 1.3], [0.5, 0, 0.65], [0, 0, 1])
        _, _, rgba, *_ = p.getCameraImage(width, height, view, proj, renderer=p.ER_TINY_RENDERER, physicsClientId=cid)
        rgb = np.asarray(rgba, np.uint8).reshape(height, width, 4)[..., :3].astype(np.float32)
        frames.append(np.clip(rgb + rng.normal(0, 2.0, rgb.shape), 0, 255).astype(np.uint8))
    p.disconnect(cid)
    return frames


def bench_codecs(frames: list[np.ndarray], tmp: Path) -> list[list[object]]:
    """Bytes/frame, write and read CPU ms/frame through zarr arrays chunked as the store does, PSNR."""
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    from robot_learning.data.codecs import JpegCodec

    candidates = [
        ("jpeg q90 (store `jpeg`, default)", {"serializer": JpegCodec(quality=90), "compressors": None}),
        ("jpeg q75", {"serializer": JpegCodec(quality=75), "compressors": None}),
        ("blosc zstd-1 (store `lossless`)", {"compressors": BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle", typesize=1)}),
        ("blosc lz4-1", {"compressors": BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle", typesize=1)}),
        ("zstd-3", {"compressors": ZstdCodec(level=3)}),
    ]
    stack = np.stack(frames)
    rows = []
    for i, (label, kw) in enumerate(candidates):
        path = tmp / f"codec{i}.zarr"
        arr = zarr.create_array(path, shape=stack.shape, chunks=(1, *stack.shape[1:]), dtype=np.uint8, fill_value=0, **kw)
        t0 = time.process_time()
        arr[:] = stack
        write_ms = (time.process_time() - t0) / len(stack) * 1e3
        stored = sum(f.stat().st_size for f in (path / "c").rglob("*") if f.is_file())
        t0 = time.process_time()
        decoded = [arr[j] for j in range(len(stack))]
        read_ms = (time.process_time() - t0) / len(stack) * 1e3
        err = float(np.mean((np.stack(decoded).astype(np.float64) - stack) ** 2))
        psnr = "lossless" if err == 0 else f"{10 * np.log10(255**2 / err):.1f} dB"
        rows.append([label, f"{stored / len(stack) / 1024:.0f} KiB", f"{stack.nbytes / stored:.1f}x",
                     f"{write_ms:.2f}", f"{read_ms:.2f}", psnr])
    return rows


def bench_writer(frames: list[np.ndarray], tmp: Path, seconds: float) -> list[list[object]]:
    """2 cameras 640x480 @ 30 Hz control steps + a 500 Hz joint stream, pinned to one core."""
    rows = []
    steps = int(seconds * 30)
    rng = np.random.default_rng(0)
    for codec in ("jpeg", "lossless"):
        store = EpisodeStore.open(tmp / f"writer_{codec}.zarr", mode="w", image_codec=codec)
        t0, c0 = time.perf_counter(), time.process_time()
        w = store.begin_episode(EpisodeMeta(task="bench", rates={"step": 30.0, "camera_front": 30.0,
                                                                 "camera_wrist": 30.0, "joint_states": 500.0}))
        hi_rate_t = 0.0
        for t in range(steps):
            tick = t / 30.0
            low = synthetic_step(rng, t, cameras=(), dof=7)
            low["camera_front"] = frames[t % len(frames)]
            low["camera_wrist"] = frames[(t + 3) % len(frames)]
            stamps = {"step": tick, "camera_front": tick - 0.012, "camera_wrist": tick - 0.015, "joint_pos": tick - 0.001,
                      "joint_vel": tick - 0.001, "ee_pose": tick - 0.002, "gripper": tick - 0.001}
            w.append(low, stamps)
            n_hi = int((tick + 1 / 30.0) * 500) - int(hi_rate_t * 500)
            hi_t = hi_rate_t + np.arange(n_hi) / 500.0
            w.append_stream("joint_states", rng.standard_normal((n_hi, 14)), hi_t)
            hi_rate_t += n_hi / 500.0
        w.commit(success=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        hi = store.read_stream(0, "joint_states")[0]
        size = sum(f.stat().st_size for f in (tmp / f"writer_{codec}.zarr").rglob("*") if f.is_file())
        rows.append([codec, f"{seconds:.0f} s ({steps} steps, {len(hi)} joint samples)", f"{cpu:.2f} s",
                     f"**{seconds / cpu:.1f}x**", f"{wall:.2f} s", f"{seconds / wall:.1f}x", f"{size / 2**20 / seconds:.1f} MiB/s"])
    return rows


def bench_loader(tmp: Path, episodes: int, length: int, samples: int) -> list[list[object]]:
    """Windows/s: WindowDataset (cached, uncached) vs numpy fancy-indexing from arrays in RAM."""
    import torch

    store = EpisodeStore.open(tmp / "loader.zarr", mode="w", image_codec="jpeg")
    rng = np.random.default_rng(0)
    for e in range(episodes):
        w = store.begin_episode(EpisodeMeta(task="bench"))
        for t in range(length):
            step = synthetic_step(rng, t + e, cameras=("front",), hw=(96, 96))
            w.append(step, {"step": t / 10, "camera_front": t / 10, "joint_pos": t / 10, "joint_vel": t / 10,
                            "ee_pose": t / 10, "gripper": t / 10})
        w.commit(success=True)
    kw = dict(obs_keys=["camera_front", "joint_pos"], n_obs_steps=2, horizon=16, n_action_steps=8)
    cached = WindowDataset(store, cache=True, **kw)
    uncached = WindowDataset(store, cache=False, **kw)
    order = np.random.default_rng(1).integers(0, len(cached), samples)
    batches = order[: samples // 64 * 64].reshape(-1, 64)
    # the raw limit: the same windows by numpy fancy indexing from arrays already in RAM, indices precomputed
    ram = {k: cached._ram[k] for k in ("camera_front", "joint_pos", "action")}
    obs_rows, act_rows = cached._rows[2], cached._rows[16]

    def rate(fn, items, windows_per_item: int = 1) -> float:
        """Windows per CPU-second (CPU time, so other users of this shared machine do not count)."""
        best = 0.0
        for _ in range(3):
            t0 = time.process_time()
            for i in items:
                fn(i)
            best = max(best, len(items) * windows_per_item / max(time.process_time() - t0, 1e-9))
        return best

    def raw(i: int) -> tuple:
        r = obs_rows[i]
        return ram["camera_front"][r], ram["joint_pos"][r], ram["action"][act_rows[i]]

    def raw_batch(idx: np.ndarray) -> tuple:
        r = obs_rows[idx]
        return ram["camera_front"][r], ram["joint_pos"][r], ram["action"][act_rows[idx]]

    torch.set_num_threads(1)
    singles = [int(i) for i in order]
    raw_rate, cached_rate = rate(raw, singles), rate(cached.__getitem__, singles)
    raw_b, cached_b = rate(raw_batch, list(batches), 64), rate(cached.__getitem__, list(batches), 64)
    uncached_rate = rate(uncached.__getitem__, singles[:1000])
    uncached_b = rate(uncached.__getitem__, list(batches[:15]), 64)
    assert cached[batches[0]]["action"].shape == (64, 16, 7)
    shape = f"obs 2x96x96x3 uint8 + 2x7, action 16x7; {len(cached)} windows in {episodes} episodes"
    return [["numpy fancy-index from RAM (raw limit)", f"{raw_rate:,.0f}", "1.00", f"{raw_b:,.0f}", "1.00", shape],
            ["WindowDataset cache=True", f"{cached_rate:,.0f}", f"{cached_rate / raw_rate:.2f}", f"{cached_b:,.0f}",
             f"{cached_b / raw_b:.2f}", "returns torch tensors"],
            ["WindowDataset cache=False (JPEG decode)", f"{uncached_rate:,.0f}", f"{uncached_rate / raw_rate:.3f}",
             f"{uncached_b:,.0f}", f"{uncached_b / raw_b:.3f}", "reads only the 2 obs frames per window"]]


def main() -> int:
    """Measure, print the tables and write the store section of benchmarks/README.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=12, help="rendered 640x480 frames")
    parser.add_argument("--writer-seconds", type=float, default=10.0, help="seconds of recording to write")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args()
    # one core: the writer target is stated for one core
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    renders = render_frames(args.frames)
    noise = np.random.default_rng(1)
    # 4 noise draws per render: 4x the frames without 4x the (slow) rendering
    frames = [np.clip(f.astype(np.int16) + noise.integers(-2, 3, f.shape), 0, 255).astype(np.uint8)
              for _ in range(4) for f in renders]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        codec_rows = bench_codecs(frames, tmp)
        writer_rows = bench_writer(frames, tmp, args.writer_seconds)
        loader_rows = bench_loader(tmp, episodes=20, length=100, samples=20000)
    body = "\n\n".join([
        f"Image codecs, 640x480 RGB, {len(frames)} frames, one frame per chunk, through zarr arrays (CPU ms per "
        "frame; write = encode + store, read = one frame per read):",
        markdown_table(["codec", "bytes/frame", "ratio", "write ms/frame", "read ms/frame", "PSNR"], codec_rows),
        "Sustained writer, 2 cameras 640x480 @ 30 Hz + 14-dof joint stream @ 500 Hz, one core (target >= 3x):",
        markdown_table(["image codec", "recording", "CPU time", "x real time (CPU)", "wall time", "x real time (wall)",
                        "disk"], writer_rows),
        "CPU time is what one dedicated core would need (the process is pinned to one core; CPU time "
        "counts every thread of it). Wall time also counts the time other users of this shared machine held "
        "that core.",
        "Training windows (n_obs_steps 2, horizon 16), random access, one core, windows per CPU-second "
        "(target cached >= 0.8x raw). Batched = `ds[indices]` (what `ds.loader()` uses), 64 windows per call:",
        markdown_table(["loader", "windows/s, one at a time", "x raw", "windows/s, batched", "x raw", "note"],
                       loader_rows),
        "Layout choice for 500 Hz joints: control steps (30 Hz here) store the latest joint sample per step "
        "with its own capture stamp; the raw 500 Hz samples go to a high-rate stream (`streams/<name>`) with "
        "per-sample stamps, so nothing is resampled or thrown away.",
        load_note(),
    ])
    if args.no_write:
        print(body)
    else:
        write_section("store", "Episode store: codecs, writer, loader", body, "python benchmarks/bench_store.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
