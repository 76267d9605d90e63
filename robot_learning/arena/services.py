"""Arena operations shared by the JSON API and the HTML pages: auth, sessions, episodes, votes.

Every function takes an open SQLAlchemy session and raises :class:`ArenaError` (an HTTP status and a
message naming what is wrong) on bad input; the callers turn it into a 4xx response.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from robot_learning.arena import schemas
from robot_learning.arena.cache import VoteCache, vote_rows
from robot_learning.arena.models import (
    ArenaEpisode,
    ArenaSession,
    AuditEntry,
    Evaluator,
    Policy,
    Robot,
    Vote,
    as_utc,
    utcnow,
)
from robot_learning.arena.ranking import Comparison
from robot_learning.arena.scheduler import STRATEGIES, Candidate, choose_pair, compatible, pair_weights


class ArenaError(Exception):
    """A refused request: HTTP ``status`` and a message saying what and where."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ArenaSettings:
    """Server settings (``rlstack arena serve`` flags)."""

    db_url: str = "sqlite:///data/arena.db"
    session_ttl_s: float = 1800.0
    rate_limit_per_min: int = 120  # write requests per evaluator per minute
    health_check: bool = True
    health_ttl_s: float = 30.0
    health_timeout_s: float = 2.0
    scheduler: str = "balanced"
    weights_max_age_s: float = 1.0  # a session start may reuse pair weights this recent (votes since or not)
    n_boot: int = 200
    max_body_bytes: int = 64 * 1024
    seed: int | None = None
    video_dir: str = "data/arena_videos"  # episode videos are served from under this folder only

    def validate(self) -> ArenaSettings:
        """Raise ValueError naming the bad setting."""
        if self.scheduler not in STRATEGIES:
            raise ValueError(f"arena scheduler '{self.scheduler}': choose from {', '.join(STRATEGIES)}")
        if self.session_ttl_s <= 0:
            raise ValueError(f"arena session_ttl_s={self.session_ttl_s}: must be positive")
        if self.rate_limit_per_min < 1:
            raise ValueError(f"arena rate_limit_per_min={self.rate_limit_per_min}: must be >= 1")
        if not 0 <= self.n_boot <= 5000:
            raise ValueError(f"arena n_boot={self.n_boot}: must lie in 0..5000")
        return self


def hash_token(token: str) -> str:
    """SHA-256 of a token. Tokens are 256-bit random secrets, so a fast hash suffices (a slow password
    hash such as bcrypt protects low-entropy passwords, which these are not) and allows an indexed lookup."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random evaluator token."""
    return "arena_" + secrets.token_urlsafe(32)


def authenticate(db: Session, token: str | None) -> Evaluator:
    """The evaluator holding ``token``, else 401."""
    if not token:
        raise ArenaError(401, "authentication required: send 'Authorization: Bearer <token>'")
    ev = db.scalar(select(Evaluator).where(Evaluator.token_hash == hash_token(token)))
    if ev is None:
        raise ArenaError(401, "unknown or revoked token")
    return ev


def create_evaluator(db: Session, name: str, site: str = "", is_admin: bool = False) -> tuple[Evaluator, str]:
    """Create an evaluator; returns it and its token (only the hash is stored)."""
    if db.scalar(select(Evaluator).where(Evaluator.name == name)) is not None:
        raise ArenaError(409, f"evaluator '{name}' exists already")
    token = new_token()
    ev = Evaluator(name=name, site=site, is_admin=is_admin, token_hash=hash_token(token))
    db.add(ev)
    db.commit()
    return ev, token


class RateLimiter:
    """Sliding one-minute window of write requests per evaluator (in this server process)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[int, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, evaluator_id: int) -> None:
        """Count one request; 429 past the limit."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits[evaluator_id]
            while hits and hits[0] < now - 60.0:
                hits.popleft()
            if len(hits) >= self.per_minute:
                raise ArenaError(429, f"rate limit: at most {self.per_minute} write requests per minute per evaluator")
            hits.append(now)


