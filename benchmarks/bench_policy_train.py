"""Training results: scripted demos -> train diffusion and BC -> evaluate in sim, one table.

Each stage is a plain ``rlstack`` command (printed before it runs), so any row can be reproduced by
hand. Stages whose output already exists are skipped (demo store present, run finished, report
written), so the script can also collect runs that were started separately with the same commands.

    .venv/bin/python benchmarks/bench_policy_train.py --task lift --image-size 32
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RLSTACK = str(ROOT / ".venv" / "bin" / "rlstack")
POLICIES = {
    "diffusion": ["policy=diffusion", "policy.params.down_dims=[32,64,128]"],
    "bc": ["policy=bc"],
}


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _finished(out: Path, steps: int) -> bool:
    latest = out / "checkpoints" / "latest.pt"
    return latest.exists() and torch.load(latest, weights_only=True)["train_state"]["step"] >= steps


def _train_minutes(out: Path) -> float:
    """Training wall time of a run over all its invocations, from metrics.csv (steps / steps_per_s per row)."""
    import csv

    minutes, last_step = 0.0, 0
    with open(out / "metrics.csv") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            if step > last_step and row.get("steps_per_s"):
                minutes += (step - last_step) / float(row["steps_per_s"]) / 60
            last_step = step
    return minutes


def _sampler(run_cfg: Any, eval_cfg: Any) -> str:
    """The sampler an evaluation ran with (its override, else the checkpoint's configured one)."""
    params = run_cfg.policy.params
    if "sampler" not in params:
        return "-"
    name = eval_cfg.get("sampler") or params.sampler
    steps = eval_cfg.get("num_inference_steps") or params.num_inference_steps
    return f"{name}-{steps}"


def main() -> int:
    """Run (or collect) every stage and write the results table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="lift")
    parser.add_argument("--image-size", type=int, default=32, help="camera resolution for demos, training and eval")
    parser.add_argument("--demos", type=int, default=100)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--steps", nargs="+", type=int, default=[1500, 2400], help="training steps per policy")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--note", default="", help="extra sentence for the conditions paragraph")
    parser.add_argument("--collect", nargs="*", default=[], metavar="RUN_DIR",
                        help="also report these finished run folders (e.g. a run resumed with more steps)")
    args = parser.parse_args()
    from benchmarks._table import load_note, markdown_table, write_section
    from robot_learning.eval.report import EvalReport
    from robot_learning.stats import format_rate

    task_over = [f"image_size={args.image_size}"]
    store = ROOT / "data" / f"{args.task}{args.image_size}.zarr"
    if not store.exists():
        _run([RLSTACK, "sim", "demos", "--task", args.task, "--episodes", str(args.demos), "--out", str(store), *task_over])
    rows = []
    runs = [(name, steps, ROOT / "runs" / f"{args.task}{args.image_size}_{name}")
            for name, steps in zip(args.policies, args.steps, strict=False)]
    for folder in args.collect:
        ckpt = torch.load(Path(folder) / "checkpoints" / "latest.pt", weights_only=True)
        runs.append((ckpt["policy_type"], int(ckpt["train_state"]["step"]), Path(folder).resolve()))
    for name, steps, out in runs:
        if not _finished(out, steps):
            _run([RLSTACK, "train", *POLICIES[name], f"task={args.task}", f"task.image_size={args.image_size}",
                  "train=cpu_lift", f"train.steps={steps}", f"data.store={store}", f"out_dir={out}"])
        report_dir = out / f"eval_{args.task}_none"
        if not (report_dir / "report.json").exists():
            _run([RLSTACK, "eval", f"checkpoint={out / 'policy.pt'}", f"task={args.task}",
                  f"task.image_size={args.image_size}", f"episodes={args.eval_episodes}", f"procs={args.procs}",
                  "dr=none", f"out={report_dir}"])
        run_cfg = OmegaConf.load(out / "config.yaml")
        params = sum(v.numel() for v in torch.load(out / "policy.pt", weights_only=True)["state_dict"].values())
        # every evaluation of the run (eval_<task>_none, eval_<task>_none_ddpm100, ...): one row each
        for report_dir in sorted(out.glob(f"eval_{args.task}_none*")):
            report = EvalReport.from_json(report_dir / "report.json")
            rows.append([args.task, run_cfg.policy.type, out.name, f"{args.image_size} px x2 + proprio", args.demos,
                         steps, run_cfg.train.batch_size, f"{params / 1e6:.2f}", f"{_train_minutes(out):.0f}",
                         _sampler(run_cfg, OmegaConf.load(report_dir / "config.yaml")),
                         format_rate(report.successes, report.n_episodes, report.seeds), f"{report.mean_length:.1f}"])
            print(rows[-1], flush=True)
    body = markdown_table(
        ["task", "policy", "run", "observations", "demos", "train steps", "batch (last)", "params (M)",
         "train wall min", "sampler", "success (eval episodes, Wilson 95% CI, seeds)", "mean length"], rows,
    ) + (
        f"\n\nConditions: CPU only (no GPU); {load_note()} One torch thread per run, diffusion and BC trained side by side. "
        "Camera resolution reduced from the sim default (96 px) so that a run fits in under an hour here; "
        "evaluation seeds 100000.. are disjoint from the demo seeds 0..99. Wall time sums the logged "
        f"training intervals of every invocation of a run (resumed runs included), without data loading. {args.note} "
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )
    write_section(f"policy_train_{args.task}", f"Base policy training results: {args.task}", body,
                  f".venv/bin/python benchmarks/bench_policy_train.py --task {args.task} --image-size {args.image_size}"
                  + "".join(f" --collect {' '.join(args.collect)}" for _ in args.collect[:1]) + " [--note ...]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
