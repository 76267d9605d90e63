"""The stored votes kept in memory, with the scheduler's pair weights and the leaderboard computed once
per state of the votes and shared by the requests of one server process.

Reading every vote and refitting the ranking model on every session start put p99 latency at 9 s
with 100 concurrent evaluators. Here the votes are read once and topped up with those stored since
(an id-range query); the state of the votes is (count, largest id), read from the database so that
several server processes on one database stay correct. Concurrent requests that need the same
computation wait for the one in flight instead of repeating it. The pair weights may lag the votes
by ``weights_max_age_s`` (a session start reuses weights that recent even if votes came in since);
the leaderboard never lags.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from robot_learning.arena.models import Policy, Vote
from robot_learning.arena.ranking import Comparison, Leaderboard, leaderboard, one_blas_thread
from robot_learning.arena.scheduler import pair_weights

VoteState = tuple[int, int]  # (number of stored votes, largest vote id)


def vote_rows(db: Session, after_id: int = 0) -> list[tuple[int, bool, Comparison]]:
    """(vote id, valid, comparison) of every stored vote with id above ``after_id``, in id order."""
    q = (select(Vote.id, Vote.valid, Vote.policy_a_id, Vote.policy_b_id, Vote.outcome, Vote.task, Vote.progress_a,
                Vote.progress_b).where(Vote.id > after_id).order_by(Vote.id))
    return [(vid, bool(ok), Comparison(a, b, outcome, task, pa, pb))
            for vid, ok, a, b, outcome, task, pa, pb in db.execute(q)]


@dataclass
class _Entry:
    state: VoteState
    made: float
    value: Any


class VoteCache:
    """Valid votes as comparisons, pair weights per (strategy, candidate set), leaderboards per (task, n_boot)."""

    def __init__(self, weights_max_age_s: float = 1.0) -> None:
        self.weights_max_age_s = weights_max_age_s
        self._lock = threading.Lock()
        self._rows: list[tuple[int, bool, Comparison]] = []
        self._entries: dict[tuple, _Entry] = {}
        self._key_locks: dict[tuple, threading.Lock] = {}

    def comparisons(self, db: Session) -> tuple[VoteState, list[Comparison]]:
        """The current vote state and every valid vote as a comparison (storage order)."""
        with self._lock:
            rows = self._rows
        last = rows[-1][0] if rows else 0
        new = vote_rows(db, last)
        # ids are handed out before commit, so a vote with an id below ``last`` may have committed since
        # the last look; then the cached prefix is incomplete and everything is read again
        if rows and db.scalar(select(func.count(Vote.id)).where(Vote.id <= last)) != len(rows):
            rows, new = [], vote_rows(db)
        if new:
            rows = rows + new
            with self._lock:
                if len(rows) >= len(self._rows):
                    self._rows = rows
        state = (len(rows), rows[-1][0] if rows else 0)
        db.commit()  # end the read so the connection goes back to the pool while the computation runs or waits
        return state, [c for _, ok, c in rows if ok]

    def _shared(self, key: tuple, state: VoteState, max_age_s: float, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` and vote state (or younger than ``max_age_s``), single-flight."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            entry = self._entries.get(key)
            if entry is not None and (entry.state == state or time.monotonic() - entry.made < max_age_s):
                return entry.value
            value = compute()
            self._entries[key] = _Entry(state, time.monotonic(), value)
            return value

    def pair_weights(self, db: Session, ids: Sequence[int], strategy: str) -> dict[str, float]:
        """The scheduler's probability of every pair of ``ids`` under the current votes."""
        state, comps = self.comparisons(db)

        def compute() -> dict[str, float]:
            with one_blas_thread():
                return pair_weights(list(ids), comps, strategy)

        return self._shared(("weights", strategy, tuple(sorted(ids))), state, self.weights_max_age_s, compute)

    def get(self, db: Session, n_boot: int, task: str | None = None) -> Leaderboard:
        """The leaderboard for the current votes (and ``task``, if given)."""
        names = dict(db.execute(select(Policy.id, Policy.name)).all())
        state, comps = self.comparisons(db)

        def compute() -> Leaderboard:
            return leaderboard(comps, sorted(names), names, n_boot=n_boot, task=task or None)

        return self._shared(("board", task or "", n_boot, tuple(sorted(names.items()))), state, 0.0, compute)
