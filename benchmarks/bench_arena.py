"""Arena validation: does the Bradley-Terry leaderboard recover policies of known strength?

Ground truth: 200 direct sim episodes of every policy from the same seeds: the push-task scripted expert
at several qualities (``rlstack sim eval --task push --episodes 200 --seed 100000 --quality Q --report
<truth>/qQ.json``) and learned checkpoints (``rlstack eval checkpoint=... episodes=200 procs=1``, its
report.json copied to ``<truth>/<name>.json``; the recipe is in TRUTH_NOTE). A simulated comparison draws
one start seed and takes both policies' recorded episodes from that seed (matched start states); the
simulated evaluator scores progress (100 for a success, minus a speed term, 0 for a failure) with
noise, a position bias towards A and lazy ties, and votes. The fit is compared with the true success rates (Kendall tau, Spearman, Pearson, MMRV) as a
function of the number of comparisons, for random (uniform) and active pairing, and how many
comparisons each run needs to reach Kendall tau >= 0.9 and MMRV <= 2 % for good. Two policy sets: all
the given policies, and the separable subset (from the best down, each policy kept only if an exact
paired test on the shared seeds separates it from the last one kept), because some pairs of the full set
are as close as the 200-episode truth can measure (a ranking cannot be scored on an order the truth
does not know); the full set also reports Kendall tau over the truth-ordered pairs only. ``--e2e`` repeats one
run through the real server over loopback (sessions + votes over HTTP), ``--load`` runs concurrent
evaluators against PostgreSQL.

    .venv/bin/python benchmarks/bench_arena.py --e2e --load      # writes the table into benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, pearsonr, spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robot_learning.arena.ranking import Comparison, fit  # noqa: E402
from robot_learning.arena.scheduler import choose_pair, pair_weights  # noqa: E402

BUDGETS = (50, 100, 200, 300, 400)  # rows of the curve table
STEP = 10  # metrics every STEP comparisons
HORIZON = 400
REFIT_EVERY = 5  # the scheduler refits every 5 votes here (the server refits for every session)
TAU_TARGET, MMRV_TARGET = 0.9, 0.02
DEFAULT_POLICIES = ("q1.0", "q0.5", "q0.45", "q0.4", "q0.35", "q0.3", "q0.2", "q0.1", "q0.0", "bc-push-1500", "bc-push-400")
TRUTH_NOTE = (
    "Ground truth: 200 direct sim episodes per policy from the same seeds 100000-100199 (push task, 120 steps). "
    "Experts: `rlstack sim eval --task push --episodes 200 --seed 100000 --quality Q --procs 1 --videos 0 "
    "--report runs/arena_truth/push/qQ.json 'cameras=[]'` (the expert reads the privileged state; no rendering). Learned checkpoints (BC, 32 px cameras, trained on 30 quality-1.0 "
    "demos: `rlstack sim demos --task push --episodes 30 --quality 1.0 --out runs/arena/push.zarr image_size=32`, "
    "then `rlstack train policy=bc task=push task.image_size=32 data.store=runs/arena/push.zarr train.steps=S "
    "train.batch_size=64 out_dir=runs/arena/bc_push` (S = 1500; S = 400 into runs/arena/bc_push_400), and "
    "`rlstack eval checkpoint=<out_dir>/policy.pt task=push task.image_size=32 episodes=200 procs=1 "
    "seed=100000 videos=0`, report copied to runs/arena_truth/push/bc-push-S.json), all under `nice -n 10 OMP_NUM_THREADS=1`. "
    "The simulated evaluator judges the two recorded episodes of one shared seed (matched start states) with "
    "progress noise sd 10, +5 position bias for A and 15 % lazy ties; the pair weights are recomputed "
    "every 5 votes (the server does for every new session). These runs use the recorded per-seed outcomes (the direct path: no rollouts at vote "
    "time); `rlstack arena evaluate` runs every slot through the ROS 2 policy node. "
    "Plot: `benchmarks/arena_ranking.png`.")


def load_truth(folder: Path, stems: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Names, true success rates, per-seed success (P, S) and episode lengths (P, S) of each policy.

    ``<stem>.json`` is a sim eval report (``rlstack sim eval --report`` for the experts, ``rlstack eval``'s
    report.json for the learned checkpoints); every report must hold the same seeds (matched start states).
    """
    names, rates, succ, length, seeds = [], [], [], [], None
    for stem in stems:
        path = folder / f"{stem}.json"
        if not path.exists():
            raise SystemExit(f"bench_arena: no ground-truth report {path} (see the module docstring)")
        d = json.loads(path.read_text())
        eps = sorted(d["episodes"], key=lambda e: e["seed"])
        these = [e["seed"] for e in eps]
        if seeds is not None and these != seeds:
            raise SystemExit(f"bench_arena: {path} has seeds {these[0]}..{these[-1]} ({len(these)}), the others "
                             f"{seeds[0]}..{seeds[-1]} ({len(seeds)}): the comparisons need matched start states")
        seeds = these
        names.append(f"expert-push-{stem}" if stem.startswith("q") else stem)
        rates.append(d["success_rate"])
        succ.append([e["success"] for e in eps])
        length.append([e["length"] for e in eps])
    return names, np.array(rates), np.array(succ, bool), np.array(length, float)


