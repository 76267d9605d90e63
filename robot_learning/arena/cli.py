"""``rlstack arena``: serve the arena, register robots and policies, evaluate, print the leaderboard.

    rlstack arena serve                                   # SQLite at data/arena.db, http://127.0.0.1:8000
    rlstack arena serve-experts --token ADMIN --task push --qualities 1.0,0.5,0.3   # sim policies to compare
    rlstack arena evaluate --token TOKEN --task push --sessions 5     # sim robot through the policy node, simulated vote
    rlstack arena evaluate --token TOKEN --runner direct ...          # no ROS: RemotePolicy stepping PyBullet here
    rlstack arena leaderboard
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of ``rlstack arena``."""
    sub = parser.add_subparsers(dest="arena_command", metavar="ACTION", required=True)
    s = sub.add_parser("serve", help="run the arena web service (API, policy relay, pages)")
    s.add_argument("--db", default=os.environ.get("RLSTACK_ARENA_DB", "sqlite:///data/arena.db"),
                   help="database URL: sqlite:///file.db (default data/arena.db) or postgresql+psycopg://...")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 for every interface)")
    s.add_argument("--port", type=int, default=8000, help="HTTP port")
    s.add_argument("--scheduler", default="balanced", choices=("uniform", "balanced", "active"),
                   help="pair sampling: uniform, balanced (under-evaluated first) or active (CI width)")
    s.add_argument("--session-ttl", type=float, default=1800.0, help="seconds before an unvoted session expires")
    s.add_argument("--rate-limit", type=int, default=120, help="write requests per evaluator per minute")
    s.add_argument("--no-health-check", action="store_true", help="assign policies without probing them first")
    s.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the leaderboard CIs")
    s.add_argument("--admin-token-file", default="data/arena_admin_token",
                   help="where the first start writes the admin token (mode 600)")

    m = sub.add_parser("migrate", help="upgrade a database to the newest schema")
    m.add_argument("--db", default="sqlite:///data/arena.db", help="database URL")

    c = sub.add_parser("create-evaluator", help="create an evaluator directly in the database; prints its token")
    c.add_argument("name", help="evaluator name")
    c.add_argument("--db", default="sqlite:///data/arena.db", help="database URL")
    c.add_argument("--site", default="", help="lab / site name")
    c.add_argument("--admin", action="store_true", help="may register robots, policies and evaluators")

    x = sub.add_parser("serve-experts", help="serve sim scripted experts at several qualities and register them")
    _server_args(x)
    x.add_argument("--task", default="push", help="sim task (lift, push, push_t, stack)")
    x.add_argument("--qualities", default="1.0,0.5,0.3", help="comma-separated expert qualities in [0, 1]")
    x.add_argument("--robot", default="sim", help="name under which the sim robot is registered")

    e = sub.add_parser("evaluate", help="run arena sessions on a robot (sim by default) and vote")
    _server_args(e)
    e.add_argument("--robot", default="sim", help="registered robot name (sim: the PyBullet robot here)")
    e.add_argument("--task", default="push", help="task to evaluate")
    e.add_argument("--instruction", default="", help="instruction stated for the session")
    e.add_argument("--sessions", type=int, default=1, help="how many sessions to run")
    e.add_argument("--seed", type=int, default=0, help="seed of the first session's start state")
    e.add_argument("--max-steps", type=int, default=0, help="episode limit (0: the task's default)")
    e.add_argument("--store", default="data/arena.zarr", help="episode store the runs are recorded into ('' = none)")
    e.add_argument("--vote", choices=("auto", "ask"), default="auto",
                   help="auto: the simulated evaluator votes from the outcomes; ask: you type the verdict")
    e.add_argument("--name", default="", help="evaluator name stored as the episodes' operator")
    e.add_argument("--runner", choices=("node", "direct"), default="node",
                   help="node: every slot through the ROS 2 deploy graph (sim_robot + policy node on the slot URL); "
                        "direct: the policy-server client steps PyBullet in this process (faster, no ROS)")
    e.add_argument("--cameras", default="", help="node runner: comma-separated sim cameras (front,wrist) the robot "
                   "publishes, for policies that read images ('' = none)")
    e.add_argument("--image-size", type=int, default=96, help="node runner: camera image size in pixels")
    e.add_argument("--domain-id", type=int, default=-1, help="node runner: ROS_DOMAIN_ID (-1 = $ROS_DOMAIN_ID or 0)")
    e.add_argument("--log-dir", default="data/arena_logs", help="node runner: per-slot node logs")

    lb = sub.add_parser("leaderboard", help="print the current leaderboard")
    lb.add_argument("--server", default=DEFAULT_SERVER, help="arena URL")
    lb.add_argument("--task", default=None, help="only this task's votes")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=DEFAULT_SERVER, help="arena URL")
    p.add_argument("--token", default=os.environ.get("RLSTACK_ARENA_TOKEN", ""),
                   help="evaluator token (or RLSTACK_ARENA_TOKEN)")


