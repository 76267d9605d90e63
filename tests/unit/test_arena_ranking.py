"""Bradley-Terry-Davidson fit, bootstrap ranks and the pair scheduler (pure numerics, no server)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import check_grad

from robot_learning.arena.ranking import Comparison, _counts, _nll, fit, leaderboard, separated_ranks
from robot_learning.arena.scheduler import Candidate, choose_pair, compatible, pair_weights


def simulate(theta: np.ndarray, n: int, nu: float = 0.3, seed: int = 0) -> list[Comparison]:
    """Votes drawn from the Davidson model itself."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(theta), 2, replace=False)
        pi, pj, pt = np.exp(theta[i]), np.exp(theta[j]), nu * np.exp((theta[i] + theta[j]) / 2)
        u = rng.random() * (pi + pj + pt)
        out.append(Comparison(int(i), int(j), "A" if u < pi else "B" if u < pi + pj else "tie", "t", 50.0, 50.0))
    return out


def test_gradient_matches_finite_differences() -> None:
    comps = simulate(np.array([1.0, 0.0, -0.5, 0.3]), 200)
    data = _counts(comps, {k: k for k in range(4)})
    x = np.array([0.2, -0.1, 0.4, 0.0, -1.0])
    err = check_grad(lambda v: _nll(v, data, 4, 0.01)[0], lambda v: _nll(v, data, 4, 0.01)[1], x)
    assert err < 1e-4


def test_fit_recovers_strengths_and_tie_rate() -> None:
    truth = np.array([1.2, 0.6, 0.0, -0.6, -1.2])
    model = fit(simulate(truth, 4000, nu=0.4), ids=range(5))
    assert np.allclose(model.theta, truth - truth.mean(), atol=0.15)
    assert abs(np.exp(model.log_nu) - 0.4) < 0.08


def test_leaderboard_orders_policies_and_shares_ranks_when_cis_overlap() -> None:
    truth = np.array([2.0, 1.95, 0.0, -2.0])  # 0 and 1 are practically equal
    board = leaderboard(simulate(truth, 600, seed=1), ids=range(4), n_boot=100)
    by_id = {r["policy_id"]: r for r in board.rows}
    assert by_id[0]["rank"] == by_id[1]["rank"] == 1
    assert by_id[2]["rank"] == 3 and by_id[3]["rank"] == 4
    assert all(r["lower"] <= r["score"] <= r["upper"] for r in board.rows)


def test_unvoted_policy_is_unranked_and_both_bad_counts_as_tie() -> None:
    comps = [Comparison(1, 2, "both_bad"), Comparison(1, 2, "tie"), Comparison(2, 1, "A")]
    board = leaderboard(comps, ids=[1, 2, 3], n_boot=20)
    assert [r["policy_id"] for r in board.rows][-1] == 3 and board.rows[-1]["rank"] is None
    assert _counts(comps, {1: 0, 2: 1, 3: 2}).tolist() == [[0, 1, 0, 1, 2]]


def test_separated_ranks() -> None:
    assert separated_ranks(np.array([10, 5, 0.]), np.array([12, 11, 4.])).tolist() == [1, 1, 3]


def test_compatibility_filter_names_every_mismatch() -> None:
    p = Candidate(1, {"camera_front": [96, 96, 3], "joint_pos": [9]}, 5, "ee_delta", ("lift",))
    assert compatible(p, {"camera_front": [96, 96, 3], "joint_pos": [9]}, 5, "ee_delta", "lift") == []
    problems = compatible(p, {"joint_pos": [7]}, 7, "ee_abs", "push")
    text = " | ".join(problems)
    for needle in ("camera_front", "joint_pos", "action_dim", "action_mode", "task 'push'"):
        assert needle in text


def test_scheduler_prefers_under_evaluated_and_uncertain_pairs() -> None:
    comps = [Comparison(1, 2, "A")] * 40
    w = pair_weights([1, 2, 3], comps, "balanced")
    assert abs(sum(w.values()) - 1) < 1e-9 and w["1-2"] < w["1-3"] and w["1-2"] < w["2-3"]
    # active: 1 vs 2 is settled (40 votes), pairs with 3 are not
    wa = pair_weights([1, 2, 3], comps, "active")
    assert abs(sum(wa.values()) - 1) < 1e-9 and wa["1-2"] < min(wa["1-3"], wa["2-3"])
    assert list(pair_weights([1, 2, 3], [], "uniform").values()) == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="strategy 'best'"):
        pair_weights([1, 2], [], "best")


def test_choose_pair_randomises_order_and_reports_probability() -> None:
    rng = np.random.default_rng(0)
    draws = [choose_pair({"1-2": 1.0}, rng) for _ in range(200)]
    firsts = {d[0] for d in draws}
    assert firsts == {1, 2} and all(d[2] == 1.0 for d in draws)
    with pytest.raises(ValueError, match="no compatible pair"):
        choose_pair({}, rng)


def _width(board: object, pid: int) -> float:
    row = next(r for r in board.rows if r["policy_id"] == pid)
    return row["upper"] - row["lower"]


def test_one_or_two_votes_give_wide_intervals_and_no_separated_ranks() -> None:
    # a plain resampling bootstrap of one vote draws the same vote every time: zero width, ranks 1 and 2
    for comps in ([Comparison(1, 2, "A")], [Comparison(1, 2, "A")] * 2, [Comparison(1, 2, "A"), Comparison(2, 3, "tie")]):
        board = leaderboard(comps, ids=[1, 2, 3], n_boot=200)
        seen = [r for r in board.rows if r["comparisons"] > 0]
        assert all(r["upper"] - r["lower"] > 300 for r in seen), board.rows
        assert {r["rank"] for r in seen} == {1}, board.rows
        assert all(r["lower"] <= r["score"] <= r["upper"] for r in board.rows)
    # the prior only shrinks: one win still puts the winner ahead on the point estimate
    one = leaderboard([Comparison(1, 2, "A")], ids=[1, 2], n_boot=50)
    assert one.rows[0]["policy_id"] == 1 and one.rows[0]["score"] > one.rows[1]["score"]


def test_intervals_narrow_with_votes_and_separate_a_clear_winner() -> None:
    split = [Comparison(1, 2, "A"), Comparison(1, 2, "B")]
    widths = [_width(leaderboard(split * n, ids=[1, 2], n_boot=100), 1) for n in (2, 10, 50)]
    assert widths[0] > widths[1] > widths[2] > 0, widths
    board = leaderboard([Comparison(1, 2, "A")] * 20, ids=[1, 2], n_boot=100)  # 20-0
    assert [r["rank"] for r in board.rows] == [1, 2]
    board = leaderboard(split * 10, ids=[1, 2], n_boot=100)  # 10-10
    assert [r["rank"] for r in board.rows] == [1, 1]


def test_equal_policies_are_rarely_separated() -> None:
    truth = np.zeros(3)
    separated = 0
    for seed in range(10):
        board = leaderboard(simulate(truth, 30, seed=seed), ids=range(3), n_boot=60, seed=seed)
        separated += len({r["rank"] for r in board.rows}) > 1
    assert separated <= 2, separated  # a 95 % interval per policy: false separations stay rare
