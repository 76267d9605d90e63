"""Inference latency of one action chunk (encoder + sampler) on this CPU, per inference backend.

Policies are built at the default sim observation config (2 cameras 96x96, joint_pos + gripper,
2 observation steps, horizon 16, action dim 5) with the widths of ``configs/policy/*.yaml``; weights
are random (latency does not depend on their values). Each row times ``predict_chunk`` after warm-up
on a stream of fresh camera frames, in one of two patterns:

* ``all new``: every frame of every call is new (the deployed default: a chunk is re-planned every
  ``n_action_steps = 8`` control steps, so the two observation steps of consecutive calls never overlap);
* ``1 new/cam``: consecutive calls share a frame (re-planning every control step), so the per-frame
  feature cache encodes only the newest frame of each camera.

``build s`` is the one-off cost of the first call (export + compile of the graphs, from the weights).

    .venv/bin/python benchmarks/bench_policy.py [--repeats 50] [--threads 1,2] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDE = ["policy.params.down_dims=[64,128,256]"]


def _policy(policy_cfg: str, image_size: int, overrides: list[str]):
    from robot_learning.config import compose
    from robot_learning.policies import PolicySpec, build_model
    from robot_learning.policies.checkpoint import ModelPolicy

    cfg = compose("train", [f"policy={policy_cfg}", *overrides]).policy
    spec = PolicySpec(
        obs_shapes={"camera_front": (image_size, image_size, 3), "camera_wrist": (image_size, image_size, 3),
                    "joint_pos": (9,), "gripper": (1,)},
        action_dim=5, n_obs_steps=cfg.n_obs_steps, horizon=cfg.horizon, n_action_steps=cfg.n_action_steps,
    )
    stats = {"joint_pos": {"min": [-2.0] * 9, "max": [2.0] * 9}, "gripper": {"min": [0.0], "max": [0.08]},
             "action": {"min": [-1.0] * 5, "max": [1.0] * 5}}
    return ModelPolicy(build_model(cfg.type, cfg.params, spec, stats))


def _histories(spec, n_calls: int, shift: int) -> list[dict[str, np.ndarray]]:
    """Observation histories over a stream of random frames, each call ``shift`` frames after the last."""
    rng = np.random.default_rng(0)
    t = spec.n_obs_steps
    n_frames = (n_calls - 1) * shift + t
    stream = {k: (rng.integers(0, 255, (n_frames, *s), dtype=np.uint8) if len(s) == 3
                  else rng.normal(size=(n_frames, *s)).astype(np.float32)) for k, s in spec.obs_shapes.items()}
    return [{k: v[i * shift : i * shift + t] for k, v in stream.items()} for i in range(n_calls)]


def _time(policy, repeats: int, shift: int) -> tuple[float, float, float]:
    """(first-call seconds, p50 ms, p95 ms) of ``predict_chunk``."""
    warmup = 3
    obs = _histories(policy.spec, warmup + repeats + 1, shift)
    t0 = time.perf_counter()
    policy.predict_chunk(obs[0])
    build = time.perf_counter() - t0
    for o in obs[1 : warmup + 1]:
        policy.predict_chunk(o)
    times = []
    for o in obs[warmup + 1 :]:
        t0 = time.perf_counter()
        policy.predict_chunk(o)
        times.append((time.perf_counter() - t0) * 1e3)
    return build, float(np.percentile(times, 50)), float(np.percentile(times, 95))


def _rows_spec(quick: bool) -> list[tuple]:
    """(label, config, image size, overrides, backend, sampler, steps, shift) of every row."""
    rows = []
    for label, ov in (("diffusion, U-Net 32/64/128 (default)", []), ("diffusion, U-Net 64/128/256", WIDE)):
        for backend in ("eager", "torchscript", "onnxruntime"):
            for sampler, steps in (("ddim", 10), ("dpmsolver++", 10), ("ddpm", 100)):
                if backend == "torchscript" and sampler != "ddim":
                    continue  # torchscript is the fallback option; one sampler shows its level
                if quick and backend == "eager" and sampler == "ddpm":
                    continue
                rows.append((label, "diffusion", 96, ov, backend, sampler, steps, 2))
        rows.append((label, "diffusion", 96, ov, "onnxruntime", "ddim", 10, 1))
    # a distilled student has its teacher's network; latency does not depend on the (random) weights
    one_step = ["policy.params.teacher=''"]
    for backend in ("eager", "onnxruntime"):
        rows.append(("diffusion one-step (distilled), U-Net 32/64/128", "diffusion_onestep", 96, one_step, backend,
                     "onestep", 1, 2))
    rows.append(("diffusion, U-Net 32/64/128, 32 px (trained runs)", "diffusion", 32, [], "onnxruntime", "ddim", 10, 2))
    rows.append(("BC (MLP head)", "bc", 96, [], "eager", "-", 0, 2))
    rows.append(("BC (GMM head)", "bc_gmm", 96, [], "eager", "-", 0, 2))
    return rows


def main() -> int:
    """Time every configuration and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", default="2", help="torch (and onnxruntime) threads; a list such as 1,2 runs each")
    parser.add_argument("--quick", action="store_true", help="skip the eager DDPM-100 rows (slowest)")
    parser.add_argument("--no-write", action="store_true", help="print rows only, leave README.md alone")
    args = parser.parse_args()
    import torch

    from benchmarks._table import load_note, markdown_table, write_section

    load_before = os.getloadavg()[0]
    thread_counts = [int(n) for n in str(args.threads).split(",")]
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for label, cfg, size, overrides, backend, sampler, steps, shift in _rows_spec(args.quick):
            policy = _policy(cfg, size, overrides)
            if steps:
                policy.configure_inference(sampler=sampler, num_inference_steps=steps, inference_backend=backend)
            n_params = sum(p.numel() for p in policy.model.parameters()) / 1e6
            build, p50, p95 = _time(policy, args.repeats if steps <= 10 else max(10, args.repeats // 5), shift)
            rows.append([label, f"{size}x{size} x2", threads, backend if steps else "eager", sampler if steps else "-",
                         steps or "-", "all new" if shift == 2 else "1 new/cam", f"{n_params:.2f}",
                         f"{build:.1f}" if steps else "-", f"{p50:.1f}", f"{p95:.1f}", "yes" if p95 <= 30 else "no"])
            print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)
    body = markdown_table(
        ["policy", "cameras", "threads", "backend", "sampler", "steps", "frames per call", "params (M)", "build s",
         "p50 ms", "p95 ms", "p95 <= 30 ms"], rows
    ) + (
        "\n\nOne chunk = encoder (2 cameras x 2 observation steps) + sampler, batch 1; `threads` torch threads "
        "(onnxruntime: as many intra-op threads for batches larger than 2 chunks / 4 frames, one below that, with the "
        f"cameras encoded concurrently); {args.repeats} timed calls after 3 warm-up calls (DDPM-100: "
        "a fifth as many). Backend `onnxruntime` is what `inference_backend: auto` picks on CPU. "
        + load_note(load_before)
    )
    if not args.no_write:
        write_section("policy_latency", "Policy inference latency (one action chunk, CPU)", body,
                      " ".join([".venv/bin/python benchmarks/bench_policy.py", *sys.argv[1:]]))
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
