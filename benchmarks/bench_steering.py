"""Value-guided steering (V-GPS): success vs K, the random-choice control, Cal-QL vs IQL, chunk latency.

Part ``toy`` (minutes, CPU): the half-bad point-mass base of tests/integration/test_steering.py; the
critic is trained offline on 200 of the base's own episodes (failures kept) in a real store; every row
is evaluated on the same unseen seeds (paired). Part ``latency``: the lift base of the default sim
config (2 cameras 32x32, joint_pos, gripper) alone vs steered at each K (one batched ``sample_chunks``
+ one critic pass), p50/p95 per chunk. Results are cached under runs/steering/ (re-running resumes).

    .venv/bin/python benchmarks/bench_steering.py [--episodes 200] [--parts toy latency]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._table import load_note, markdown_table, write_section  # noqa: E402
from robot_learning.stats import wilson_interval  # noqa: E402

RUNS = ROOT / "runs" / "steering"
KS = (1, 5, 10, 20)


def _cached(name: str, fn):  # noqa: ANN001, ANN202 - tiny helper
    path = RUNS / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = fn()
    path.write_text(json.dumps(out))
    return out


def _row(name: str, wins: list[bool], base: list[bool] | None) -> list[object]:
    n, s = len(wins), int(sum(wins))
    lo, hi = wilson_interval(s, n)
    delta = "" if base is None else f"{100 * (s - sum(base)) / n:+.0f}"
    better = "" if base is None else f"{sum(w and not b for w, b in zip(wins, base, strict=True))}/" \
                                     f"{sum(b and not w for w, b in zip(wins, base, strict=True))}"
    return [name, f"{s}/{n}", f"{s / n:.2f}", f"{lo:.2f}-{hi:.2f}", delta, better]


def toy(episodes: int) -> str:
    """Success table of the toy setting."""
    import tests.integration.test_steering as T
    from robot_learning.rl.vgps import make_vgps

    seeds = range(5000, 5000 + episodes)
    results: dict[str, list[bool]] = {}
    results["base"] = _cached("toy_base", lambda: [T.rollout(T.HalfBadBase(), s)[0] for s in seeds])
    for algo in ("calql", "iql"):
        res = T.train_toy_critic(RUNS, algo=algo)
        for k in KS if algo == "calql" else (10,):
            results[f"base + V-GPS ({algo}) K={k}"] = _cached(
                f"toy_{algo}_k{k}", lambda k=k, res=res: [T.rollout(make_vgps(T.HalfBadBase(), res.critic, res.meta, k=k), s)[0]
                                                          for s in seeds])
        if algo == "calql":
            for k in (5, 10, 20):
                results[f"base + random of K={k}"] = _cached(
                    f"toy_random_k{k}", lambda k=k, res=res: [T.rollout(make_vgps(T.HalfBadBase(), res.critic, res.meta, k=k,
                                                                                  selection="random"), s)[0] for s in seeds])
    rows = [_row(n, w, None if n == "base" else results["base"]) for n, w in results.items()]
    return markdown_table(["policy", "successes", "rate", "Wilson 95 % CI", "Δ points vs base", "won/lost vs base (paired)"],
                          rows) + f"\n\nEval seeds {seeds.start}..{seeds.stop - 1} (critic data: seeds 0..199), same seeds for every row."


def latency(calls: int = 40) -> str:
    """p50/p95 per chunk of the lift base alone vs steered at each K."""
    import torch

    from robot_learning.policies.checkpoint import load_policy
    from robot_learning.rl.vgps import CriticNetConfig, SteeringCritic, make_vgps

    torch.set_num_threads(1)
    path = ROOT / "runs" / "finetune" / "lift_base" / "bc" / "policy.pt"
    base = load_policy(path)
    spec = base.spec
    rng = np.random.default_rng(0)
    obs = {k: (rng.integers(0, 255, (spec.n_obs_steps, *s), dtype=np.uint8) if len(s) == 3
               else rng.uniform(-1, 1, (spec.n_obs_steps, *s)).astype(np.float32)) for k, s in spec.obs_shapes.items()}
    stats = base.checkpoint()["normalizer"]
    net = CriticNetConfig()
    critic = SteeringCritic(spec, net, stats)
    meta = {"net": {"score": net.score, "encoder": net.encoder, "ensemble": net.ensemble, "tasks": []},
            "spec": spec.to_dict(), "task": "lift", "stats": stats}

    def timed(fn) -> tuple[float, float]:  # noqa: ANN001
        for _ in range(3):
            fn()
        ts = []
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            ts.append(1000 * (time.perf_counter() - t))
        return float(np.percentile(ts, 50)), float(np.percentile(ts, 95))

    b50, b95 = timed(lambda: base.predict_chunk(obs))
    rows = [["base alone", f"{b50:.1f}", f"{b95:.1f}", "1.00"]]
    import warnings

    for k in KS:
        pol = make_vgps(base, critic, meta, k=k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # this base is deterministic; the cost is what is measured here
            p50, p95 = timed(lambda pol=pol: pol.predict_chunk(obs))
        rows.append([f"steered K={k}", f"{p50:.1f}", f"{p95:.1f}", f"{p50 / b50:.2f}"])
    return markdown_table(["policy (lift BC base, 2 cameras 32x32)", "p50 ms/chunk", "p95 ms/chunk", "p50 vs base"], rows)


def main() -> None:
    """Run the parts and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--parts", nargs="*", default=["toy", "latency"])
    args = ap.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    import os

    load0 = os.getloadavg()[0]
    cmd = f"python benchmarks/bench_steering.py --episodes {args.episodes} --parts"
    if "toy" in args.parts:
        write_section("steering_toy", "Value-guided steering (V-GPS): success, toy half-bad base",
                      toy(args.episodes) + "\n\n" + load_note(load0), f"{cmd} toy")
    if "latency" in args.parts:
        write_section("steering_latency", "Value-guided steering (V-GPS): latency per chunk",
                      "CPU, 1 thread; untrained critic of the default size (cost only).\n\n" + latency() + "\n\n"
                      + load_note(load0), f"{cmd} latency")

if __name__ == "__main__":
    main()
