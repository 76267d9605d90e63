"""Engine, sessions and schema migrations (Alembic, shipped inside the package).

SQLite (a file) is the embedded default; PostgreSQL (``postgresql+psycopg://...``) is the production
backend. ``open_database`` upgrades the schema to the newest migration before anything else runs.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_URL = "sqlite:///data/arena.db"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so concurrent writers queue, not fail."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 (DB-API connection)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        # pysqlite's default transaction handling is kept on purpose: reads run outside a transaction
        # and a transaction begins at the first write, whose lock then waits out the busy timeout.
        # Exactly-once votes do not rely on SQLite's locking but on the unique session/key constraints.
        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def alembic_config(url: str):  # noqa: ANN201 (alembic.config.Config, imported lazily)
    """An Alembic config pointing at the packaged migrations and ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def open_database(url: str, migrate: bool = True) -> tuple[Engine, sessionmaker[Session]]:
    """Migrate (by default) and return an engine and a session factory."""
    if migrate:
        upgrade(url)
    engine = make_engine(url)
    return engine, sessionmaker(engine, expire_on_commit=False)