class SimEvaluator:
    """Noisy, position-biased, sometimes lazy judge of two recorded episodes from the same seed."""

    def __init__(self, succ: np.ndarray, length: np.ndarray, max_steps: int, rng: np.random.Generator,
                 noise: float = 10.0, bias: float = 5.0, lazy: float = 0.15) -> None:
        self.succ, self.length, self.max_steps, self.rng = succ, length, max_steps, rng
        self.noise, self.bias, self.lazy = noise, bias, lazy

    def progress(self, p: int, seed: int) -> float:
        """Perceived progress of policy p's episode on seed index ``seed``."""
        true = 100.0 - 20.0 * self.length[p, seed] / self.max_steps if self.succ[p, seed] else 10.0
        return float(np.clip(true + self.rng.normal(0, self.noise), 0, 100))

    def judge(self, a: int, b: int) -> Comparison:
        """One vote on (A=a, B=b)."""
        seed = int(self.rng.integers(self.succ.shape[1]))
        pa, pb = self.progress(a, seed), self.progress(b, seed)
        diff = pa + self.bias - pb
        if pa < 20 and pb < 20:
            outcome = "both_bad"
        elif abs(diff) < 5 or (abs(diff) < 20 and self.rng.random() < self.lazy):
            outcome = "tie"
        else:
            outcome = "A" if diff > 0 else "B"
        return Comparison(a, b, outcome, "push", pa, pb)


def mmrv(truth: np.ndarray, score: np.ndarray, counted: np.ndarray | None = None) -> float:
    """Mean maximum rank violation (SIMPLER): per policy the largest true-rate gap it is mis-ordered by
    (``counted``: a (P, P) mask of the pairs that count; default all)."""
    n = len(truth)
    worst = np.zeros(n)
    for i in range(n):
        for j in range(n):
            if counted is not None and not counted[i, j]:
                continue
            if (truth[i] < truth[j]) != (score[i] < score[j]) and truth[i] != truth[j]:
                worst[i] = max(worst[i], abs(truth[i] - truth[j]))
    return float(worst.mean())


def metrics(truth: np.ndarray, score: np.ndarray, separated: np.ndarray | None = None) -> dict[str, float]:
    """Agreement of the fitted scores with the truth (``separated``: the (P, P) mask of the pairs the truth
    itself orders, for Kendall tau over those pairs only)."""
    out = {"kendall": float(kendalltau(truth, score).statistic), "spearman": float(spearmanr(truth, score).statistic),
           "pearson": float(pearsonr(truth, score).statistic), "mmrv": mmrv(truth, score)}
    if separated is not None:
        agree = np.sign(truth[:, None] - truth[None, :]) * np.sign(score[:, None] - score[None, :])
        pairs = np.triu(separated, 1)
        out["kendall_sep"] = float(agree[pairs].mean()) if pairs.any() else float("nan")
        out["mmrv_sep"] = mmrv(truth, score, separated)
    return out


