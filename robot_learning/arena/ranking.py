"""Bradley-Terry ranking with Davidson ties, bootstrap intervals and CI-separated ranks.

Model (Davidson 1970): with strengths ``pi_i = exp(theta_i)`` and tie parameter ``nu = exp(log_nu)``,

    P(i beats j) = pi_i / D,   P(tie) = nu * sqrt(pi_i * pi_j) / D,   D = pi_i + pi_j + nu * sqrt(pi_i * pi_j).

It is fit by maximum likelihood with scipy's L-BFGS on the analytic gradient. The likelihood is
written here (rather than taken from a package) because no maintained Python package fits Davidson
ties; scipy does the optimisation. A small ridge on theta (``prior``) keeps the fit finite when a
policy has won or lost every comparison and pins the scale's origin (theta sums to ~0). Scores are
reported on the Elo-like scale ``1000 + 400 * theta / ln 10``.

The leaderboard adds a prior in the form of pseudo-votes: every policy has ``prior_votes`` wins and as
many losses against a virtual reference policy (an average one). The point estimate is the fit over
real plus pseudo-votes (shrunk towards the average while a policy has few comparisons). The intervals
come from a Bayesian bootstrap (Rubin 1981) over the real and the pseudo-votes together: each replicate
weighs every vote by a Dirichlet(1, ..., 1) draw (scaled to the vote count), so the prior's votes vary
as much as real ones. A plain resampling bootstrap of one or two votes draws the same data every time
and the interval collapses to zero width (a single vote separated two ranks); here a policy with 1-2
comparisons gets an interval of several hundred points, narrowing as votes come in (20-0 separates,
10-10 and 14-6 do not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import ThreadpoolController

ELO_SCALE = 400.0 / math.log(10.0)
_BLAS = ThreadpoolController()


def one_blas_thread():  # noqa: ANN201 (threadpoolctl's limiter, a context manager)
    """Context in which BLAS runs on one thread: the fits have tens of parameters, and OpenBLAS's
    threads on such matrices only cost (a bootstrap ran 17x slower with 2 threads on a busy machine)."""
    return _BLAS.limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class Comparison:
    """One vote: policy ids in slot order and the outcome ``A`` / ``B`` / ``tie`` / ``both_bad``."""

    a: int
    b: int
    outcome: str
    task: str = ""
    progress_a: float = float("nan")
    progress_b: float = float("nan")


@dataclass
class Fit:
    """A fitted model: strengths (theta, natural log scale) and the tie parameter."""

    ids: list[int]
    theta: np.ndarray
    log_nu: float
    hessian: np.ndarray | None = None

    def score(self) -> np.ndarray:
        """Elo-like scores."""
        return 1000.0 + ELO_SCALE * self.theta

    def covariance(self) -> np.ndarray:
        """Inverse Hessian of the penalised negative log-likelihood over theta (Laplace approximation)."""
        assert self.hessian is not None
        return np.linalg.pinv(self.hessian[:-1, :-1])

    def win_prob(self, i: int, j: int) -> float:
        """P(policy at index i beats index j), ties counted half."""
        ti, tj, nu = self.theta[i], self.theta[j], math.exp(self.log_nu)
        d = math.exp(ti) + math.exp(tj) + nu * math.exp((ti + tj) / 2)
        return (math.exp(ti) + 0.5 * nu * math.exp((ti + tj) / 2)) / d


@dataclass
class Leaderboard:
    """The ranking table: one row per policy, best first."""

    rows: list[dict]
    n_votes: int
    n_bootstrap: int
    log_nu: float
    extra: dict = field(default_factory=dict)


def _counts(comparisons: Sequence[Comparison], index: dict[int, int],
            weights: Sequence[float] | None = None) -> np.ndarray:
    """(n_pairs, 5) array: i, j, wins of i, wins of j, ties (each vote counted ``weights[k]``, default 1),
    aggregated over unordered pairs."""
    agg: dict[tuple[int, int], list[float]] = {}
    for k, c in enumerate(comparisons):
        i, j = index[c.a], index[c.b]
        if i == j:
            continue
        w = 1.0 if weights is None else float(weights[k])
        key, flip = ((i, j), False) if i < j else ((j, i), True)
        row = agg.setdefault(key, [0.0, 0.0, 0.0])
        if c.outcome in ("tie", "both_bad"):
            row[2] += w
        elif (c.outcome == "A") != flip:
            row[0] += w
        else:
            row[1] += w
    if not agg:
        return np.zeros((0, 5))
    return np.array([[i, j, *v] for (i, j), v in agg.items()], dtype=float)


def _nll(x: np.ndarray, data: np.ndarray, n: int, prior: float) -> tuple[float, np.ndarray]:
    """Penalised negative log-likelihood of the Davidson model and its gradient."""
    theta, log_nu = x[:n], x[n]
    i, j = data[:, 0].astype(int), data[:, 1].astype(int)
    wi, wj, t = data[:, 2], data[:, 3], data[:, 4]
    ti, tj = theta[i], theta[j]
    # log D computed stably with logsumexp over the three terms
    terms = np.stack([ti, tj, log_nu + (ti + tj) / 2], axis=1)
    m = terms.max(axis=1, keepdims=True)
    e = np.exp(terms - m)
    log_d = m[:, 0] + np.log(e.sum(axis=1))
    p = e / e.sum(axis=1, keepdims=True)  # share of each term in D
    n_ij = wi + wj + t
    ll = wi * ti + wj * tj + t * (log_nu + (ti + tj) / 2) - n_ij * log_d
    # d logD / d ti = p_i + p_tie / 2, d logD / d log_nu = p_tie
    g_ti = wi + t / 2 - n_ij * (p[:, 0] + p[:, 2] / 2)
    g_tj = wj + t / 2 - n_ij * (p[:, 1] + p[:, 2] / 2)
    g_nu = np.sum(t - n_ij * p[:, 2])
    grad = np.zeros(n + 1)
    np.add.at(grad, i, g_ti)
    np.add.at(grad, j, g_tj)
    grad[n] = g_nu
    value = -ll.sum() + 0.5 * prior * np.sum(theta**2)
    grad = -grad
    grad[:n] += prior * theta
    return float(value), grad


def _hessian(x: np.ndarray, data: np.ndarray, n: int, prior: float, eps: float = 1e-5) -> np.ndarray:
    """Hessian by central differences of the analytic gradient (n is small: tens of policies)."""
    h = np.zeros((n + 1, n + 1))
    for k in range(n + 1):
        d = np.zeros(n + 1)
        d[k] = eps
        h[:, k] = (_nll(x + d, data, n, prior)[1] - _nll(x - d, data, n, prior)[1]) / (2 * eps)
    return (h + h.T) / 2


def fit(comparisons: Sequence[Comparison], ids: Sequence[int] | None = None, prior: float = 0.01,
        x0: np.ndarray | None = None, with_hessian: bool = False, weights: Sequence[float] | None = None) -> Fit:
    """Maximum-likelihood Bradley-Terry-Davidson fit over ``ids`` (default: every id in the votes);
    ``weights`` counts vote k that many times."""
    ids = sorted({c.a for c in comparisons} | {c.b for c in comparisons}) if ids is None else list(ids)
    index = {pid: k for k, pid in enumerate(ids)}
    n = len(ids)
    data = _counts(comparisons, index, weights)
    if x0 is None:
        x0 = np.zeros(n + 1)
        x0[n] = math.log(0.5)
    if len(data) == 0:
        return Fit(ids, np.zeros(n), float(x0[n]), np.eye(n + 1) * prior if with_hessian else None)
    res = minimize(_nll, x0, args=(data, n, prior), jac=True, method="L-BFGS-B",
                   bounds=[(-20, 20)] * n + [(-12, 5)], options={"maxiter": 500, "gtol": 1e-8})
    theta = res.x[:n] - res.x[:n].mean()
    return Fit(ids, theta, float(res.x[n]), _hessian(res.x, data, n, prior) if with_hessian else None)


REFERENCE = -1  # id of the virtual reference policy the prior's pseudo-votes are cast against


def with_prior(comparisons: Sequence[Comparison], ids: Sequence[int],
               prior_votes: int = 1) -> tuple[list[Comparison], list[int]]:
    """Votes plus ``prior_votes`` wins and losses of every policy against :data:`REFERENCE`, and the ids
    with the reference appended."""
    ids = list(ids)
    if REFERENCE in ids:
        raise ValueError(f"policy id {REFERENCE} is reserved for the ranking prior's reference policy")
    pseudo = [Comparison(pid, REFERENCE, outcome) for pid in ids for outcome in ("A", "B") for _ in range(prior_votes)]
    return list(comparisons) + pseudo, ids + [REFERENCE]


def prior_fit(comparisons: Sequence[Comparison], ids: Sequence[int], prior_votes: int = 1, prior: float = 0.01,
              x0: np.ndarray | None = None) -> Fit:
    """The fit over votes and the prior's pseudo-votes, reported over ``ids`` (centred on them)."""
    comps, all_ids = with_prior(comparisons, ids, prior_votes)
    model = fit(comps, all_ids, prior, x0=x0)
    theta = model.theta[:-1] - model.theta[:-1].mean()
    return Fit(list(ids), theta, model.log_nu)


