"""Sim benchmark: control steps/s (headless, 2x96 px cameras, 2 processes) and expert success per task.

Usage: ``python benchmarks/bench_sim.py [--parts speed experts dr] [--episodes 100] [--dr-episodes 50]``

Sections of benchmarks/README.md: ``sim`` (speed and expert success without randomization) and
``sim_dr`` (the clean expert under the randomization presets).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._table import load_note, markdown_table, write_section  # noqa: E402
from robot_learning.eval.sim_eval import evaluate  # noqa: E402
from robot_learning.stats import format_rate  # noqa: E402
from sim import TASKS  # noqa: E402
from sim.bench import control_rate, parallel_rate  # noqa: E402
from sim.experts import ExpertAgentFactory  # noqa: E402


def main() -> int:
    """Measure, print, and write the ``sim`` section of benchmarks/README.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=100, help="expert episodes per task and quality (default 100)")
    ap.add_argument("--steps", type=int, default=300, help="control steps per speed measurement (default 300)")
    ap.add_argument("--qualities", type=float, nargs="+", default=[1.0, 0.6, 0.3], help="expert quality levels")
    ap.add_argument("--procs", type=int, default=2, help="processes for the expert evaluation (default 2)")
    ap.add_argument("--parts", nargs="+", choices=["speed", "experts", "dr"], default=["speed", "experts", "dr"],
                    help="what to measure (default all)")
    ap.add_argument("--dr-episodes", type=int, default=50, help="episodes per task and preset for 'dr' (default 50)")
    args = ap.parse_args()
    if "speed" in args.parts or "experts" in args.parts:
        speed_and_experts(args)
    if "dr" in args.parts:
        experts_under_dr(args)
    return 0


def experts_under_dr(args: argparse.Namespace) -> None:
    """Clean-expert success under each randomization preset (section ``sim_dr``)."""
    rows = []
    for task in TASKS:
        for dr in ("light", "heavy", "real"):
            rep = evaluate(ExpertAgentFactory(task, 1.0, seed=0), task=task, n_episodes=args.dr_episodes, seed=1000,
                           n_procs=args.procs, dr=dr, robot_kwargs={"render": False})
            rows.append([task, dr, format_rate(rep.successes, rep.n_episodes, rep.seeds), f"{rep.mean_length:.1f}"])
            print(rows[-1], flush=True)
    body = (
        f"Clean scripted expert (quality 1.0) under the randomization presets, {args.dr_episodes} episodes per row "
        f"(10 Hz, headless, so the visual parts of the presets do not matter here; dynamics and latency do: "
        f"the expert reads noise-free privileged state, and moves more gently when the "
        f"preset adds action latency).\n\n"
        + markdown_table(["task", "preset", "success", "mean length (steps)"], rows)
    )
    write_section("sim_dr", "PyBullet sim: expert success under domain randomization", body,
                  "python benchmarks/bench_sim.py --parts dr")


def speed_and_experts(args: argparse.Namespace) -> None:
    """Control rates and expert success per quality (section ``sim``)."""

    load = os.getloadavg()[0]
    speed_rows = []
    for hz in (10.0, 20.0) if "speed" in args.parts else ():
        headless = {"render": False, "control_hz": hz}
        cams = {"render": True, "cameras": ("front", "wrist"), "image_size": 96, "control_hz": hz}
        speed_rows.append([f"{hz:g} Hz", "1 process, headless", f"{control_rate('lift', args.steps, **headless):.0f}"])
        speed_rows.append([f"{hz:g} Hz", "1 process, 2x96x96 cameras", f"{control_rate('lift', args.steps, **cams):.0f}"])
        speed_rows.append([f"{hz:g} Hz", "2 processes, headless (total)", f"{parallel_rate(2, 'lift', args.steps, **headless):.0f}"])
        speed_rows.append([f"{hz:g} Hz", "2 processes, 2x96x96 cameras (total)", f"{parallel_rate(2, 'lift', args.steps, **cams):.0f}"])
        print(speed_rows[-4:], flush=True)

    success_rows = []
    for task in TASKS if "experts" in args.parts else ():
        for q in args.qualities:
            t0 = time.perf_counter()
            rep = evaluate(ExpertAgentFactory(task, q, seed=0), task=task, n_episodes=args.episodes, seed=0,
                           n_procs=args.procs, robot_kwargs={"render": False})
            extra = "; ".join(f"{k} {v:.2f}" for k, v in rep.metric_means().items() if "coverage" in k)
            success_rows.append([task, f"{q:g}", format_rate(rep.successes, rep.n_episodes, rep.seeds),
                                 f"{rep.mean_length:.1f}", extra or "-", f"{time.perf_counter() - t0:.0f}"])
            print(success_rows[-1], flush=True)

    body = (
        f"Control steps/s of the lift task driven by random actions (observation read every step; physics 240 Hz; "
        f"ER_TINY_RENDERER with the low-poly Panda). {load_note(load)}\n\n"
        + markdown_table(["control rate", "setting", "control steps/s"], speed_rows)
        + f"\n\nScripted-expert success at 10 Hz, {args.episodes} episodes per row (seeds 0-{args.episodes - 1}, "
        f"dr none, headless; Wilson 95 % CI). Quality 1.0 is the clean expert; lower quality adds action noise, "
        f"hesitation and one botched attempt in some episodes. push_t success = coverage >= 0.85.\n\n"
        + markdown_table(["task", "quality", "success", "mean length (steps)", "push_t coverage", "wall s"], success_rows)
    )
    write_section("sim", "PyBullet sim: speed and expert success", body, "python benchmarks/bench_sim.py --parts speed experts")


if __name__ == "__main__":
    sys.exit(main())