def separated_pairs(succ: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """(P, P) mask: the truth orders i and j (exact paired test on the shared seeds, McNemar, p < alpha)."""
    from scipy.stats import binomtest

    n = len(succ)
    out = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(i + 1, n):
            n10, n01 = int(np.sum(succ[i] & ~succ[j])), int(np.sum(~succ[i] & succ[j]))
            out[i, j] = out[j, i] = n10 + n01 > 0 and binomtest(n10, n10 + n01).pvalue < alpha
    return out


def separable_subset(truth: np.ndarray, separated: np.ndarray) -> list[int]:
    """Policies kept from the best down, each only if the truth separates it from the last one kept: a set
    whose true order is known (the full set has pairs that 200 episodes cannot order either)."""
    keep: list[int] = []
    for i in np.argsort(-truth, kind="stable"):
        if not keep or separated[keep[-1], i]:
            keep.append(int(i))
    return sorted(keep)


def run_once(truth: np.ndarray, ev: SimEvaluator, strategy: str, horizon: int, rng: np.random.Generator,
             refit_every: int = REFIT_EVERY, separated: np.ndarray | None = None) -> dict[int, dict[str, float]]:
    """One arena run; metrics every ``STEP`` comparisons up to ``horizon`` (weights refit every ``refit_every``)."""
    ids = list(range(len(truth)))
    comps: list[Comparison] = []
    out = {}
    weights = pair_weights(ids, comps, strategy)
    while len(comps) < horizon:
        if len(comps) % refit_every == 0:
            weights = pair_weights(ids, comps, strategy)
        a, b, _ = choose_pair(weights, rng)
        comps.append(ev.judge(a, b))
        if len(comps) % STEP == 0:
            out[len(comps)] = metrics(truth, fit(comps, ids).theta, separated)
    return out


def reached(by_n: dict[int, dict[str, float]]) -> int | None:
    """Comparisons after which the targets (Kendall tau >= 0.9, MMRV <= 2 %) hold at every later check."""
    ok = [n for n, m in by_n.items() if m["kendall"] >= TAU_TARGET and m["mmrv"] <= MMRV_TARGET]
    ns = sorted(by_n)
    for n in ns:
        if all(k in ok for k in ns if k >= n):
            return n
    return None


def simulate(truth: np.ndarray, succ: np.ndarray, length: np.ndarray, repeats: int,
             strategies: tuple[str, ...] = ("uniform", "active"), separated: np.ndarray | None = None) -> dict:
    """Per strategy: the mean curve (every STEP comparisons) and every run's comparisons-to-target."""
    res: dict = {}
    for strategy in strategies:
        runs = []
        for r in range(repeats):
            rng = np.random.default_rng(1000 + r)
            runs.append(run_once(truth, SimEvaluator(succ, length, 120, rng), strategy, HORIZON, rng,
                                  separated=separated))
        ns = sorted(runs[0])
        res[strategy] = {"curve": {n: {k: float(np.mean([run[n][k] for run in runs])) for k in runs[0][n]} for n in ns},
                         "needed": [reached(run) for run in runs]}
    return res


def needed_row(strategy: str, needed: list[int | None]) -> str:
    """Table row: comparisons to reach the targets over the runs (a run that never does counts as > HORIZON)."""
    got = np.array([n for n in needed if n is not None], float)
    within = sum(n is not None and n <= 300 for n in needed)
    if len(got) == 0:
        return f"| {strategy} | {len(needed)} | > {HORIZON} | - | - | 0 / {len(needed)} |"
    ranked = np.sort(np.array([np.inf if n is None else n for n in needed], float))
    median = float(np.median(ranked))
    median_text = f"> {HORIZON}" if not np.isfinite(median) else f"{median:.0f}"
    reached = f"{len(got)} of {len(needed)} runs" if len(got) < len(needed) else "all runs"
    return (f"| {strategy} | {len(needed)} | {median_text} | {got.mean():.0f} ({reached}) | "
            f"{got.min():.0f}-{got.max():.0f} | {within} / {len(needed)} |")


def e2e(truth: np.ndarray, succ: np.ndarray, length: np.ndarray, names: list[str], db_url: str, n: int,
        evaluators: int) -> dict:
    """``n`` sessions + votes through the real server (uvicorn, loopback) by ``evaluators`` concurrent clients."""
    import httpx

    from robot_learning.arena.models import Vote
    from robot_learning.arena.services import ArenaSettings  # noqa: I001
    from tests.integration.test_arena_api import LiveArena

    arena = LiveArena(ArenaSettings(db_url=db_url, health_check=False, n_boot=0, seed=0, scheduler="active",
                                    rate_limit_per_min=100_000))
    lat: list[float] = []
    try:
        with arena.client(arena.admin) as c:
            c.post("/api/robots", json={"name": "sim", "obs_shapes": {"privileged_state": [30]}, "action_dim": 5})
            for k, name in enumerate(names):
                c.post("/api/policies", json={"name": name, "endpoint": f"ws://127.0.0.1:9/{k}",
                                              "obs_shapes": {"privileged_state": [30]}, "action_dim": 5, "check": False})
            ids = {p["name"]: p["id"] for p in c.get("/api/policies").json()}
        index = {ids[name]: k for k, name in enumerate(names)}
        tokens = [arena.evaluator(f"sim-{k}") for k in range(evaluators)]

        def worker(w: int) -> int:
            rng = np.random.default_rng(w)
            ev = SimEvaluator(succ, length, 120, rng)
            done = 0
            with httpx.Client(base_url=arena.url, headers={"Authorization": f"Bearer {tokens[w]}"}, timeout=120) as h:
                for _ in range(w, n, evaluators):
                    t0 = time.perf_counter()
                    sess = h.post("/api/sessions", json={"robot": "sim", "task": "push"}).json()
                    lat.append(time.perf_counter() - t0)
                    # the pair is hidden: the simulated evaluator learns it only by running the slots, so here
                    # the benchmark peeks at the database the way a robot would "run" the slot's policy
                    with arena.app.state.factory() as db:
                        from robot_learning.arena.models import ArenaSession

                        row = db.get(ArenaSession, sess["id"])
                        a, b = index[row.policy_a_id], index[row.policy_b_id]
                    v = ev.judge(a, b)
                    body = {"idempotency_key": f"bench-{sess['id']}", "outcome": v.outcome,
                            "progress_a": v.progress_a, "progress_b": v.progress_b}
                    for _ in range(2):  # every vote sent twice: a retrying client must not double count
                        t0 = time.perf_counter()
                        r = h.post(f"/api/sessions/{sess['id']}/vote", json=body)
                        lat.append(time.perf_counter() - t0)
                        assert r.status_code == 200, r.text
                    done += 1
            return done

        t0 = time.perf_counter()
        with ThreadPoolExecutor(evaluators) as pool:
            sent = sum(pool.map(worker, range(evaluators)))
        wall = time.perf_counter() - t0
        with arena.app.state.factory() as db:
            from sqlalchemy import func, select

            stored = db.scalar(select(func.count(Vote.id)))
        board = httpx.get(f"{arena.url}/api/leaderboard", timeout=120).json()
        score = np.zeros(len(names))
        for row in board["rows"]:
            score[index[row["policy_id"]]] = row["score"]
    finally:
        arena.stop()
    return {"sessions": sent, "stored": stored, "requests": len(lat), "wall_s": wall, "rps": len(lat) / wall,
            "p50_ms": 1e3 * float(np.percentile(lat, 50)), "p99_ms": 1e3 * float(np.percentile(lat, 99)),
            **metrics(truth, score)}


def pg_database() -> tuple[str, object]:
    """A throw-away PostgreSQL database (dropped by the returned generator's close)."""
    from tests.integration.test_arena_api import postgres_database

    gen = postgres_database()
    return next(gen), gen


def set_tables(label: str, sim: dict, n_policies: int) -> list[str]:
    """Comparisons-to-target and curve tables of one policy set."""
    sep = "kendall_sep" in next(iter(sim.values()))["curve"][BUDGETS[0]]
    lines = ["", f"**{label} ({n_policies} policies).** Comparisons needed to reach Kendall tau >= {TAU_TARGET} and "
             f"MMRV <= {100 * MMRV_TARGET:.0f} % (checked every {STEP}; the first count after which every later check "
             f"up to {HORIZON} holds):", "",
             "| pairing | runs | median | mean | range | runs there within 300 |", "|---|---|---|---|---|---|"]
    lines += [needed_row(strategy, r["needed"]) for strategy, r in sim.items()]
    head = "| pairing | comparisons | Kendall tau | Spearman | Pearson | MMRV |" + (" tau, truth-ordered pairs | MMRV, truth-ordered pairs |" if sep else "")
    lines += ["", head, "|---" * (8 if sep else 6) + "|"]
    for strategy, r in sim.items():
        for n in BUDGETS:
            m = r["curve"][n]
            lines.append(f"| {strategy} | {n} | {m['kendall']:.3f} | {m['spearman']:.3f} | {m['pearson']:.3f} | "
                         f"{100 * m['mmrv']:.2f} % |" + (f" {m['kendall_sep']:.3f} | {100 * m['mmrv_sep']:.2f} % |" if sep else ""))
    return lines


def main() -> int:
    """Run the benchmark and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth", default="runs/arena_truth/push", help="folder of the sim eval reports <stem>.json")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                    help="report stems: q<Q> = push expert at quality Q, anything else a learned checkpoint's report")
    ap.add_argument("--repeats", type=int, default=20, help="simulated arena runs per strategy")
    ap.add_argument("--e2e", action="store_true", help="also one run through the real server (SQLite)")
    ap.add_argument("--load", action="store_true", help="also 100 concurrent evaluators against PostgreSQL")
    ap.add_argument("--out", default="benchmarks/README.md")
    args = ap.parse_args()
    names, truth, succ, length = load_truth(ROOT / args.truth, args.policies.split(","))
    t0 = time.time()
    sep = separated_pairs(succ)
    keep = separable_subset(truth, sep)
    sims = {"all": simulate(truth, succ, length, args.repeats, separated=sep),
            "separable": simulate(truth[keep], succ[keep], length[keep], args.repeats)}
    lines = ["| policy | true success (200 direct sim episodes) | in the separable set |", "|---|---|---|"]
    lines += [f"| {names[k]} | {truth[k]:.3f} | {'yes' if k in keep else 'no'} |" for k in np.argsort(-truth, kind="stable")]
    unordered = [f"{names[i]} / {names[j]}" for i in range(len(names)) for j in range(i + 1, len(names)) if not sep[i, j]]
    lines += ["", f"Pairs the truth itself cannot order (exact paired test on the 200 shared seeds, p >= 0.05): "
              f"{', '.join(unordered) or 'none'}. The separable set keeps, from the best down, each policy the truth "
              f"separates from the last one kept ({len(keep)} of {len(names)})."]
    for label, sim in (("all", sims["all"]), ("separable", sims["separable"])):
        lines += set_tables(label, sim, len(names) if label == "all" else len(keep))
    extra = []
    if args.e2e:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            e = e2e(truth, succ, length, names, f"sqlite:///{d}/arena.db", 300, 4)
        extra.append(("SQLite, 4 evaluators, 300 sessions", e))
    if args.load:
        url, gen = pg_database()
        try:
            e = e2e(truth, succ, length, names, url, 300, 100)
        finally:
            gen.close()
        extra.append(("PostgreSQL, 100 evaluators, 300 sessions", e))
    if extra:
        lines += ["", "| through the server | votes sent / stored | requests/s | p50 / p99 latency | Kendall tau | MMRV |",
                  "|---|---|---|---|---|---|"]
        for label, e in extra:
            lines.append(f"| {label} | {e['sessions']} / {e['stored']} | {e['rps']:.0f} | {e['p50_ms']:.0f} / "
                         f"{e['p99_ms']:.0f} ms | {e['kendall']:.3f} | {100 * e['mmrv']:.2f} % |")
    plot(sims, ROOT / "benchmarks" / "arena_ranking.png")
    note = (f"\nMeasured by `.venv/bin/python benchmarks/bench_arena.py{' --e2e' if args.e2e else ''}"
            f"{' --load' if args.load else ''}` ({args.repeats} runs per pairing, means; {time.time() - t0:.0f} s; "
            f"1-min load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end). {TRUTH_NOTE}\n")
    write_section(ROOT / args.out, "\n".join(lines) + "\n" + note)
    print("\n".join(lines) + note)
    return 0


def plot(sims: dict, path: Path) -> None:
    """Kendall tau and MMRV vs comparisons, random vs active, mean over the runs, both policy sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (label, sim), style in zip(sims.items(), ("-", "--"), strict=False):
        for strategy, r in sim.items():
            curve = r["curve"]
            ns = sorted(curve)
            name = f"{'random' if strategy == 'uniform' else strategy}, {label}"
            color = "C0" if strategy == "uniform" else "C1"
            ax1.plot(ns, [curve[n]["kendall"] for n in ns], style, color=color, label=name)
            ax2.plot(ns, [100 * curve[n]["mmrv"] for n in ns], style, color=color, label=name)
    ax1.axhline(TAU_TARGET, color="grey", ls=":")
    ax2.axhline(100 * MMRV_TARGET, color="grey", ls=":")
    ax1.set(xlabel="comparisons", ylabel="Kendall tau vs truth (mean)")
    ax2.set(xlabel="comparisons", ylabel="MMRV (%, mean)", ylim=(0, 10))
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_section(readme: Path, body: str) -> None:
    """Replace (or append) the arena section of benchmarks/README.md."""
    start, end = "<!-- SECTION arena -->", "<!-- END SECTION arena -->"
    text = readme.read_text() if readme.exists() else ""
    block = f"{start}\n## Arena: ranking recovery (`bench_arena.py`)\n\n{body}{end}\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    readme.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
