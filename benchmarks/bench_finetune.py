"""Residual RL fine-tuning: learning curves of the runs under runs/finetune/ and the per-step cost.

Reads each run folder's ``eval.csv`` (written by ``rlstack finetune``; runs are long and resumable,
start or continue them with the ``command.sh`` in the folder), and measures the per-step cost the
residual adds to inference (``ResidualPolicy.step_action``, ms) at the run's config. Folders with an
``eval100/report.json`` (``rlstack eval`` of the base, of a run's final composite, or of a baseline,
100 episodes on unseen seeds; the ``eval100.sh`` next to it says how) form the final-evaluation table;
``eval100_<tag>/`` with its ``eval100_<tag>.sh`` (e.g. ``_best``: ``policy_best.pt``, ``_80k``: a snapshot)
add a row each, named ``<run> (<tag>)``.
Writes the ``finetune`` section of benchmarks/README.md and copies each run's curve to benchmarks/figures/.

    python benchmarks/bench_finetune.py [--runs runs/finetune] [--steps 300]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import load_note, markdown_table, write_section  # noqa: E402

FIGURES = Path(__file__).resolve().parent / "figures"


def first_reaching(rows: list[dict[str, str]], level: float) -> str:
    """Env steps (and wall-clock) of the first evaluation at or above ``level``, or '-'."""
    for r in rows:
        if float(r["rate"]) >= level:
            return f"{int(r['env_steps'])} ({float(r['wall_s']) / 60:.0f} min)"
    return "not reached"


def curve_area(rows: list[dict[str, str]]) -> str:
    """Mean success over the curve from the base on (trapezoids over env steps): sample efficiency where final rates tie."""
    steps = np.array([float(r["env_steps"]) for r in rows])
    rates = np.array([float(r["rate"]) for r in rows])
    if len(rows) < 2 or steps[-1] <= steps[0]:
        return "-"
    return f"{np.trapezoid(rates, steps) / (steps[-1] - steps[0]):.2f} to {int(steps[-1]) // 1000}k"


def step_cost_ms(run: Path, steps: int) -> tuple[float, float, float]:
    """(median ms per ``step_action`` call, median ms per base ``predict_chunk``, the residual's action_scale)."""
    from robot_learning.policies.checkpoint import load_policy

    policy = load_policy(run / "policy.pt")
    spec = policy.spec
    rng = np.random.default_rng(0)
    hist = {k: (rng.integers(0, 255, (spec.n_obs_steps, *s), dtype=np.uint8) if len(s) == 3
                else rng.standard_normal((spec.n_obs_steps, *s)).astype(np.float32)) for k, s in spec.obs_shapes.items()}
    planned = np.zeros(spec.action_dim, np.float32)
    hook, chunk = [], []
    for _ in range(steps):
        t = time.perf_counter()
        policy.step_action(hist, planned, 0)
        hook.append(time.perf_counter() - t)
    for _ in range(max(10, steps // 10)):
        t = time.perf_counter()
        policy.predict_chunk(hist)
        chunk.append(time.perf_counter() - t)
    return 1e3 * float(np.median(hook)), 1e3 * float(np.median(chunk)), float(policy.config.action_scale)


def final_rows(root: Path) -> list[list[str]]:
    """One row per ``*/eval100/report.json`` and ``*/eval100_<tag>/report.json`` under ``root``."""
    import json

    from robot_learning.stats import wilson_interval

    rows = []
    for path in sorted(root.glob("*/eval100*/report.json")):
        d = json.loads(path.read_text())
        tag = path.parent.name.removeprefix("eval100").removeprefix("_")
        name = path.parent.parent.name + (f" ({tag})" if tag else "")
        k, n = int(d["successes"]), int(d["n_episodes"])
        lo, hi = wilson_interval(k, n)
        seeds = d.get("seeds") or []
        cmd = path.parent.parent / f"{path.parent.name}.sh"
        agent = str(d.get("agent", ""))  # "checkpoint <path> (device ...)"
        ckpt = agent.split()[1] if agent.startswith("checkpoint ") else agent
        rows.append([name, f"`{ckpt}`", f"{k}/{n}", f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]",
                     f"{min(seeds)}..{max(seeds)}" if seeds else "?", str(cmd) if cmd.exists() else "-"])
    return rows


def final_commands(root: Path) -> str:
    """Every ``*/eval100*.sh`` under ``root`` verbatim (runs/ is not in git: the section must say how to redo each row)."""
    scripts = sorted(root.glob("*/eval100*.sh"))
    return "".join(f"\n\n`{p}`:\n\n```\n{p.read_text().strip()}\n```" for p in scripts)


def main() -> None:
    """Tabulate every run folder with an eval.csv."""
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/finetune")
    parser.add_argument("--steps", type=int, default=300, help="step_action calls timed per run")
    parser.add_argument("--section", default="finetune",
                        help="README section to write (runs of another day into their own section keep the others)")
    parser.add_argument("--title", default="", help="added to the section title")
    args = parser.parse_args()
    rows, notes = [], []
    for run in sorted(p.parent for p in Path(args.runs).glob("*/eval.csv")):
        evals = list(csv.DictReader(open(run / "eval.csv")))
        if not evals:
            continue
        base, last = evals[0], evals[-1]
        best = max(evals, key=lambda r: float(r["rate"]))
        hook_ms, chunk_ms, scale = step_cost_ms(run, args.steps) if (run / "policy.pt").exists() else (float("nan"),) * 3
        rows.append([run.name, f"{base['successes']}/{base['n']} [{float(base['ci_low']):.2f}, {float(base['ci_high']):.2f}]",
                     f"{last['successes']}/{last['n']} [{float(last['ci_low']):.2f}, {float(last['ci_high']):.2f}]",
                     f"{float(best['rate']):.2f} @ {best['env_steps']}", last["env_steps"],
                     f"{float(last['wall_s']) / 60:.0f}", first_reaching(evals, 0.9), first_reaching(evals, 0.95),
                     curve_area(evals),
                     f"{float(last['residual_mean_abs']):.3f} ({float(last['residual_mean_abs']) / scale:.0%} of bound)",
                     f"{hook_ms:.2f}", f"{chunk_ms:.1f}"])
        if (run / "curve.png").exists():
            FIGURES.mkdir(exist_ok=True)
            shutil.copy(run / "curve.png", FIGURES / f"finetune_{run.name}.png")
            notes.append(f"![{run.name}](figures/finetune_{run.name}.png)")
        cmd = run / "command.sh"
        if cmd.exists():
            notes.append(f"`{run.name}` ({run / 'command.sh'}):\n\n```\n{cmd.read_text().strip()}\n```")
    header = ["run", "base only (k/n, Wilson 95 %)", "latest eval", "best rate @ env steps", "train env steps",
              "train wall min", "to 90 %", "to 95 %", "curve mean", "mean abs residual (normalized)", "step_action ms",
              "base chunk ms"]
    body = markdown_table(header, rows) if rows else "_No run with an eval.csv under runs/finetune yet._"
    final = final_rows(Path(args.runs))
    if final:
        body += ("\n\nFinal evaluation (`rlstack eval`, 100 episodes on seeds no run trained or was evaluated on):\n\n"
                 + markdown_table(["run", "checkpoint", "successes", "rate [Wilson 95 %]", "seeds", "command"], final)
                 + final_commands(Path(args.runs)))
    body += ("\n\nLearning-curve evaluation: 50 fixed unseen seeds (`eval_seed` ..), no exploration; the first row "
             "of each run's eval.csv (env steps 0) is the base itself (zero-initialised residual). `train env steps` "
             "counts training episodes only (evaluation episodes are extra); `train wall min` is the training loop's "
             "time (collection + updates, evaluation excluded). `curve mean`: the area under the success curve from the "
             "base to the latest evaluation divided by its env-step span (1.00: perfect from the start), which orders "
             "runs that end at the same rate by how early they got there. Mean abs residual: per action dimension over the latest "
             "evaluation's steps (normalized units). `step_action ms`: the residual's per-executed-step cost on one "
             "thread (frozen base encoder on the newest frame + MLP); `base chunk ms`: one base inference.\n\n"
             + "\n\n".join(notes) + "\n\n" + load_note())
    title = "Residual RL fine-tuning (ResFiT-style) in sim" + (f" ({args.title})" if args.title else "")
    cmd = "python benchmarks/bench_finetune.py" + (f" --runs {args.runs}" if args.runs != "runs/finetune" else "")
    cmd += f" --section {args.section}" if args.section != "finetune" else ""
    write_section(args.section, title, body, cmd + (f" --title '{args.title}'" if args.title else ""))


if __name__ == "__main__":
    main()
