"""Deployment parity rows for ``bench_deploy.py --parity``: direct eval vs the ROS 2 node (local child
process) vs the node with ``rlstack serve``, same seeds, plus the ablation (each fix reverted alone).

Every row is one fresh command (``rlstack eval`` / ``rlstack deploy``) whose report is kept under
``--out/<row>/`` (``report.json`` / ``deploy_report.json``), so a rerun skips rows already measured
and an interrupted run resumes. The 1-min load average is recorded at the start of every row.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RLSTACK = [sys.executable, "-m", "robot_learning.cli"]
DOMAIN_ID = 150 + os.getpid() % 80  # not the default domain 0 other graphs on this machine use

# how each labelled checkpoint was trained (printed with the table)
_DEMOS = ("`rlstack sim demos --task {t} --episodes 50 --quality 1.0 --out {t}.zarr image_size=32`, then "
          "`rlstack train policy={p} task={t} task.image_size=32 data.store={t}.zarr train.steps={n} "
          "train.batch_size={b}` (benchmarks/train_bases.sh)")
RECIPES = {
    "bc_lift": _DEMOS.format(t="lift", p="bc", n=3000, b=64),
    "bc_push": _DEMOS.format(t="push", p="bc", n=3000, b=64),
    "diffusion_lift": _DEMOS.format(t="lift", p="diffusion", n=4000, b=32),
    "diffusion10k_lift": _DEMOS.format(t="lift", p="diffusion", n=4000, b=32) + ", resumed to 10000 steps "
                         "(`train.steps=10000`)",
    "diffusion_push": _DEMOS.format(t="push", p="diffusion", n=4000, b=32),
}

# name -> (what is reverted, overrides that revert it); "all fixes" is the default configuration
ABLATION: dict[str, tuple[str, list[str]]] = {
    "all": ("none (defaults: all fixes)", []),
    "align_at_or_before": ("history slot = newest sample at or before the grid time",
                           ["deploy.history.align=at_or_before"]),
    "reference_newest": ("grid anchored at the newest stamp of any stream", ["deploy.history.reference=newest"]),
    "index_nearest": ("chunk action due at the nearest grid point (first action dropped)",
                      ["deploy.scheduler.index=nearest"]),
    "tick_free": ("control ticks on the node's own clock (not phase-locked)", ["deploy.tick_phase=free"]),
    "reset_legacy": ("episode reset while the sim runs (first observation thrown away)", ["reset_mode=legacy"]),
    "replan_early": ("re-plan one step early from an older observation", ["deploy.history.replan=early"]),
    "crossfade": ("crossfade blending over 3 ticks (the old default)", ["deploy.scheduler.blend=crossfade"]),
    "threads_default": ("policy child process on torch's default thread count (every core)",
                        ["deploy.policy.threads=0"]),
    "legacy": ("every fix reverted (the issue's setting)",
               ["deploy.history.align=at_or_before", "deploy.history.reference=newest",
                "deploy.scheduler.index=nearest", "deploy.tick_phase=free", "reset_mode=legacy",
                "deploy.history.replan=early", "deploy.scheduler.blend=crossfade"]),
}


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        out = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {out.returncode}); log {log}")


def _cached(path: Path, load_file: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    rep = json.loads(path.read_text())
    rep["load"] = float(load_file.read_text()) if load_file.exists() else float("nan")
    return rep


def direct_row(ckpt: str, task: list[str], episodes: int, seed: int, max_steps: int, out: Path) -> dict[str, Any]:
    """``rlstack eval`` on the seeds the node uses: successes, per-seed outcome, load."""
    d = out / "eval_direct"
    rep = _cached(d / "report.json", d / "load")
    if rep is None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "load").write_text(f"{os.getloadavg()[0]:.2f}")
        _run([*RLSTACK, "eval", f"checkpoint={ckpt}", *task, f"episodes={episodes}", f"seed={seed}",
              f"max_steps={max_steps}", "procs=1", f"out={d}", "videos=0"], out / "eval_direct.log", 3600)
        rep = _cached(d / "report.json", d / "load")
    per = {e["seed"]: bool(e["success"]) for e in rep["episodes"]}
    return {"k": sum(per.values()), "n": len(per), "per_seed": per, "load": rep["load"]}


def node_row(name: str, ckpt: str, task: list[str], episodes: int, seed: int, max_steps: int, out: Path,
             extra: list[str], serve: bool = False) -> dict[str, Any]:
    """``rlstack deploy`` (fresh sim_robot + policy node) on the same seeds; optionally against ``rlstack serve``."""
    d = out / f"abl_{name}"
    rep = _cached(d / "deploy_report.json", d / "load")
    if rep is None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "load").write_text(f"{os.getloadavg()[0]:.2f}")
        server = None
        source = [f"deploy.policy.checkpoint={ckpt}"]
        if serve:
            port = _free_port()
            server = subprocess.Popen([*RLSTACK, "serve", "--checkpoint", ckpt, "--port", str(port)], cwd=ROOT,
                                      stdout=(d / "serve.log").open("w"), stderr=subprocess.STDOUT)
            source = [f"deploy.policy.server=ws://127.0.0.1:{port}"]
        try:
            _run([*RLSTACK, "deploy", *task, *source, f"episodes={episodes}", f"robot.seed={seed}",
                  f"max_steps={max_steps}", f"log_dir={d}", "store=none", f"domain_id={DOMAIN_ID}", *extra], out / f"abl_{name}.log", 3600)
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
        rep = _cached(d / "deploy_report.json", d / "load")
    per = dict(zip(rep["seeds"], rep.get("per_episode_success") or _per_seed_from_log(out / f"abl_{name}.log"),
                   strict=False))
    diag = rep.get("diagnostics", {})
    return {"k": int(rep["successes"]), "n": int(rep["episodes"]), "per_seed": per, "load": rep["load"],
            "late": diag.get("late_dropped_actions"), "o2a": diag.get("obs_to_action_p50_ms"),
            "holds": diag.get("holds", {})}


def _per_seed_from_log(log: Path) -> list[bool]:
    import re

    line = next((ln for ln in log.read_text().splitlines() if ln.startswith("per episode")), "")
    return [m == "ok" for m in re.findall(r"seed -?\d+: (ok|fail)", line)]


def _load(value: float) -> str:
    return "not recorded" if value != value else f"{value:.1f}"  # NaN: a row measured before loads were kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parity_section(checkpoints: dict[str, str], episodes: int, seed: int, max_steps: int, out_root: Path,
                   serve: bool) -> str:
    """Run (or reuse) the direct and node rows of every checkpoint and return the parity table's markdown."""
    from benchmarks._table import load_note, markdown_table
    from robot_learning.stats import format_rate, wilson_interval

    load_before = os.getloadavg()[0]
    rows = []
    for label, ckpt in checkpoints.items():
        task = _task_overrides(label)
        out = out_root / label
        seeds = list(range(seed, seed + episodes))
        direct = direct_row(ckpt, task, episodes, seed, max_steps, out)
        lo, hi = wilson_interval(direct["k"], direct["n"])
        variants = [("node (child process)", "node", False)] + ([("node + `rlstack serve`", "serve", True)] if serve else [])
        rows.append([label, "direct `rlstack eval`", format_rate(direct["k"], direct["n"], seeds), "-", "-", "-",
                     _load(direct["load"])])
        for text, name, srv in variants:
            r = node_row(name, ckpt, task, episodes, seed, max_steps, out, [], serve=srv)
            agree = sum(r["per_seed"].get(s) == direct["per_seed"].get(s) for s in seeds)
            ok = lo <= r["k"] / r["n"] <= hi and r["k"] >= 0.9 * direct["k"]
            rows.append([label, text, format_rate(r["k"], r["n"], seeds), "yes" if ok else "**no**",
                         f"{agree}/{episodes}", f"{r['o2a']:.0f}" if r["o2a"] is not None else "-", _load(r["load"])])
        print(label, "done", time.strftime("%H:%M:%S"), flush=True)
    table = markdown_table(["checkpoint", "how", "success (Wilson 95% CI, seeds)", "within direct CI and >= 0.9x",
                            "same outcome per seed", "obs->first action p50, ms", "1-min load at start"], rows)
    recipes = " ".join(f"`{k}`: {RECIPES[k]}." for k in checkpoints if k in RECIPES)
    return (f"{table}\n\n{recipes}\n\nSame seeds {seed}-{seed + episodes - 1}, step limit {max_steps}, dr none, "
            "32 px cameras. Node rows: `rlstack deploy` with its defaults (sim_robot in real time on its own timer, "
            "policy node with the policy in a child process; `store=none` so only the policy is measured). "
            "obs->first action: capture stamp of an observation -> the first /action tick computed from it. "
            "'same outcome per seed': episodes whose success matches the direct row's on the same seed."
            f"{_cgroup_note()}\n\n"
            f"{load_note(load_before)}")


