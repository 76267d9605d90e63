"""Alembic environment: runs the packaged migrations against the URL in the config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from robot_learning.arena.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Migrate over a live connection (the only mode the arena uses)."""
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