def run(args: argparse.Namespace) -> int:
    """Dispatch one arena action."""
    from robot_learning.arena.client import ArenaClientError

    action = {"serve": _serve, "migrate": _migrate, "create-evaluator": _create_evaluator,
              "serve-experts": _serve_experts, "evaluate": _evaluate, "leaderboard": _leaderboard}[args.arena_command]
    try:
        return action(args)
    except ArenaClientError as exc:  # the server refused or is unreachable: its message, one line
        print(f"rlstack arena {args.arena_command}: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from robot_learning.arena.app import create_app
    from robot_learning.arena.services import ArenaSettings, create_evaluator

    settings = ArenaSettings(db_url=args.db, session_ttl_s=args.session_ttl, rate_limit_per_min=args.rate_limit,
                             health_check=not args.no_health_check, scheduler=args.scheduler, n_boot=args.n_boot)
    app = create_app(settings)
    from sqlalchemy import select

    from robot_learning.arena.models import Evaluator

    with app.state.factory() as db:
        if db.scalar(select(Evaluator).where(Evaluator.is_admin.is_(True))) is None:
            _, token = create_evaluator(db, "admin", is_admin=True)
            path = Path(args.admin_token_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(token + "\n")
            path.chmod(0o600)
            print(f"first start: admin token written to {path}", flush=True)
    print(f"arena on http://{args.host}:{args.port}/ui/leaderboard (database {app.state.engine.url.render_as_string()})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from robot_learning.arena.db import upgrade

    upgrade(args.db)
    print(f"{args.db}: schema at the newest revision")
    return 0


def _create_evaluator(args: argparse.Namespace) -> int:
    from robot_learning.arena.db import open_database
    from robot_learning.arena.services import ArenaError, create_evaluator

    _, factory = open_database(args.db)
    with factory() as db:
        try:
            ev, token = create_evaluator(db, args.name, args.site, args.admin)
        except ArenaError as exc:
            raise ValueError(exc.message) from None
    print(token)
    print(f"evaluator '{ev.name}' created{' (admin)' if ev.is_admin else ''}; the token above is shown only now",
          file=sys.stderr)
    return 0


def _api(args: argparse.Namespace):  # noqa: ANN202
    from robot_learning.arena.client import ArenaAPI

    if not args.token:
        raise ValueError("--token (or RLSTACK_ARENA_TOKEN) is required")
    return ArenaAPI(args.server, args.token)


def _serve_experts(args: argparse.Namespace) -> int:
    from robot_learning.arena.client import ArenaClientError, sim_provided
    from robot_learning.deploy.scripted import ExpertPolicy
    from robot_learning.serve.server import PolicyServer

    qualities = [float(q) for q in args.qualities.split(",") if q.strip()]
    if not qualities or any(not 0 <= q <= 1 for q in qualities):
        raise ValueError(f"--qualities {args.qualities!r}: comma-separated numbers in [0, 1]")
    api = _api(args)
    provided = sim_provided(args.task)
    try:
        api.request("POST", "/api/robots", json={"name": args.robot, "site": "sim", "obs_shapes": provided,
                                                 "action_dim": 5, "action_mode": "ee_delta"})
    except ArenaClientError as exc:
        if " 409 " not in str(exc):
            raise
    servers = []
    for q in qualities:
        policy = ExpertPolicy(task=args.task, quality=q)
        srv = PolicyServer(policy, port=0, name=f"expert-{args.task}-q{q:g}").start_in_thread()
        servers.append(srv)
        spec = policy.spec
        try:
            api.request("POST", "/api/policies", json={
                "name": srv.name, "endpoint": srv.url, "obs_shapes": {k: list(v) for k, v in spec.obs_shapes.items()},
                "action_dim": spec.action_dim, "action_mode": spec.action_mode, "tasks": [args.task]})
        except ArenaClientError as exc:
            if " 409 " not in str(exc):
                raise
            print(f"{srv.name} was registered before at another port; restart the arena database to re-register")
        print(f"serving {srv.name} on {srv.url}", flush=True)
    print("Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for srv in servers:
            srv.stop()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from robot_learning.arena.client import DirectRunner, NodeRunner, ask_vote, evaluate_session
    from sim.tasks import TASKS

    if args.sessions < 1:
        raise ValueError(f"--sessions {args.sessions}: must be >= 1")
    if args.task not in TASKS:
        raise ValueError(f"--task '{args.task}': choose from {', '.join(TASKS)}")
    api = _api(args)
    max_steps = args.max_steps or TASKS[args.task].max_steps
    close = lambda: None  # noqa: E731
    if args.runner == "node":
        runner = NodeRunner(task=args.task, max_steps=max_steps, store=args.store,
                            cameras=tuple(c for c in args.cameras.split(",") if c), image_size=args.image_size,
                            domain_id=args.domain_id, log_dir=args.log_dir)
    else:
        from sim import make_robot

        store = None
        if args.store:
            from robot_learning.data.store import EpisodeStore

            store = EpisodeStore.open(args.store, mode="a")
        robot = make_robot(task=args.task, cameras=(), render=False)
        runner = DirectRunner(robot, max_steps, store)
        close = robot.close
    bar = tqdm(range(args.sessions), desc="arena sessions", unit="session")
    voted = 0
    try:
        for k in bar:
            res = evaluate_session(api, args.robot, args.task, args.instruction, runner, args.seed + k, args.name,
                                   ask_vote if args.vote == "ask" else None, progress=lambda m: bar.write(m))
            voted += res.vote is not None
    finally:
        close()
        api.close()
    print(f"{voted}/{args.sessions} sessions voted; leaderboard: {args.server}/ui/leaderboard")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    import httpx

    params = {"task": args.task} if args.task else {}
    board = httpx.get(f"{args.server.rstrip('/')}/api/leaderboard", params=params, timeout=60).json()
    print(f"{board['n_votes']} valid votes, {board['n_bootstrap']} bootstrap resamples")
    print(f"{'rank':>6} {'policy':30s} {'score':>7} {'95% CI':>15} {'n':>5}")
    for r in board["rows"]:
        ci = f"{r['lower']:.0f}-{r['upper']:.0f}" if r["lower"] is not None else "-"
        print(f"{r['rank'] or '-':>6} {r['name']:30s} {r['score']:7.0f} {ci:>15} {r['comparisons']:5d}")
    return 0
