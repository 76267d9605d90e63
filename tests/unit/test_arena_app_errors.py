"""The arena app's answers to an overloaded database: 503 with Retry-After, never a 500."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from robot_learning.arena.app import create_app
from robot_learning.arena.services import ArenaSettings


def test_an_exhausted_connection_pool_is_503_with_retry_after(tmp_path: Path) -> None:
    app = create_app(ArenaSettings(db_url=f"sqlite:///{tmp_path}/arena.db", health_check=False))

    @app.get("/_test/pool")
    def _pool() -> None:
        raise PoolTimeoutError("QueuePool limit of size 20 overflow 20 reached")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/_test/pool")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "retry the request" in r.json()["detail"]
