"""SQLAlchemy 2 models of the arena: evaluators, robots, policies, sessions, episodes, votes, audit log.

The schema is owned by the Alembic migrations in ``migrations/``; a test checks that these models and
the migrated schema agree, so ``create_all`` is never used on a real database.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SESSION_STATES = ("open", "voted", "invalid", "expired")
OUTCOMES = ("A", "B", "tie", "both_bad")  # "both_bad" is a tie kind (Davidson tie in the ranking)
SLOTS = ("A", "B")


def utcnow() -> dt.datetime:
    """Timezone-aware now (stored as UTC; SQLite drops the zone, see ``as_utc``)."""
    return dt.datetime.now(dt.timezone.utc)


def as_utc(t: dt.datetime) -> dt.datetime:
    """A stored timestamp as aware UTC (SQLite returns naive datetimes)."""
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base; JSON columns hold specs and sampling probabilities."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Evaluator(Base):
    """A person (or simulated evaluator) who runs sessions; authenticates with a hashed token."""

    __tablename__ = "evaluators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    site: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Robot(Base):
    """A robot at a site with the observations and action interface it provides."""

    __tablename__ = "robots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    site: Mapped[str] = mapped_column(String(100), default="")
    obs_shapes: Mapped[dict[str, Any]] = mapped_column(JSON)
    action_dim: Mapped[int] = mapped_column(Integer)
    action_mode: Mapped[str] = mapped_column(String(20), default="ee_delta")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Policy(Base):
    """A registered policy-server endpoint with its declared spec (never shown before a vote)."""

    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    endpoint: Mapped[str] = mapped_column(String(300))
    obs_shapes: Mapped[dict[str, Any]] = mapped_column(JSON)
    action_dim: Mapped[int] = mapped_column(Integer)
    action_mode: Mapped[str] = mapped_column(String(20), default="ee_delta")
    tasks: Mapped[list[Any]] = mapped_column(JSON, default=list)  # empty: any task
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    health_checked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    health_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ArenaSession(Base):
    """One A/B comparison: the assigned pair, its order, the sampling probabilities, its state."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    evaluator_id: Mapped[int] = mapped_column(ForeignKey("evaluators.id"), index=True)
    robot_id: Mapped[int] = mapped_column(ForeignKey("robots.id"))
    task: Mapped[str] = mapped_column(String(100))
    instruction: Mapped[str] = mapped_column(Text, default="")
    policy_a_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    policy_b_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    slot_key_a: Mapped[str] = mapped_column(String(64), unique=True)  # opaque per-session endpoint secrets
    slot_key_b: Mapped[str] = mapped_column(String(64), unique=True)
    scheduler: Mapped[str] = mapped_column(String(20))
    pair_probability: Mapped[float] = mapped_column(Float)
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"i-j": p} over every compatible pair
    state: Mapped[str] = mapped_column(String(10), default="open", index=True)
    invalid_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class ArenaEpisode(Base):
    """A run of one slot in a session, as recorded into the episode store by the evaluator client."""

    __tablename__ = "episodes"
    __table_args__ = (UniqueConstraint("session_id", "slot", name="uq_episode_session_slot"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    slot: Mapped[str] = mapped_column(String(1))
    status: Mapped[str] = mapped_column(String(10), default="done")  # running | done | failed
    success: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    store_uri: Mapped[str] = mapped_column(Text, default="")
    store_episode: Mapped[int | None] = mapped_column(Integer, nullable=True)
    video: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Vote(Base):
    """The evaluator's verdict on a session; one per session, idempotent by key."""

    __tablename__ = "votes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), unique=True)
    evaluator_id: Mapped[int] = mapped_column(ForeignKey("evaluators.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    outcome: Mapped[str] = mapped_column(String(10))
    progress_a: Mapped[float] = mapped_column(Float)
    progress_b: Mapped[float] = mapped_column(Float)
    comment: Mapped[str] = mapped_column(Text, default="")
    valid: Mapped[bool] = mapped_column(Boolean, default=True)
    # denormalised so the ranking reads one table
    task: Mapped[str] = mapped_column(String(100))
    policy_a_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    policy_b_id: Mapped[int] = mapped_column(ForeignKey("policies.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntry(Base):
    """Every write request, accepted or refused, with who sent it and what came of it."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    evaluator_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