def audit(db: Session, evaluator_id: int | None, action: str, target: str, status: int,
          detail: dict[str, Any]) -> None:
    """Append one audit entry in a transaction of its own on the request's session (after the request's
    own commit or rollback, so a refused request is logged too and no second connection is needed)."""
    db.rollback()  # end whatever read transaction the response building opened
    db.add(AuditEntry(evaluator_id=evaluator_id, action=action, target=target[:100], status=status, detail=detail))
    db.commit()


# -- admin ------------------------------------------------------------------------------------------
def add_robot(db: Session, body: schemas.RobotIn) -> Robot:
    """Register a robot."""
    if db.scalar(select(Robot).where(Robot.name == body.name)) is not None:
        raise ArenaError(409, f"robot '{body.name}' exists already")
    robot = Robot(name=body.name, site=body.site, obs_shapes=body.obs_shapes, action_dim=body.action_dim,
                  action_mode=body.action_mode)
    db.add(robot)
    db.commit()
    return robot


def add_policy(db: Session, body: schemas.PolicyIn, timeout_s: float = 2.0) -> Policy:
    """Register a policy endpoint; with ``check`` it must answer with the spec it declares."""
    if db.scalar(select(Policy).where(Policy.name == body.name)) is not None:
        raise ArenaError(409, f"policy '{body.name}' exists already")
    policy = Policy(name=body.name, endpoint=body.endpoint, obs_shapes=body.obs_shapes, action_dim=body.action_dim,
                    action_mode=body.action_mode, tasks=list(body.tasks))
    if body.check:
        problem = probe_policy(policy, timeout_s)
        if problem:
            raise ArenaError(422, f"policy '{body.name}' at {body.endpoint}: {problem}")
        policy.health_checked_at = utcnow()
    db.add(policy)
    db.commit()
    return policy


def probe_policy(policy: Policy, timeout_s: float) -> str:
    """Health check: the endpoint greets with the protocol and the declared spec; '' when healthy."""
    from websockets.sync.client import connect

    from robot_learning.serve.wire import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, unpack

    try:
        with connect(policy.endpoint, open_timeout=timeout_s, max_size=MAX_MESSAGE_BYTES, proxy=None) as ws:
            hello = unpack(ws.recv(timeout=timeout_s))
    except Exception as exc:  # any failure to answer is "unhealthy", with its reason
        return f"unreachable: {type(exc).__name__}: {exc}"
    if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL_VERSION:
        return f"not a policy server (greeting {hello.get('type')!r}, protocol {hello.get('protocol')!r})"
    spec = hello.get("spec") or {}
    declared = {k: list(v) for k, v in policy.obs_shapes.items()}
    served = {k: list(v) for k, v in (spec.get("obs_shapes") or {}).items()}
    if served != declared or spec.get("action_dim") != policy.action_dim or spec.get("action_mode") != policy.action_mode:
        return (f"serves obs {served}, action_dim {spec.get('action_dim')}, mode {spec.get('action_mode')!r}; "
                f"declared obs {declared}, action_dim {policy.action_dim}, mode {policy.action_mode!r}")
    return ""


# -- sessions ----------------------------------------------------------------------------------------
def comparisons(db: Session, task: str | None = None) -> list[Comparison]:
    """Every valid vote as a comparison (in storage order)."""
    return [c for _, ok, c in vote_rows(db) if ok and (not task or c.task == task)]


def _healthy(db: Session, policies: list[Policy], settings: ArenaSettings) -> list[Policy]:
    """Re-probe stale health checks; keep the policies that answer."""
    if not settings.health_check:
        return policies
    now = utcnow()
    for p in policies:
        if p.health_checked_at is None or (now - as_utc(p.health_checked_at)).total_seconds() > settings.health_ttl_s:
            problem = probe_policy(p, settings.health_timeout_s)
            p.healthy, p.health_error, p.health_checked_at = not problem, problem, now
    db.commit()
    return [p for p in policies if p.healthy]


