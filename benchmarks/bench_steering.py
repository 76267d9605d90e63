"""Value-guided steering (V-GPS): success vs K, the random-choice control, Cal-QL vs IQL, chunk latency.

Part ``toy`` (minutes, CPU): the half-bad point-mass base of tests/integration/test_steering.py; the
critic is trained offline on 200 of the base's own episodes (failures kept) in a real store; every row
is evaluated on the same unseen seeds (paired). Part ``latency``: the real lift bases (BC-GMM, diffusion;
2 cameras 32x32, joint_pos, gripper) alone vs steered at each K (one ``sample_chunks_with_features``
call + one critic pass), p50/p95 per chunk and the CPU-time breakdown. Part ``sim``: the real bases
under runs/bases/<task>/ -- mixed-quality data (``rlstack collect-mixed``), Cal-QL and IQL critics
(``rlstack train-critic``), every row through ``rlstack eval`` on the same seeds. Results are cached
under runs/steering/ (re-running resumes).

    .venv/bin/python benchmarks/bench_steering.py [--parts toy latency sim] [--task lift] [--bases bc_gmm diffusion]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

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


def _latency_rows(name: str, path: Path, rounds: int) -> list[list[object]]:
    """Interleaved timing of one real base alone vs steered at each K (one round = every variant once)."""
    import dataclasses
    import warnings

    import torch

    from robot_learning.policies.checkpoint import load_policy, obs_to_tensors
    from robot_learning.rl.vgps import CriticNetConfig, SteeringCritic, make_vgps

    base = load_policy(path)
    spec = base.spec
    stats = base.checkpoint()["normalizer"]
    critic = SteeringCritic.on_base(base, CriticNetConfig(score="chunk"), stats)  # the sim rows' critic size
    meta = {"net": dataclasses.asdict(critic.net_config), "spec": spec.to_dict(), "task": "lift", "stats": stats}
    steered = {k: make_vgps(base, critic, meta, k=k) for k in KS}
    assert all(p.shared_features for p in steered.values())
    rng = np.random.default_rng(0)
    model = base.model  # type: ignore[attr-defined]

    def obs() -> dict[str, np.ndarray]:  # two new frames per re-plan, as in sim (8 steps per chunk > 2 obs steps)
        return {k: (rng.integers(0, 255, (spec.n_obs_steps, *s), dtype=np.uint8) if len(s) == 3
                    else rng.uniform(-1, 1, (spec.n_obs_steps, *s)).astype(np.float32)) for k, s in spec.obs_shapes.items()}

    def encode(o: dict[str, np.ndarray]) -> None:
        with torch.inference_mode():
            model.encode_obs(obs_to_tensors(spec, o, base.device))  # type: ignore[attr-defined]

    variants: dict[str, object] = {"base": base.predict_chunk, "encode": encode}
    for k in KS:
        variants[f"K={k}"] = steered[k].predict_chunk
        variants[f"sample K={k}"] = lambda o, k=k: base.sample_chunks(o, k)
    wall: dict[str, list[float]] = {n: [] for n in variants}
    cpu: dict[str, list[float]] = {n: [] for n in variants}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(rounds + 3):
            o = obs()
            for n, fn in variants.items():
                base.reset()  # no frame-feature cache hits: at a real re-plan both history frames are new
                t, c = time.perf_counter(), time.thread_time()
                fn(o)  # type: ignore[operator]
                if r >= 3:  # warm-up rounds (inference graphs are built lazily)
                    wall[n].append(1000 * (time.perf_counter() - t))
                    cpu[n].append(1000 * (time.thread_time() - c))

    def p(n: str, q: float, d: dict[str, list[float]] = wall) -> float:
        return float(np.percentile(d[n], q))

    enc = p("encode", 50, cpu)
    rows: list[list[object]] = [[name, "base alone", f"{p('base', 50):.1f}", f"{p('base', 95):.1f}",
                                 f"{p('base', 50, cpu):.1f}", "1.00", "1.00", f"{enc:.1f}", "", ""]]
    for k in KS:
        n = f"K={k}"
        samp = p(f"sample K={k}", 50, cpu)
        rows.append([name, f"steered K={k}", f"{p(n, 50):.1f}", f"{p(n, 95):.1f}", f"{p(n, 50, cpu):.1f}",
                     f"{p(n, 50) / p('base', 50):.2f}", f"{p(n, 50, cpu) / p('base', 50, cpu):.2f}", f"{enc:.1f}",
                     f"{samp - enc:.1f}", f"{max(0.0, p(n, 50, cpu) - samp):.1f}"])
    return rows


def latency(bases: dict[str, Path], rounds: int = 60) -> str:
    """p50/p95 per chunk of each real base alone vs steered at each K, with the CPU-time breakdown."""
    import torch

    torch.set_num_threads(1)
    rows = [r for name, path in bases.items() if path.exists() for r in _latency_rows(name, path, rounds)]
    if not rows:
        return "No base checkpoint found (" + ", ".join(str(p) for p in bases.values()) + ")."
    header = ["base", "policy", "p50 ms/chunk", "p95 ms/chunk", "CPU p50 ms", "p50 vs base", "CPU p50 vs base",
              "encode obs (CPU ms)", "sample K chunks (CPU ms)", "critic (CPU ms)"]
    return markdown_table(header, rows) + (
        f"\n\n{rounds} re-plans per row, interleaved (every row once per round, fresh frames each round), one "
        "torch/onnxruntime thread, as `rlstack eval procs=1` runs. Encode, sample and critic are the CPU-time "
        "parts of a steered re-plan: the observation is encoded once (shared by the base and the critic), "
        "the K candidates are one batched base call, the critic one batched pass.")


# -- real sim rows -------------------------------------------------------------------------------------
QUALITIES = ("1.0", "0.7", "0.5", "0.3", "0.1")
CRITIC_ARGS = ["net.score=chunk", "n_step=8", "gamma=0.98", "steps=4000", "batch_size=256", "progress=false"]
CHECK_EPISODES = 0  # --check-episodes
COMMANDS: list[str] = []  # every rlstack command the sim part ran (or would run), for the README


def _rlstack(args: list[str], log: Path, done: Path, fresh: Path | None = None, run: bool = True) -> None:
    """Run one ``rlstack`` command (skipped when ``done`` exists or ``run`` is off), nice'd, one thread,
    output to ``log``."""
    import os
    import shutil
    import subprocess

    COMMANDS.append("rlstack " + " ".join(a if "[" not in a else f"'{a}'" for a in args))
    if done.exists() or not run:
        return
    if fresh is not None and fresh.exists():  # a store left by an interrupted collection: start it again
        shutil.rmtree(fresh)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "a") as f:
        code = subprocess.call(["nice", "-n", "10", sys.executable, "-m", "robot_learning.cli", *args], cwd=ROOT,
                               stdout=f, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise RuntimeError(f"rlstack {args[0]} failed (exit {code}); see {log}")


def _finished(ckpt: Path) -> bool:
    """True when ``ckpt`` exists and its training ran all its steps: ``policy.pt`` is rewritten at every
    checkpoint, so a run still in progress must not be picked up as the base."""
    if not ckpt.exists():
        return False
    from robot_learning.policies.checkpoint import read_checkpoint

    saved = read_checkpoint(ckpt)
    steps = (saved.get("config") or {}).get("train", {}).get("steps")
    return steps is None or int(saved.get("step", 0)) >= int(steps)


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _composite(critic_dir: Path, base: Path, out: Path, **settings: object) -> Path:
    """A steering composite from a trained critic (critic.pt) and the base file (referenced by hash)."""
    if out.exists():
        return out
    import torch

    from robot_learning.policies.checkpoint import load_policy
    from robot_learning.rl.vgps import build_critic, make_vgps

    saved = torch.load(critic_dir / "critic.pt", weights_only=True)
    critic = build_critic(saved["meta"])
    critic.load_state_dict(saved["state_dict"])
    make_vgps(load_policy(base), critic, saved["meta"], **settings).save(out, base_ref=base)
    return out


def _eval(ckpt: Path, out: Path, task: str, episodes: int, run: bool = True, seed: int = 100000) -> list[bool] | None:
    """Successes per seed (seeds ``seed``.. in order) from ``rlstack eval``; None when not (yet) evaluated."""
    _rlstack(["eval", f"checkpoint={_rel(ckpt)}", f"task={task}", "task.image_size=32", f"episodes={episodes}",
              f"seed={seed}", "procs=1", "videos=0", f"out={_rel(out)}"], out / "eval.log", out / "report.json",
             run=run and ckpt.exists())
    if not (out / "report.json").exists():
        return None
    rep = json.loads((out / "report.json").read_text())
    eps = sorted(rep["episodes"], key=lambda e: e["seed"])
    return [bool(e["success"]) for e in eps]


def _base_rows(task: str, name: str, base: Path, episodes: int, base_episodes: int, experts: Path,
               pool: Any, run: bool) -> str:
    """One base's table: the base eval runs alongside the critic's data and training, then every row at once."""
    d = RUNS / task / name
    rollouts = d / "rollouts.zarr"

    def prepare() -> None:
        _rlstack(["collect-mixed", "--out", _rel(rollouts), "--task", task, "--qualities", "--base", _rel(base),
                  "--base-episodes", str(base_episodes), "--seed", "300000", "--task-overrides", "image_size=32"],
                 d / "rollouts.log", rollouts / ".done", fresh=rollouts, run=run)
        if rollouts.exists():
            (rollouts / ".done").touch()
        for algo in ("calql", "iql"):
            _rlstack(["train-critic", f"base={_rel(base)}", f"data=[{_rel(experts)},{_rel(rollouts)}]", f"task={task}",
                      f"algo={algo}", *CRITIC_ARGS, f"out_dir={_rel(d / algo)}"], d / f"{algo}.log",
                     d / algo / "critic.pt", run=run)

    futures = {"base": pool.submit(_eval, base, d / "eval_base", task, episodes, run)}
    pool.submit(prepare).result()
    rows = [("V-GPS (Cal-QL) K=10", "calql", {"k": 10}), ("random of K=10 (control)", "calql",
                                                          {"k": 10, "selection": "random"})]
    rows += [(f"V-GPS (Cal-QL) K={k}", "calql", {"k": k}) for k in KS if k != 10]
    rows += [("V-GPS (IQL) K=10", "iql", {"k": 10})]
    for label, algo, settings in rows:
        tag = f"{algo}_k{settings['k']}" + ("_random" if settings.get("selection") else "")
        ckpt = d / f"vgps_{tag}.pt"
        COMMANDS.append(f"# {_rel(ckpt)}: {_rel(d / algo / 'critic.pt')} + {_rel(base)} with {settings} "
                        "(bench_steering.py: _composite)")
        if (d / algo / "critic.pt").exists():
            _composite(d / algo, base, ckpt, **settings)
        futures[label] = pool.submit(_eval, ckpt, d / f"eval_{tag}", task, episodes, run)
    results = {n: f.result() for n, f in futures.items()}
    if results["base"] is None:
        return f"**{name}** base ({_rel(base)}): not evaluated yet."
    check = _check_rows(task, name, base, episodes, results, pool, run) if CHECK_EPISODES else ""
    table = [_row(n, w, results["base"]) if n != "base" else _row(n, w, None)
             for n, w in results.items() if w is not None]
    missing = [n for n, w in results.items() if w is None]
    return (f"**{name}** base ({_rel(base)}):\n\n" + markdown_table(
        ["policy", "successes", "rate", "Wilson 95 % CI", "Δ points vs base", "won/lost vs base (paired)"], table)
        + (f"\n\nNot finished yet: {', '.join(missing)}." if missing else "") + check)


def _check_rows(task: str, name: str, base: Path, episodes: int, first: dict[str, list[bool] | None], pool: Any,
                run: bool) -> str:
    """Base, the control and Cal-QL K=10 on CHECK_EPISODES more unseen seeds, and pooled with the first ones."""
    d, seed = RUNS / task / name, 100000 + episodes
    ckpts = {"base": base, "V-GPS (Cal-QL) K=10": d / "vgps_calql_k10.pt",
             "random of K=10 (control)": d / "vgps_calql_k10_random.pt"}
    tags = {"base": "base", "V-GPS (Cal-QL) K=10": "calql_k10", "random of K=10 (control)": "calql_k10_random"}
    futures = {n: pool.submit(_eval, c, d / f"check_{tags[n]}", task, CHECK_EPISODES, run, seed) for n, c in ckpts.items()}
    more = {n: f.result() for n, f in futures.items()}
    if any(v is None for v in more.values()) or any(first.get(n) is None for n in more):
        return f"\n\nCheck on {CHECK_EPISODES} more seeds: not finished yet."
    pooled = {n: list(first[n]) + list(more[n]) for n in more}  # type: ignore[arg-type]
    header = ["policy", "successes", "rate", "Wilson 95 % CI", "Δ points vs base", "won/lost vs base (paired)"]
    return (f"\n\nCheck on {CHECK_EPISODES} more unseen seeds ({seed}..{seed + CHECK_EPISODES - 1}):\n\n"
            + markdown_table(header, [_row(n, w, None if n == "base" else more["base"]) for n, w in more.items()])
            + f"\n\nPooled ({episodes + CHECK_EPISODES} seeds):\n\n"
            + markdown_table(header, [_row(n, w, None if n == "base" else pooled["base"]) for n, w in pooled.items()]))


def sim(task: str, bases: dict[str, Path], episodes: int, base_episodes: int, jobs: int = 4, run: bool = True) -> str:
    """Rows per base: base, V-GPS (Cal-QL) K in KS, random of K=10, IQL K=10, all on the same seeds."""
    from concurrent.futures import ThreadPoolExecutor

    experts = RUNS / task / "experts.zarr"
    _rlstack(["collect-mixed", "--out", _rel(experts), "--task", task, "--qualities", *QUALITIES, "--episodes", "60",
              "--seed", "200000", "--task-overrides", "image_size=32"], RUNS / task / "experts.log", experts / ".done",
             fresh=experts, run=run)
    if experts.exists():
        (experts / ".done").touch()
    parts = []
    with ThreadPoolExecutor(jobs) as pool, ThreadPoolExecutor(len(bases) or 1) as outer:
        found = {n: b for n, b in bases.items() if _finished(b)}
        tables = {n: outer.submit(_base_rows, task, n, b, episodes, base_episodes, experts, pool, run)
                  for n, b in found.items()}
        for name, base in bases.items():
            parts.append(tables[name].result() if name in tables
                         else f"**{name}**: base checkpoint {_rel(base)} not found or still training.")
    return "\n\n".join(parts) + (
        f"\n\nEval: `rlstack eval` on seeds 100000..{100000 + episodes - 1} (unseen: experts 200000.., base rollouts "
        "300000..), the same seeds for every row. 'base' is the checkpoint as `rlstack eval` runs it (a BC mixture: "
        "its top mode's mean; diffusion: one sample); V-GPS K=1 executes one sampled candidate. Critic data: "
        f"scripted experts at qualities {', '.join(QUALITIES)} (60 episodes each, failures kept) + {base_episodes} "
        "rollouts of the base executing sampled candidates; critic on the "
        + ("frozen base encoder" if "net.features=own" not in CRITIC_ARGS else "its own encoder") + ", scoring "
        + ("the chunk's first action" if "net.score=first" in CRITIC_ARGS else "the executed chunk")
        + f" ({' '.join(CRITIC_ARGS)}).\n\nCommands:\n\n```\n" + "\n".join(dict.fromkeys(COMMANDS)) + "\n```")


def main() -> None:
    """Run the parts and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=200, help="toy eval episodes")
    ap.add_argument("--parts", nargs="*", default=["toy", "latency", "sim"])
    ap.add_argument("--task", default="lift", help="sim part: the task")
    ap.add_argument("--bases", nargs="*", default=["bc_gmm", "diffusion"],
                    help="sim/latency: base kinds under runs/bases/<task>/<kind>/policy.pt")
    ap.add_argument("--bases-dir", default=None,
                    help="sim: folder holding <kind>/policy.pt (default runs/bases/<task>; e.g. runs/bases/push200)")
    ap.add_argument("--sim-episodes", type=int, default=100)
    ap.add_argument("--base-episodes", type=int, default=150, help="base rollouts in the critic's data")
    ap.add_argument("--rounds", type=int, default=60, help="latency: timed re-plans per row")
    ap.add_argument("--jobs", type=int, default=4, help="sim: rlstack commands run at once")
    ap.add_argument("--no-run", action="store_true", help="sim: only tabulate what is already evaluated")
    ap.add_argument("--check-episodes", type=int, default=0,
                    help="sim: re-run base, the control and Cal-QL K=10 on this many more seeds, and pool them")
    ap.add_argument("--critic-steps", type=int, default=4000, help="sim: train-critic steps")
    ap.add_argument("--critic-args", nargs="*", default=[],
                    help="sim: extra train-critic overrides (e.g. net.features=own net.score=first)")
    ap.add_argument("--tag", default="", help="sim: a variant name, appended to the section (use with --out)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "steering"), help="where runs are cached (default runs/steering)")
    ap.add_argument("--no-write", action="store_true", help="print the tables, leave benchmarks/README.md alone")
    args = ap.parse_args()
    global RUNS, CHECK_EPISODES
    RUNS = Path(args.out).resolve()
    CHECK_EPISODES = args.check_episodes
    RUNS.mkdir(parents=True, exist_ok=True)
    for extra in (f"steps={args.critic_steps}", *args.critic_args):  # a default is replaced in place, a new key appended
        keys = [a.split("=", 1)[0] for a in CRITIC_ARGS]
        key = extra.split("=", 1)[0]
        if key in keys:
            CRITIC_ARGS[keys.index(key)] = extra
        else:
            CRITIC_ARGS.append(extra)
    write = (lambda name, title, body, command: print(body)) if args.no_write else write_section
    import os

    load0 = os.getloadavg()[0]
    cmd = "python benchmarks/bench_steering.py"
    if "toy" in args.parts:
        write("steering_toy", "Value-guided steering (V-GPS): success, toy half-bad base",
                      toy(args.episodes) + "\n\n" + load_note(load0), f"{cmd} --episodes {args.episodes} --parts toy")
    if "latency" in args.parts:
        bases = {b: ROOT / "runs" / "bases" / "lift" / b / "policy.pt" for b in args.bases}
        # one section per base set (as for the sim rows), so re-measuring one base leaves the others' rows alone
        write(f"steering_latency_{'_'.join(args.bases)}",
              f"Value-guided steering (V-GPS): latency per chunk, lift, {', '.join(args.bases)}",
                      latency(bases, args.rounds) + "\n\n" + load_note(load0),
                      f"{cmd} --parts latency --bases {' '.join(args.bases)} --rounds {args.rounds}")
    if "sim" in args.parts:
        bases_dir = Path(args.bases_dir) if args.bases_dir else ROOT / "runs" / "bases" / args.task
        bases = {b: bases_dir.resolve() / b / "policy.pt" for b in args.bases}
        # one section per task and base set, so a base measured on another day does not replace the others
        tag = f"_{args.tag}" if args.tag else ""
        write(f"steering_sim_{args.task}_{'_'.join(args.bases)}{tag}",
              f"Value-guided steering (V-GPS): {args.task}, {', '.join(args.bases)} base" + "s" * (len(args.bases) > 1)
              + (f" ({args.tag})" if args.tag else ""),
                      sim(args.task, bases, args.sim_episodes, args.base_episodes, args.jobs, not args.no_run) + "\n\n" + load_note(load0),
                      f"{cmd} --parts sim --task {args.task} --bases {' '.join(args.bases)} "
                      + (f"--bases-dir {args.bases_dir} " if args.bases_dir else "")
                      + f"--sim-episodes {args.sim_episodes} --base-episodes {args.base_episodes}"
                      + (f" --check-episodes {args.check_episodes}" if args.check_episodes else "")
                      + (f" --critic-steps {args.critic_steps}" if args.critic_steps != 4000 else "")
                      + (f" --critic-args {' '.join(args.critic_args)}" if args.critic_args else "")
                      + (f" --out {args.out}" if Path(args.out).resolve() != ROOT / "runs" / "steering" else "")
                      + (f" --tag {args.tag}" if args.tag else ""))


if __name__ == "__main__":
    main()