def bootstrap(comparisons: Sequence[Comparison], ids: Sequence[int], n_boot: int = 200, seed: int = 0,
              prior: float = 0.01, prior_votes: int = 1) -> np.ndarray:
    """(n_boot, n) Bayesian-bootstrap replicates of the scores: the votes and the prior's pseudo-votes
    weighted by a Dirichlet(1, ..., 1) draw scaled to their count."""
    rng = np.random.default_rng(seed)
    comps, all_ids = with_prior(comparisons, ids, prior_votes)
    out = np.zeros((n_boot, len(ids)))
    base = fit(comps, all_ids, prior)
    x0 = np.append(base.theta, base.log_nu)
    for b in range(n_boot):
        g = rng.gamma(1.0, size=len(comps))
        theta = fit(comps, all_ids, prior, x0=x0, weights=g * len(comps) / g.sum()).theta[:-1]
        out[b] = 1000.0 + ELO_SCALE * (theta - theta.mean())
    return out


def separated_ranks(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Rank = 1 + number of policies whose lower bound is above this one's upper bound.

    Policies whose intervals overlap share a rank (Chatbot Arena's rule), so an order is only claimed
    where the intervals separate.
    """
    return np.array([1 + int(np.sum(lower > upper[k])) for k in range(len(lower))])


def progress_table(comparisons: Sequence[Comparison], ids: Sequence[int]) -> dict[int, dict[str, float]]:
    """Mean progress score (0-100) per policy, with its standard error and count."""
    scores: dict[int, list[float]] = {pid: [] for pid in ids}
    for c in comparisons:
        for pid, prog in ((c.a, c.progress_a), (c.b, c.progress_b)):
            if pid in scores and not math.isnan(prog):
                scores[pid].append(prog)
    out = {}
    for pid, vals in scores.items():
        arr = np.asarray(vals, dtype=float)
        sem = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan")
        out[pid] = {"mean": float(arr.mean()) if len(arr) else float("nan"), "sem": sem, "n": len(arr)}
    return out


def leaderboard(comparisons: Sequence[Comparison], ids: Sequence[int], names: dict[int, str] | None = None,
                n_boot: int = 200, seed: int = 0, ci: float = 0.95, task: str | None = None,
                prior_votes: int = 1) -> Leaderboard:
    """The ranked table; ``task`` restricts it to that task's votes (the task-aware variant)."""
    comps = [c for c in comparisons if task is None or c.task == task]
    ids = list(ids)
    with one_blas_thread():
        model = prior_fit(comps, ids, prior_votes)
        reps = bootstrap(comps, ids, n_boot, seed, prior_votes=prior_votes) if comps and n_boot > 0 else None
    score = model.score()
    if reps is not None:
        lower = np.quantile(reps, (1 - ci) / 2, axis=0)
        upper = np.quantile(reps, 1 - (1 - ci) / 2, axis=0)
        lower, upper = np.minimum(lower, score), np.maximum(upper, score)  # percentile CIs can miss the MLE
    else:
        lower, upper = np.full(len(ids), -np.inf), np.full(len(ids), np.inf)
    prog = progress_table(comps, ids)
    n_cmp = {pid: 0 for pid in ids}
    for c in comps:
        for pid in (c.a, c.b):
            if pid in n_cmp:
                n_cmp[pid] += 1
    seen = np.array([n_cmp[pid] > 0 for pid in ids], dtype=bool)
    ranks = np.zeros(len(ids), dtype=int)
    ranks[seen] = separated_ranks(lower[seen], upper[seen])  # a policy without votes is unranked
    rows = []
    for k, pid in enumerate(ids):
        rows.append({"policy_id": pid, "name": (names or {}).get(pid, str(pid)),
                     "rank": int(ranks[k]) if seen[k] else None, "score": float(score[k]),
                     "lower": float(lower[k]), "upper": float(upper[k]), "comparisons": n_cmp[pid],
                     "progress": prog[pid]})
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, -r["score"]))
    return Leaderboard(rows, len(comps), n_boot, model.log_nu, {"task": task})
