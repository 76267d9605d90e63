"""The arena over real HTTP on loopback, against SQLite and a real PostgreSQL server.

Each PostgreSQL test creates its own database and drops it afterwards. Without a reachable server the
PostgreSQL cases fail in CI (``CI`` set) and are skipped locally with the reason.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from sqlalchemy import create_engine, func, select, text

from robot_learning.arena.app import create_app
from robot_learning.arena.db import make_engine
from robot_learning.arena.models import ArenaEpisode, AuditEntry, Base, Vote
from robot_learning.arena.services import ArenaSettings, create_evaluator
from robot_learning.policies.base import Policy, PolicySpec
from robot_learning.serve.client import PolicyServerError, RemotePolicy
from robot_learning.serve.server import PolicyServer

pytestmark = pytest.mark.integration
PG_URL = os.environ.get("RLSTACK_TEST_POSTGRES_URL", "postgresql+psycopg://rlstack:rlstack@127.0.0.1:5432/postgres")
SPEC = PolicySpec(obs_shapes={"joint_pos": (3,)}, action_dim=2, n_obs_steps=1, horizon=2, n_action_steps=1)


class ConstPolicy(Policy):
    """Outputs a constant: enough to check that the relay carries real inference."""

    def __init__(self, value: float) -> None:
        self.spec, self.value = SPEC, value

    def reset(self) -> None:
        pass

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        return np.full((2, 2), self.value, np.float32)


def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            name = f"arena_test_{uuid.uuid4().hex[:12]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # unreachable server
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} unreachable in CI: {exc}")
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable (set RLSTACK_TEST_POSTGRES_URL): {type(exc).__name__}")
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The database URL of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/arena.db"
    else:
        yield from postgres_database()


class LiveArena:
    """The app under uvicorn on a free loopback port, with an admin token."""

    def __init__(self, settings: ArenaSettings) -> None:
        self.app = create_app(settings)
        with self.app.state.factory() as db:
            self.admin = create_evaluator(db, "root", is_admin=True)[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "arena server did not start"
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def evaluator(self, name: str) -> str:
        with self.client(self.admin) as c:
            r = c.post("/api/evaluators", json={"name": name})
            assert r.status_code == 200, r.text
            return r.json()["token"]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.engine.dispose()


def setup_pair(arena: LiveArena, endpoints: list[str], check: bool = False) -> None:
    """One robot and a policy per endpoint, all compatible."""
    with arena.client(arena.admin) as c:
        r = c.post("/api/robots", json={"name": "bench", "obs_shapes": {"joint_pos": [3], "cam": [8, 8, 3]},
                                        "action_dim": 2})
        assert r.status_code == 200, r.text
        for k, ep in enumerate(endpoints):
            r = c.post("/api/policies", json={"name": f"secret-policy-{k}", "endpoint": ep,
                                              "obs_shapes": {"joint_pos": [3]}, "action_dim": 2, "check": check})
            assert r.status_code == 200, r.text


@pytest.fixture
def arena(db_url: str) -> Iterator[LiveArena]:
    live = LiveArena(ArenaSettings(db_url=db_url, health_check=False, n_boot=20, seed=0, rate_limit_per_min=10_000))
    yield live
    live.stop()


def vote_body(key: str, outcome: str = "A") -> dict:
    return {"idempotency_key": key, "outcome": outcome, "progress_a": 80, "progress_b": 20, "comment": "ok"}


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from robot_learning.arena.db import upgrade

    upgrade(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_double_blind_session_vote_and_reveal(arena: LiveArena) -> None:
    setup_pair(arena, ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b"])
    ann, bob = arena.evaluator("ann"), arena.evaluator("bob")
    with arena.client(ann) as c, arena.client(bob) as other:
        r = c.post("/api/sessions", json={"robot": "bench", "task": "lift", "instruction": "lift the red cube"})
        assert r.status_code == 200, r.text
        s = r.json()
        sid = s["id"]
        # nothing names a policy or its real endpoint before the vote
        with httpx.Client(base_url=arena.url, cookies={"arena_token": ann}) as browser:
            page = browser.get(f"/ui/sessions/{sid}")
        assert page.status_code == 200 and "lift the red cube" in page.text
        for body in (r.text, c.get(f"/api/sessions/{sid}").text, page.text):
            assert "secret-policy" not in body and "127.0.0.1:9" not in body
        assert s["reveal"] is None and {x["slot"] for x in s["slots"]} == {"A", "B"}
        assert other.get(f"/api/sessions/{sid}").status_code == 403
        assert other.post(f"/api/sessions/{sid}/vote", json=vote_body("bob-key-1")).status_code == 403
        r = c.post(f"/api/sessions/{sid}/episodes", json={"slot": "A", "success": True, "video": "/etc/passwd"})
        assert r.status_code == 200
        first = c.post(f"/api/sessions/{sid}/vote", json=vote_body("ann-key-1"))
        assert first.status_code == 200 and first.json()["replayed"] is False
        assert set(first.json()["reveal"].values()) == {"secret-policy-0", "secret-policy-1"}
        replay = c.post(f"/api/sessions/{sid}/vote", json=vote_body("ann-key-1"))
        assert replay.status_code == 200 and replay.json()["replayed"] and replay.json()["vote_id"] == first.json()["vote_id"]
        assert c.post(f"/api/sessions/{sid}/vote", json=vote_body("ann-key-2")).status_code == 409
        assert c.get(f"/api/sessions/{sid}").json()["reveal"] == first.json()["reveal"]
        with arena.app.state.factory() as db:
            ep_id = db.scalar(select(ArenaEpisode.id).where(ArenaEpisode.session_id == sid))
        with httpx.Client(base_url=arena.url, cookies={"arena_token": ann}) as browser:
            r = browser.get(f"/ui/episodes/{ep_id}/video")  # a client-supplied path outside the video folder
        assert r.status_code == 403 and "root:" not in r.text
        board = c.get("/api/leaderboard").json()
        assert board["n_votes"] == 1 and sum(r["comparisons"] for r in board["rows"]) == 2
    with arena.app.state.factory() as db:
        assert db.scalar(select(func.count(Vote.id))) == 1
        actions = [a.action for a in db.scalars(select(AuditEntry))]
        assert actions.count("vote") == 4  # accepted, replayed, refused (another key) and bob's refusal
        assert actions.count("episode") == 1


def test_bad_input_gets_clear_4xx(arena: LiveArena) -> None:
    setup_pair(arena, ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b"])
    ann = arena.evaluator("ann")
    with arena.client() as anon, arena.client(ann) as c, arena.client(arena.admin) as admin:
        assert anon.post("/api/sessions", json={"robot": "bench", "task": "lift"}).status_code == 401
        assert arena.client("arena_forged").post("/api/sessions", json={"robot": "bench", "task": "lift"}).status_code == 401
        assert c.post("/api/robots", json={"name": "x", "obs_shapes": {"a": [1]}, "action_dim": 1}).status_code == 403
        r = c.post("/api/sessions", json={"robot": "nope", "task": "lift"})
        assert r.status_code == 404 and "robot 'nope'" in r.json()["detail"]
        r = c.post("/api/sessions", json={"robot": "bench", "task": "lift", "colour": "red"})
        assert r.status_code == 422 and "colour" in r.json()["detail"]
        sid = c.post("/api/sessions", json={"robot": "bench", "task": "lift"}).json()["id"]
        r = c.post(f"/api/sessions/{sid}/vote", json={**vote_body("k-12345678"), "progress_a": 101, "outcome": "C"})
        assert r.status_code == 422 and "progress_a" in r.json()["detail"] and "outcome" in r.json()["detail"]
        r = c.post(f"/api/sessions/{sid}/vote", content=b'{"x": "' + b"y" * 100_000 + b'"}',
                   headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post(f"/api/sessions/{sid}/vote", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
        assert c.post("/api/sessions/unknown/vote", json=vote_body("k-87654321")).status_code == 404
        r = admin.post("/api/policies", json={"name": "p", "endpoint": "http://x", "obs_shapes": {"a": [1]}, "action_dim": 1})
        assert r.status_code == 422 and "endpoint" in r.json()["detail"]
        r = admin.post("/api/policies", json={"name": "dead", "endpoint": "ws://127.0.0.1:9", "obs_shapes": {"a": [1]},
                                              "action_dim": 1})
        assert r.status_code == 422 and "unreachable" in r.json()["detail"]
        # the refused requests left the stored data as it was
        assert c.post(f"/api/sessions/{sid}/vote", json=vote_body("k-valid-01")).status_code == 200


def test_expired_session_refuses_votes(db_url: str) -> None:
    live = LiveArena(ArenaSettings(db_url=db_url, health_check=False, n_boot=0, session_ttl_s=0.3))
    try:
        setup_pair(live, ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b"])
        ann = live.evaluator("ann")
        with live.client(ann) as c:
            sid = c.post("/api/sessions", json={"robot": "bench", "task": "lift"}).json()["id"]
            time.sleep(0.5)
            r = c.post(f"/api/sessions/{sid}/vote", json=vote_body("late-key-1"))
            assert r.status_code == 410 and "expired" in r.json()["detail"]
            assert c.get(f"/api/sessions/{sid}").json()["state"] == "expired"
    finally:
        live.stop()


def test_rate_limit(tmp_path: Path) -> None:
    live = LiveArena(ArenaSettings(db_url=f"sqlite:///{tmp_path}/a.db", health_check=False, rate_limit_per_min=3))
    try:
        setup_pair(live, ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b"])
        with live.client(live.evaluator("ann")) as c:
            codes = [c.post("/api/sessions", json={"robot": "bench", "task": "lift"}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
    finally:
        live.stop()


def test_concurrent_votes_are_neither_lost_nor_duplicated(arena: LiveArena) -> None:
    setup_pair(arena, ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b", "ws://127.0.0.1:9/c"])
    tokens = [arena.evaluator(f"ev{k}") for k in range(8)]

    def evaluator_run(token: str) -> list[str]:
        with arena.client(token) as c:
            sids = []
            for _ in range(3):
                sid = c.post("/api/sessions", json={"robot": "bench", "task": "lift"}).json()["id"]
                key = f"key-{sid}"
                # the same vote sent three times at once (a client retrying), plus one under another key
                with ThreadPoolExecutor(4) as pool:
                    codes = list(pool.map(lambda k, s=sid: c.post(f"/api/sessions/{s}/vote", json=vote_body(k)).status_code,
                                          [key, key, key, key + "-other"]))
                assert codes.count(200) == 3 and codes.count(409) == 1 or codes.count(200) == 1, codes
                sids.append(sid)
            return sids

    with ThreadPoolExecutor(8) as pool:
        sessions = [s for batch in pool.map(evaluator_run, tokens) for s in batch]
    with arena.app.state.factory() as db:
        votes = db.scalars(select(Vote)).all()
    assert len(votes) == len(sessions) == 24
    assert sorted(v.session_id for v in votes) == sorted(sessions)


def test_relay_hides_identity_and_a_dying_policy_invalidates_the_session(arena: LiveArena) -> None:
    servers = [PolicyServer(ConstPolicy(v), port=0, name=f"secret-policy-{k}").start_in_thread()
               for k, v in enumerate((0.25, 0.75))]
    try:
        setup_pair(arena, [s.url for s in servers], check=True)
        with arena.client(arena.evaluator("ann")) as c:
            s = c.post("/api/sessions", json={"robot": "bench", "task": "lift"}).json()
            endpoint = {x["slot"]: x["endpoint"] for x in s["slots"]}
            remote = RemotePolicy(endpoint["A"], obs_shapes={"joint_pos": (3,)}, action_dim=2)
            chunk = remote.predict_chunk({"joint_pos": np.zeros((1, 3), np.float32)})
            assert "secret" not in remote.server_name and float(chunk[0, 0]) in (0.25, 0.75)
            r = c.post(f"/api/sessions/{s['id']}/episodes", json={"slot": "A", "status": "running", "steps": 1})
            assert r.status_code == 200, r.text
            while servers:  # both policy servers die mid-session
                servers.pop().stop()
            with pytest.raises(PolicyServerError):
                for _ in range(50):
                    remote.predict_chunk({"joint_pos": np.zeros((1, 3), np.float32)})
                    time.sleep(0.05)
            remote.close()
            deadline = time.monotonic() + 10
            while (state := c.get(f"/api/sessions/{s['id']}").json())["state"] != "invalid":
                assert time.monotonic() < deadline, state
                time.sleep(0.1)
            assert "slot A" in state["invalid_reason"] and "mid-session" in state["invalid_reason"]
            assert [(e["slot"], e["status"], e["steps"]) for e in state["episodes"]] == [("A", "running", 1)]  # kept
            assert c.post(f"/api/sessions/{s['id']}/vote", json=vote_body("after-death")).status_code == 409
            assert c.get("/api/leaderboard").json()["n_votes"] == 0
    finally:
        for srv in servers:  # PolicyServer.stop() may run once
            srv.stop()