def start_session(db: Session, ev: Evaluator, body: schemas.SessionIn, settings: ArenaSettings,
                  rng: np.random.Generator, votes: VoteCache | None = None) -> ArenaSession:
    """Assign a compatible, healthy pair in random A/B order; store the sampling probabilities
    (from ``votes``, the server's shared cache, when given)."""
    robot = db.scalar(select(Robot).where(Robot.name == body.robot))
    if robot is None:
        raise ArenaError(404, f"robot '{body.robot}' is not registered")
    fits = []
    for p in db.scalars(select(Policy).where(Policy.active.is_(True)).order_by(Policy.id)):
        cand = Candidate(p.id, p.obs_shapes, p.action_dim, p.action_mode, tuple(p.tasks))
        if not compatible(cand, robot.obs_shapes, robot.action_dim, robot.action_mode, body.task):
            fits.append(p)
    healthy = _healthy(db, fits, settings)
    if len(healthy) < 2:
        raise ArenaError(409, f"robot '{robot.name}', task '{body.task}': {len(healthy)} compatible healthy "
                              f"policies ({len(fits)} compatible), need 2")
    ids = [p.id for p in healthy]
    weights = (votes.pair_weights(db, ids, settings.scheduler) if votes is not None
               else pair_weights(ids, comparisons(db), settings.scheduler))
    a, b, prob = choose_pair(weights, rng)
    session = ArenaSession(
        id=uuid.uuid4().hex, evaluator_id=ev.id, robot_id=robot.id, task=body.task, instruction=body.instruction,
        policy_a_id=a, policy_b_id=b, slot_key_a=secrets.token_urlsafe(24), slot_key_b=secrets.token_urlsafe(24),
        scheduler=settings.scheduler, pair_probability=prob, sampling=weights,
        expires_at=utcnow() + dt.timedelta(seconds=settings.session_ttl_s))
    db.add(session)
    db.commit()
    return session


def own_session(db: Session, ev: Evaluator, session_id: str, lock: bool = False) -> ArenaSession:
    """The evaluator's session (404 if unknown, 403 if someone else's); expired ones are marked so."""
    q = select(ArenaSession).where(ArenaSession.id == session_id)
    s = db.scalar(q.with_for_update() if lock else q)
    if s is None:
        raise ArenaError(404, f"session '{session_id[:40]}' does not exist")
    if s.evaluator_id != ev.id:
        raise ArenaError(403, f"session '{session_id}' belongs to another evaluator")
    if s.state == "open" and utcnow() > as_utc(s.expires_at):
        s.state = "expired"
        db.commit()
    return s


def reveal(db: Session, s: ArenaSession) -> dict[str, str] | None:
    """Slot -> policy name, only once the session has a stored vote."""
    if s.state != "voted":
        return None
    names = dict(db.execute(select(Policy.id, Policy.name).where(Policy.id.in_([s.policy_a_id, s.policy_b_id]))).all())
    return {"A": names[s.policy_a_id], "B": names[s.policy_b_id]}


def session_out(db: Session, s: ArenaSession, base_ws: str) -> schemas.SessionOut:
    """The evaluator's view of a session: no identity before the vote."""
    eps = db.scalars(select(ArenaEpisode).where(ArenaEpisode.session_id == s.id).order_by(ArenaEpisode.slot))
    robot = db.get(Robot, s.robot_id)
    return schemas.SessionOut(
        id=s.id, robot=robot.name if robot else "", task=s.task, instruction=s.instruction, state=s.state,
        invalid_reason=s.invalid_reason, expires_at=as_utc(s.expires_at),
        slots=[schemas.Slot(slot="A", endpoint=f"{base_ws}/ws/slot/{s.slot_key_a}"),
               schemas.Slot(slot="B", endpoint=f"{base_ws}/ws/slot/{s.slot_key_b}")],
        episodes=[schemas.EpisodeOut(slot=e.slot, status=e.status, success=e.success, steps=e.steps, seed=e.seed,
                                     store_uri=e.store_uri, store_episode=e.store_episode, has_video=bool(e.video))
                  for e in eps],
        reveal=reveal(db, s))


