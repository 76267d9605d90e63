"""The arena's PostgreSQL connections die under load; evaluators retry and no vote is lost or counted twice.

A restart of the server needs root here, so the database side is cut the way a restart looks to the
app: every backend of the test database is killed with ``pg_terminate_backend`` (allowed for the
role's own connections), over and over while simulated evaluators start sessions and vote through the
real client (:class:`ArenaAPI`, which retries connection errors and 5xx with the same idempotency key).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select, text

from robot_learning.arena.client import ArenaAPI
from robot_learning.arena.models import Vote
from robot_learning.arena.services import ArenaSettings
from tests.integration.test_arena_api import LiveArena, postgres_database, setup_pair, vote_body

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (the test fails in CI and skips elsewhere without a server)."""
    yield from postgres_database()


def test_votes_survive_killed_database_connections(pg_url: str) -> None:
    arena = LiveArena(ArenaSettings(db_url=pg_url, health_check=False, n_boot=0, seed=0, rate_limit_per_min=100_000))
    killer_engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    stop, killed = threading.Event(), []
    statuses: list[int] = []
    try:
        setup_pair(arena, ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b", "ws://127.0.0.1:9/c"])
        tokens = [arena.evaluator(f"ev{k}") for k in range(8)]
        database = pg_url.rsplit("/", 1)[1]

        def kill_connections() -> None:  # eight "restarts", 0.6 s apart, each cutting every connection
            for _ in range(8):
                if stop.wait(0.6):
                    return
                with killer_engine.connect() as conn:
                    n = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                          "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).scalar()
                killed.append(int(n or 0))

        killer = threading.Thread(target=kill_connections, daemon=True)

        def evaluator(token: str) -> list[tuple[str, str, int]]:
            api = ArenaAPI(arena.url, token, timeout_s=60, retries=8)
            api.http.event_hooks["response"].append(lambda r: statuses.append(r.status_code))
            out = []
            try:
                k = 0
                while k < 3 or killer.is_alive():  # load until the last restart is over
                    s = api.request("POST", "/api/sessions", json={"robot": "bench", "task": "lift"})
                    key = f"{s['id']}-vote"
                    v = api.request("POST", f"/api/sessions/{s['id']}/vote", json=vote_body(key, "AB"[k % 2]))
                    out.append((s["id"], key, v["vote_id"]))
                    k += 1
            finally:
                api.close()
            return out

        killer.start()
        with ThreadPoolExecutor(len(tokens)) as pool:
            voted = [v for batch in pool.map(evaluator, tokens) for v in batch]
        killer.join(10)
        with arena.app.state.factory() as db:
            stored = {v.session_id: (v.idempotency_key, v.id) for v in db.scalars(select(Vote))}
            n_votes = db.scalar(select(func.count(Vote.id)))
        assert len(killed) == 8 and sum(killed) > 0, killed
        assert len(voted) == n_votes >= 24, (len(voted), n_votes)  # none lost, none duplicated
        assert stored == {sid: (key, vid) for sid, key, vid in voted}
        assert all(c < 500 or c == 503 for c in statuses), sorted(set(statuses))  # lost connections: 503, not 500
        board = arena.client().get("/api/leaderboard").json()
        assert board["n_votes"] == n_votes
        print(f"{n_votes} votes; backends killed: {sum(killed)}; responses: " +
              ", ".join(f"{c} x{statuses.count(c)}" for c in sorted(set(statuses))))
    finally:
        stop.set()
        arena.stop()
        killer_engine.dispose()
