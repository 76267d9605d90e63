"""The arena's vote cache on a real (SQLite) database: top-ups, late commits, shared computations."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from robot_learning.arena import cache as cache_module
from robot_learning.arena import schemas, services
from robot_learning.arena.cache import VoteCache
from robot_learning.arena.db import open_database
from robot_learning.arena.models import Vote
from robot_learning.arena.ranking import leaderboard


@pytest.fixture
def arena_db(tmp_path: Path):  # noqa: ANN201 (session factory)
    engine, factory = open_database(f"sqlite:///{tmp_path}/arena.db")
    with factory() as db:
        services.add_robot(db, schemas.RobotIn(name="r", obs_shapes={"s": [3]}, action_dim=2))
        for k in range(3):
            services.add_policy(db, schemas.PolicyIn(name=f"p{k}", endpoint=f"ws://127.0.0.1:9/{k}",
                                                     obs_shapes={"s": [3]}, action_dim=2, check=False))
    yield factory
    engine.dispose()


def _vote(factory, vote_id: int | None = None, outcome: str = "A") -> int:  # noqa: ANN001
    """A session and its vote, the vote under ``vote_id`` if given."""
    settings = services.ArenaSettings(health_check=False)
    with factory() as db:
        ev, _ = services.create_evaluator(db, f"ev{np.random.default_rng().integers(1 << 40)}")
        s = services.start_session(db, ev, schemas.SessionIn(robot="r", task="t"), settings, np.random.default_rng(0))
        v = Vote(id=vote_id, session_id=s.id, evaluator_id=ev.id, idempotency_key=f"k-{s.id}", outcome=outcome,
                 progress_a=50, progress_b=50, task="t", policy_a_id=s.policy_a_id, policy_b_id=s.policy_b_id)
        s.state = "voted"
        db.add(v)
        db.commit()
        return v.id


def test_votes_are_topped_up_and_reread_when_a_lower_id_commits_late(arena_db) -> None:  # noqa: ANN001
    cache = VoteCache()
    for vid in (1, 2, 4):
        _vote(arena_db, vid)
    with arena_db() as db:
        state, comps = cache.comparisons(db)
    assert state == (3, 4) and len(comps) == 3
    _vote(arena_db, 3)  # its id was handed out before 4's, its commit came after
    _vote(arena_db, 5, outcome="tie")
    with arena_db() as db:
        state, comps = cache.comparisons(db)
        assert state == (5, 5) and comps == services.comparisons(db)
    assert [c.outcome for c in comps][-1] == "tie"


def test_concurrent_requests_share_one_computation(arena_db, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    for _ in range(4):
        _vote(arena_db)
    calls = []
    real = cache_module.pair_weights

    def counted(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(cache_module, "pair_weights", counted)
    cache = VoteCache(weights_max_age_s=0.0)
    results = []

    def start() -> None:
        with arena_db() as db:
            results.append(cache.pair_weights(db, [1, 2, 3], "active"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and all(r == results[0] for r in results)
    _vote(arena_db)  # a new vote: the next request recomputes
    with arena_db() as db:
        cache.pair_weights(db, [1, 2, 3], "active")
        board = cache.get(db, n_boot=20)
        names = {1: "p0", 2: "p1", 3: "p2"}
        assert board.rows == leaderboard(services.comparisons(db), [1, 2, 3], names, n_boot=20).rows
    assert len(calls) == 2