def _require_open(s: ArenaSession, what: str) -> None:
    if s.state == "expired":
        raise ArenaError(410, f"session '{s.id}' expired at {as_utc(s.expires_at).isoformat()}; {what} refused")
    if s.state == "invalid":
        raise ArenaError(409, f"session '{s.id}' was marked invalid ({s.invalid_reason}); {what} refused")
    if s.state == "voted":
        raise ArenaError(409, f"session '{s.id}' already has its vote; {what} refused")


def record_episode(db: Session, ev: Evaluator, session_id: str, body: schemas.EpisodeIn) -> ArenaEpisode:
    """Create or update the run of one slot (the client reports 'running' then 'done')."""
    s = own_session(db, ev, session_id, lock=True)
    _require_open(s, "episode report")
    ep = db.scalar(select(ArenaEpisode).where(ArenaEpisode.session_id == s.id, ArenaEpisode.slot == body.slot))
    if ep is None:
        ep = ArenaEpisode(session_id=s.id, slot=body.slot)
        db.add(ep)
    for k, v in body.model_dump().items():
        if k != "slot":
            setattr(ep, k, v)
    db.commit()
    return ep


def invalidate(db: Session, ev: Evaluator | None, session_id: str, reason: str) -> ArenaSession:
    """Mark an open session invalid with its reason (the client, or the proxy when a policy dies)."""
    q = select(ArenaSession).where(ArenaSession.id == session_id).with_for_update()
    s = db.scalar(q) if ev is None else own_session(db, ev, session_id, lock=True)
    if s is None:
        raise ArenaError(404, f"session '{session_id}' does not exist")
    if s.state == "invalid":
        return s  # idempotent: the first reason stays
    _require_open(s, "invalidation")
    s.state, s.invalid_reason = "invalid", reason
    db.commit()
    return s


def submit_vote(db: Session, ev: Evaluator, session_id: str, body: schemas.VoteIn) -> schemas.VoteOut:
    """Store the vote exactly once: a replay with the same idempotency key returns the stored vote."""
    replay = _replayed(db, ev, session_id, body.idempotency_key)
    if replay is not None:
        return replay
    s = own_session(db, ev, session_id, lock=True)
    if s.state == "voted":  # a concurrent request may have stored this very vote since the first look
        replay = _replayed(db, ev, session_id, body.idempotency_key)
        if replay is not None:
            return replay
    _require_open(s, "vote")
    vote = Vote(session_id=s.id, evaluator_id=ev.id, idempotency_key=body.idempotency_key, outcome=body.outcome,
                progress_a=body.progress_a, progress_b=body.progress_b, comment=body.comment, valid=body.valid,
                task=s.task, policy_a_id=s.policy_a_id, policy_b_id=s.policy_b_id)
    db.add(vote)
    s.state = "voted"
    try:
        db.commit()
    except IntegrityError:  # a concurrent request with the same key (or for the same session) won the race
        db.rollback()
        replay = _replayed(db, ev, session_id, body.idempotency_key)
        if replay is not None:
            return replay
        raise ArenaError(409, f"session '{session_id}' already has a vote under another idempotency key") from None
    return schemas.VoteOut(vote_id=vote.id, session_id=s.id, outcome=vote.outcome, replayed=False,
                           reveal=reveal(db, s) or {})


def _replayed(db: Session, ev: Evaluator, session_id: str, key: str) -> schemas.VoteOut | None:
    """The vote stored under ``key``, if it is this evaluator's vote on this session; 409 if the key was
    used for something else."""
    vote = db.scalar(select(Vote).where(Vote.idempotency_key == key))
    if vote is None:
        return None
    if vote.evaluator_id != ev.id or vote.session_id != session_id:
        raise ArenaError(409, f"idempotency key '{key}' was already used for another vote")
    s = db.get(ArenaSession, session_id)
    return schemas.VoteOut(vote_id=vote.id, session_id=session_id, outcome=vote.outcome, replayed=True,
                           reveal=reveal(db, s) or {})
