"""The arena web service: JSON API under ``/api``, anonymous policy proxy under ``/ws``, pages under ``/ui``.

``create_app(settings)`` migrates the database and returns the FastAPI app; ``rlstack arena serve``
runs it with uvicorn. Every write is authenticated, rate limited, validated and audited.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from robot_learning.arena import schemas, services
from robot_learning.arena.cache import VoteCache
from robot_learning.arena.db import open_database
from robot_learning.arena.models import Policy, Robot
from robot_learning.arena.services import ArenaError, ArenaSettings

TOKEN_COOKIE = "arena_token"


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Callable) -> None:
        body = f'{{"detail": "request body over {self.limit} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def _retry_later(why: str) -> JSONResponse:
    """503 + Retry-After for a transient server state; votes are idempotent, so resending is safe."""
    return JSONResponse({"detail": f"{why}; retry the request (a vote with the same idempotency key is stored once)"},
                        status_code=503, headers={"Retry-After": "1"})


def create_app(settings: ArenaSettings | None = None) -> FastAPI:
    """The arena app over ``settings.db_url`` (migrated to the newest schema first)."""
    settings = (settings or ArenaSettings()).validate()
    engine, factory = open_database(settings.db_url)
    app = FastAPI(title="rlstack policy arena", version="1", responses=schemas.ERROR_RESPONSES,
                  description="Double-blind pairwise A/B evaluation of robot policies with a Bradley-Terry leaderboard.")
    app.state.settings, app.state.engine, app.state.factory = settings, engine, factory
    app.state.limiter = services.RateLimiter(settings.rate_limit_per_min)
    app.state.boards = VoteCache(settings.weights_max_age_s)  # votes, pair weights and leaderboards, shared
    app.state.rng = np.random.default_rng(settings.seed)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(ArenaError)
    async def _arena_error(request: Request, exc: ArenaError) -> JSONResponse:
        if request.url.path.startswith("/ui"):
            from robot_learning.arena.ui import error_page

            return error_page(request, exc.status, exc.message)
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(DBAPIError)
    async def _database_down(request: Request, exc: DBAPIError) -> JSONResponse:
        # a lost connection (database restarted, backend terminated) is the server's transient state,
        # not a bug: 503 with Retry-After; votes are idempotent, so the client resends the same key
        if not (exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))):
            raise exc
        return _retry_later(f"database unavailable ({type(exc.orig).__name__})")

    @app.exception_handler(PoolTimeoutError)
    async def _pool_exhausted(request: Request, exc: PoolTimeoutError) -> JSONResponse:
        # every pooled connection busy for pool_timeout: overload, not a bug; the client backs off and resends
        return _retry_later("server busy (no free database connection)")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        text = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors)
        if request.url.path.startswith("/ui"):
            from robot_learning.arena.ui import error_page

            return error_page(request, 422, text)
        return JSONResponse({"detail": text, "errors": errors}, status_code=422)

    def get_db() -> Iterator[Session]:
        db = factory()
        try:
            yield db
        finally:
            try:
                db.close()
            except DBAPIError as exc:  # the connection died after the response was built (it only held a read)
                if not exc.connection_invalidated:
                    raise

    def token_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(TOKEN_COOKIE)

    def write(request: Request, db: Session, action: str, target: str, fn: Callable[[Any], Any],
              admin: bool = False) -> Any:
        """Authenticate, rate-limit, run ``fn(evaluator)`` and audit the outcome."""
        ev_id = None
        try:
            ev = services.authenticate(db, token_of(request))
            ev_id = ev.id
            if admin and not ev.is_admin:
                raise ArenaError(403, f"'{action}' needs an admin token")
            if not ev.is_admin:  # admins register robots/policies in bulk; evaluators are limited
                app.state.limiter.check(ev.id)
            result = fn(ev)
        except ArenaError as exc:
            db.rollback()
            services.audit(db, ev_id, action, target, exc.status, {"error": exc.message[:500]})
            raise
        services.audit(db, ev_id, action, target, 200, {})
        return result

    app.state.write, app.state.token_of, app.state.get_db = write, token_of, get_db

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Liveness and the database backend."""
        return {"ok": True, "backend": engine.dialect.name}

    @app.post("/api/evaluators", response_model=schemas.EvaluatorOut)
    def new_evaluator(body: schemas.EvaluatorIn, request: Request, db: Session = Depends(get_db)) -> Any:
        """Admin: create an evaluator; the token is in this response only."""
        def run(_ev: Any) -> schemas.EvaluatorOut:
            ev, token = services.create_evaluator(db, body.name, body.site, body.is_admin)
            return schemas.EvaluatorOut(id=ev.id, name=ev.name, token=token)
        return write(request, db, "create_evaluator", body.name, run, admin=True)

    @app.post("/api/robots")
    def new_robot(body: schemas.RobotIn, request: Request, db: Session = Depends(get_db)) -> dict[str, Any]:
        """Admin: register a robot and what it provides."""
        robot = write(request, db, "add_robot", body.name, lambda _ev: services.add_robot(db, body), admin=True)
        return {"id": robot.id, "name": robot.name}

    @app.get("/api/robots")
    def robots(request: Request, db: Session = Depends(get_db)) -> list[dict[str, Any]]:
        """Registered robots (any evaluator)."""
        services.authenticate(db, token_of(request))
        return [{"name": r.name, "site": r.site, "obs_shapes": r.obs_shapes, "action_dim": r.action_dim,
                 "action_mode": r.action_mode} for r in db.scalars(select(Robot).order_by(Robot.name))]

    @app.post("/api/policies")
    def new_policy(body: schemas.PolicyIn, request: Request, db: Session = Depends(get_db)) -> dict[str, Any]:
        """Admin: register a policy-server endpoint (health-checked unless ``check`` is false)."""
        policy = write(request, db, "add_policy", body.name,
                       lambda _ev: services.add_policy(db, body, settings.health_timeout_s), admin=True)
        return {"id": policy.id, "name": policy.name}

    @app.get("/api/policies")
    def policies(request: Request, db: Session = Depends(get_db)) -> list[dict[str, Any]]:
        """Admin: registered policies with their endpoints and health."""
        ev = services.authenticate(db, token_of(request))
        if not ev.is_admin:
            raise ArenaError(403, "listing policy endpoints needs an admin token")
        return [{"id": p.id, "name": p.name, "endpoint": p.endpoint, "healthy": p.healthy,
                 "health_error": p.health_error, "tasks": p.tasks} for p in db.scalars(select(Policy).order_by(Policy.id))]

    def base_ws(request: Request) -> str:
        return str(request.base_url).rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)

    @app.post("/api/sessions", response_model=schemas.SessionOut)
    def new_session(body: schemas.SessionIn, request: Request, db: Session = Depends(get_db)) -> Any:
        """Start a session: the pair comes back as two anonymous slot endpoints."""
        s = write(request, db, "start_session", body.robot,
                  lambda ev: services.start_session(db, ev, body, settings, app.state.rng, app.state.boards))
        return services.session_out(db, s, base_ws(request))

    @app.get("/api/sessions/{session_id}", response_model=schemas.SessionOut)
    def get_session(session_id: str, request: Request, db: Session = Depends(get_db)) -> Any:
        """The evaluator's own session; identities only after the vote."""
        ev = services.authenticate(db, token_of(request))
        return services.session_out(db, services.own_session(db, ev, session_id), base_ws(request))

    @app.post("/api/sessions/{session_id}/episodes")
    def post_episode(session_id: str, body: schemas.EpisodeIn, request: Request,
                     db: Session = Depends(get_db)) -> dict[str, Any]:
        """The evaluator client reports a slot's run and where it is recorded."""
        ep = write(request, db, "episode", session_id, lambda ev: services.record_episode(db, ev, session_id, body))
        return {"slot": ep.slot, "status": ep.status}

    @app.post("/api/sessions/{session_id}/invalidate")
    def post_invalidate(session_id: str, body: schemas.InvalidateIn, request: Request,
                        db: Session = Depends(get_db)) -> dict[str, Any]:
        """Mark the session invalid with a reason (it is then left out of the ranking)."""
        s = write(request, db, "invalidate", session_id, lambda ev: services.invalidate(db, ev, session_id, body.reason))
        return {"id": s.id, "state": s.state, "invalid_reason": s.invalid_reason}

    @app.post("/api/sessions/{session_id}/vote", response_model=schemas.VoteOut)
    def post_vote(session_id: str, body: schemas.VoteIn, request: Request, db: Session = Depends(get_db)) -> Any:
        """Store the verdict (idempotent by key) and reveal the pair to this evaluator."""
        return write(request, db, "vote", session_id, lambda ev: services.submit_vote(db, ev, session_id, body))

    @app.get("/api/leaderboard")
    def get_leaderboard(task: str | None = None, db: Session = Depends(get_db)) -> dict[str, Any]:
        """Bradley-Terry-Davidson ranking with bootstrap CIs (public; ``task`` for the per-task variant)."""
        board = app.state.boards.get(db, settings.n_boot, task)
        return clean({"n_votes": board.n_votes, "n_bootstrap": board.n_bootstrap, "tie_log_nu": board.log_nu,
                      "task": task, "rows": board.rows})

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/leaderboard")

    from robot_learning.arena.proxy import add_proxy
    from robot_learning.arena.ui import add_pages

    add_proxy(app)
    add_pages(app)
    return app