def ablation_section(label: str, ckpt: str, episodes: int, seed: int, max_steps: int, out_root: Path) -> str:
    """Each parity fix reverted alone on one checkpoint (node rows, same seeds): the ablation table's markdown."""
    from benchmarks._table import load_note, markdown_table
    from robot_learning.stats import format_rate

    load_before = os.getloadavg()[0]
    out = out_root / label / f"ablation_{episodes}"
    seeds = list(range(seed, seed + episodes))
    rows = []
    for name, (what, extra) in ABLATION.items():
        r = node_row(name, ckpt, _task_overrides(label), episodes, seed, max_steps, out, extra)
        rows.append([f"`{name}`", what, " ".join(f"`{e}`" for e in extra) or "-", format_rate(r["k"], r["n"], seeds),
                     str(r["late"]), str(r["holds"].get("stale_observation", 0)), _load(r["load"])])
        print(label, "ablation", name, "done", time.strftime("%H:%M:%S"), flush=True)
    table = markdown_table(["row", "reverted", "overrides", "node success (Wilson 95% CI, seeds)",
                            "late-dropped actions", "stale-observation holds", "1-min load at start"], rows)
    return (f"Ablation on `{label}` ({RECIPES.get(label, ckpt)}): each parity fix reverted alone, everything else at "
            f"the defaults; step limit {max_steps}, dr none.{_cgroup_note()}\n\n{table}\n\nLate-dropped actions and holds grow "
            "with the load (a starved child process misses the period), so compare them within similar loads.\n\n"
            f"{load_note(load_before)}")


def _cgroup_note() -> str:
    """Say so when this benchmark ran in its own cpu cgroup (a share of the cores reserved against other work)."""
    try:
        group = next(ln.split(":", 2)[2] for ln in Path("/proc/self/cgroup").read_text().splitlines()
                     if ln.split(":")[1] == "cpu")
        shares = Path(f"/sys/fs/cgroup/cpu{group}/cpu.shares").read_text().strip()
    except (OSError, StopIteration, IndexError):
        return ""
    if group in ("/", ""):
        return ""
    return (f" Every row ran in the cpu cgroup `{group}` with cpu.shares {shares} (default 1024), so that "
            "the other jobs sharing the 2 cores did not starve the real-time node and sim robot; load averages "
            "count those jobs too.")


def _task_overrides(label: str) -> list[str]:
    """Label <policy>_<task> -> the task overrides every row of that checkpoint uses."""
    return [f"task={label.rsplit('_', 1)[-1] if '_' in label else 'lift'}", "task.image_size=32"]
