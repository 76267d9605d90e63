"""Alembic migrations of the arena schema (``rlstack arena migrate``)."""
