"""Server-rendered pages (Jinja2, no JavaScript build): login, evaluate, session, leaderboard, policy.

Pages authenticate with the same token as the API, kept in an HttpOnly, SameSite=Strict cookie (which
also keeps other sites from posting forms with it).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from robot_learning.arena import schemas, services
from robot_learning.arena.app import TOKEN_COOKIE
from robot_learning.arena.models import ArenaEpisode, ArenaSession, Policy, Robot, Vote
from robot_learning.arena.services import ArenaError

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _fmt(x: Any, digits: int = 0) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


TEMPLATES.env.filters["fmt"] = _fmt


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """An HTML error with the same message the API gives."""
    return TEMPLATES.TemplateResponse(request, "error.html", {"status": status, "message": message, "me": None},
                                      status_code=status)


def add_pages(app: FastAPI) -> None:
    """Register the HTML pages on ``app``."""
    get_db, token_of, write = app.state.get_db, app.state.token_of, app.state.write
    settings = app.state.settings

    def me(request: Request, db: Session) -> Any:
        token = token_of(request)
        return services.authenticate(db, token) if token else None

    def page(request: Request, name: str, db: Session, **ctx: Any) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"me": me(request, db), **ctx})

    @app.get("/ui/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
        return page(request, "login.html", db)

    @app.post("/ui/login", include_in_schema=False)
    def login(token: str = Form(max_length=200), db: Session = Depends(get_db)) -> Response:
        services.authenticate(db, token.strip())
        resp = RedirectResponse("/ui/evaluate", status_code=303)
        resp.set_cookie(TOKEN_COOKIE, token.strip(), httponly=True, samesite="strict")
        return resp

    @app.post("/ui/logout", include_in_schema=False)
    def logout() -> Response:
        resp = RedirectResponse("/ui/login", status_code=303)
        resp.delete_cookie(TOKEN_COOKIE)
        return resp

    @app.get("/ui/evaluate", response_class=HTMLResponse, include_in_schema=False)
    def evaluate(request: Request, db: Session = Depends(get_db)) -> Response:
        ev = me(request, db)
        if ev is None:
            return RedirectResponse("/ui/login", status_code=303)
        sessions = db.scalars(select(ArenaSession).where(ArenaSession.evaluator_id == ev.id)
                              .order_by(ArenaSession.created_at.desc()).limit(20)).all()
        robots = db.scalars(select(Robot).order_by(Robot.name)).all()
        return page(request, "evaluate.html", db, robots=robots, sessions=sessions)

    @app.post("/ui/sessions", include_in_schema=False)
    def start(request: Request, robot: str = Form(max_length=100), task: str = Form(max_length=100),
              instruction: str = Form("", max_length=1000), db: Session = Depends(get_db)) -> Response:
        body = schemas.SessionIn(robot=robot, task=task, instruction=instruction)
        s = write(request, db, "start_session", robot,
                  lambda ev: services.start_session(db, ev, body, settings, app.state.rng, app.state.boards))
        return RedirectResponse(f"/ui/sessions/{s.id}", status_code=303)

    @app.get("/ui/sessions/{session_id}", response_class=HTMLResponse, include_in_schema=False)
    def session_page(session_id: str, request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
        ev = services.authenticate(db, token_of(request))
        s = services.own_session(db, ev, session_id)
        base = str(request.base_url).rstrip("/").replace("http", "ws", 1)
        view = services.session_out(db, s, base)
        vote = db.scalar(select(Vote).where(Vote.session_id == s.id))
        eps = {e.slot: e for e in db.scalars(select(ArenaEpisode).where(ArenaEpisode.session_id == s.id))}
        return page(request, "session.html", db, s=view, vote=vote, eps=eps)

    @app.post("/ui/sessions/{session_id}/vote", include_in_schema=False)
    def vote(session_id: str, request: Request, idempotency_key: str = Form(max_length=100),
             outcome: str = Form(max_length=10), progress_a: float = Form(), progress_b: float = Form(),
             comment: str = Form("", max_length=2000), valid: bool = Form(False),
             db: Session = Depends(get_db)) -> Response:
        body = schemas.VoteIn(idempotency_key=idempotency_key, outcome=outcome, progress_a=progress_a,
                              progress_b=progress_b, comment=comment, valid=valid)
        write(request, db, "vote", session_id, lambda ev: services.submit_vote(db, ev, session_id, body))
        return RedirectResponse(f"/ui/sessions/{session_id}", status_code=303)

    @app.get("/ui/episodes/{episode_id}/video", include_in_schema=False)
    def video(episode_id: int, request: Request, db: Session = Depends(get_db)) -> Response:
        ev = services.authenticate(db, token_of(request))
        ep = db.get(ArenaEpisode, episode_id)
        if ep is None or not ep.video:
            raise ArenaError(404, f"episode {episode_id} has no video")
        s = services.own_session(db, ev, ep.session_id)
        if s.state != "voted":
            raise ArenaError(403, "videos are shown after the vote")
        path, root = Path(ep.video).resolve(), Path(settings.video_dir).resolve()
        if not path.is_relative_to(root):  # the path came from a client: never serve files outside the folder
            raise ArenaError(403, f"video of episode {episode_id} is outside the arena's video folder")
        if not path.is_file():
            raise ArenaError(404, f"video file of episode {episode_id} is not on this server")
        return FileResponse(path, media_type="video/mp4")

    @app.get("/ui/leaderboard", response_class=HTMLResponse, include_in_schema=False)
    def board(request: Request, task: str | None = None, db: Session = Depends(get_db)) -> HTMLResponse:
        lb = app.state.boards.get(db, settings.n_boot, task or None)
        tasks = sorted({t for (t,) in db.execute(select(Vote.task).distinct())})
        return page(request, "leaderboard.html", db, board=lb, task=task or "", tasks=tasks)

    @app.get("/ui/leaderboard.png", include_in_schema=False)
    def board_png(task: str | None = None, db: Session = Depends(get_db)) -> Response:
        lb = app.state.boards.get(db, settings.n_boot, task or None)
        return Response(leaderboard_png(lb.rows), media_type="image/png")

    @app.get("/ui/policies/{policy_id}", response_class=HTMLResponse, include_in_schema=False)
    def policy_page(policy_id: int, request: Request, db: Session = Depends(get_db)) -> HTMLResponse:
        p = db.get(Policy, policy_id)
        if p is None:
            raise ArenaError(404, f"policy {policy_id} does not exist")
        lb = app.state.boards.get(db, settings.n_boot)
        row = next((r for r in lb.rows if r["policy_id"] == policy_id), None)
        return page(request, "policy.html", db, p=p, row=row, opponents=_head_to_head(db, policy_id))



def _head_to_head(db: Session, pid: int) -> list[dict[str, Any]]:
    """Wins / ties / losses of ``pid`` against each opponent (valid votes)."""
    names = dict(db.execute(select(Policy.id, Policy.name)).all())
    table: dict[int, dict[str, Any]] = {}
    for c in services.comparisons(db):
        if pid not in (c.a, c.b):
            continue
        other = c.b if c.a == pid else c.a
        row = table.setdefault(other, {"name": names.get(other, str(other)), "win": 0, "tie": 0, "loss": 0})
        mine = "A" if c.a == pid else "B"
        row["tie" if c.outcome in ("tie", "both_bad") else "win" if c.outcome == mine else "loss"] += 1
    return sorted(table.values(), key=lambda r: r["name"])


def leaderboard_png(rows: list[dict[str, Any]]) -> bytes:
    """Scores with their intervals as a horizontal error-bar plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = [r for r in rows if r["rank"] is not None][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * max(len(ranked), 2) + 1))
    if ranked:
        y = range(len(ranked))
        s = [r["score"] for r in ranked]
        lo = [max(r["score"] - r["lower"], 0.0) if math.isfinite(r["lower"]) else 0 for r in ranked]
        hi = [max(r["upper"] - r["score"], 0.0) if math.isfinite(r["upper"]) else 0 for r in ranked]
        ax.errorbar(s, list(y), xerr=[lo, hi], fmt="o", capsize=3)
        ax.set_yticks(list(y), [f"#{r['rank']} {r['name']}" for r in ranked])
    ax.set_xlabel("Bradley-Terry score (95% bootstrap CI)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
