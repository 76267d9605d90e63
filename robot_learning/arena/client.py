"""The evaluator client: start a session, run slot A then B on the robot, record both, vote.

The pair arrives as two opaque per-session policy-server endpoints (the arena relays them), so the
client never learns which policies it ran until the vote is stored. Both slots start from the same
seed (matched start states) and are recorded into the episode store (``source=arena``, the session id
and the anonymous slot as tags, ``arena-slot-A``/``-B`` as the policy id). Two runners:

- ``NodeRunner`` (default): each slot runs through the normal deploy graph (``ros_nodes/deploy.py``):
  the ``sim_robot`` node started at the session's seed and the ROS 2 policy node with
  ``deploy.policy.server`` set to the slot's opaque URL, which records the episode itself;
- ``DirectRunner`` (``--runner direct``): the policy-server client (``RemotePolicy``) driven by
  ``PolicyAgent`` in this process on a PyBullet robot, no ROS; faster, for quick checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from robot_learning.data.layout import CONTROL_SOURCES, STEP_SCHEMA

PRIVILEGED_KEY = "privileged_state"  # what the served scripted experts read (robot_learning/deploy/scripted.py)


class ArenaClientError(RuntimeError):
    """The arena refused a request; the message is the server's."""


@dataclass
class SlotRun:
    """What one slot did."""

    slot: str
    success: bool = False
    steps: int = 0
    seed: int = 0
    progress: float = 0.0
    store_episode: int | None = None
    error: str = ""


@dataclass
class SessionResult:
    """One finished session."""

    session_id: str
    runs: dict[str, SlotRun] = field(default_factory=dict)
    vote: dict[str, Any] | None = None
    invalid_reason: str = ""


class ArenaAPI:
    """Thin JSON client of the arena API with retries on connection errors and 5xx."""

    def __init__(self, server: str, token: str, timeout_s: float = 30.0, retries: int = 5) -> None:
        self.http = httpx.Client(base_url=server.rstrip("/"), timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {token}"})
        self.retries = retries

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """One call; connection failures and server errors are retried (votes are idempotent)."""
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                r = self.http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ArenaClientError(f"arena {self.http.base_url}{path} unreachable: {exc}") from exc
            else:
                if r.status_code < 500 or attempt == self.retries:
                    if r.status_code >= 400:
                        detail = r.json().get("detail", r.text) if "json" in r.headers.get("content-type", "") else r.text
                        raise ArenaClientError(f"arena {method} {path}: {r.status_code} {detail}")
                    return r.json()
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()


def sim_provided(task: str, cameras: tuple[str, ...] = (), image_size: int = 96) -> dict[str, list[int]]:
    """Observation shapes the sim robot provides for ``task`` (plus its privileged state)."""
    from sim import make_robot
    from sim.privileged import privileged_layout

    robot = make_robot(task=task, cameras=cameras, image_size=image_size, render=bool(cameras))
    try:
        shapes = {k: list(s.shape) for k, s in robot.spec.observations.items()}
    finally:
        robot.close()
    shapes[PRIVILEGED_KEY] = [sum(privileged_layout(task).values())]
    return shapes


def sim_observation(robot: Any, obs: Any) -> dict[str, np.ndarray]:
    """The robot's observation plus the flat privileged-state vector the served experts read."""
    from sim.privileged import privileged_segments

    data = dict(obs.data)
    data[PRIVILEGED_KEY] = np.concatenate(list(privileged_segments(robot).values())).astype(np.float32)
    return data


def progress_of(success: bool, steps: int, max_steps: int) -> float:
    """The simulated evaluator's progress score: 100 x success, minus up to 20 for a slow success."""
    return 0.0 if not success else 100.0 - 20.0 * steps / max(max_steps, 1)


def auto_vote(a: SlotRun, b: SlotRun, margin: float = 5.0) -> str:
    """The simulated evaluator's verdict from the two progress scores."""
    if a.progress == 0 and b.progress == 0:
        return "both_bad"
    if abs(a.progress - b.progress) < margin:
        return "tie"
    return "A" if a.progress > b.progress else "B"


@dataclass
class SlotRecord:
    """What every recorded arena episode carries besides its steps."""

    session_id: str
    slot: str
    seed: int
    task: str
    instruction: str = ""
    operator: str = ""

    def tags(self) -> dict[str, Any]:
        """Episode tags naming the session and the anonymous slot."""
        return {"arena_session": self.session_id, "arena_slot": self.slot, "seed": self.seed}

    @property
    def policy_id(self) -> str:
        """The anonymous policy id the episode is stored under."""
        return f"arena-slot-{self.slot}"


class DirectRunner:
    """Runs a slot in this process: ``RemotePolicy`` + ``PolicyAgent`` stepping a PyBullet robot."""

    name = "direct"

    def __init__(self, robot: Any, max_steps: int, store: Any = None) -> None:
        self.robot, self.max_steps, self.store = robot, max_steps, store

    @property
    def store_uri(self) -> str:
        """Where the episodes go ('' = not recorded)."""
        return str(getattr(self.store, "uri", "") or "") if self.store is not None else ""

    def run(self, endpoint: str, rec: SlotRecord) -> SlotRun:
        """One episode of the slot's policy from ``rec.seed``; raises PolicyServerError if the server fails."""
        from robot_learning.data.store import EpisodeMeta
        from robot_learning.eval.policy_agent import PolicyAgent
        from robot_learning.serve.client import RemotePolicy

        robot, run = self.robot, SlotRun(slot=rec.slot, seed=rec.seed)
        obs = robot.reset(seed=rec.seed)
        data = sim_observation(robot, obs)
        remote = RemotePolicy(endpoint, obs_shapes={k: v.shape for k, v in data.items()},
                              action_dim=robot.spec.action_dim, action_mode=robot.action_mode)
        writer = None
        if self.store is not None:
            writer = self.store.begin_episode(EpisodeMeta(
                task=rec.task, source="arena", operator=rec.operator, policy_id=rec.policy_id,
                instruction=rec.instruction, rates={"step": float(robot.control_hz)}, tags=rec.tags()))
        try:
            agent = PolicyAgent(remote)
            agent.reset(seed=rec.seed)
            success = robot.success()
            while not success and run.steps < self.max_steps:
                action = np.asarray(agent.act(data), dtype=np.float32)
                tick = time.time()
                robot.act(action)
                run.steps += 1
                success = robot.success()
                if writer is not None:
                    writer.append({**_recorded(obs.data), "action": action,
                                   **_step_fields(success, done=success or run.steps >= self.max_steps)},
                                  {**obs.stamps, "step": tick})
                obs = robot.observe()
                data = sim_observation(robot, obs)
            run.success = bool(success)
            if writer is not None:
                run.store_episode = writer.commit(success=run.success)
                writer = None
        finally:
            if writer is not None:
                writer.discard()
            remote.close()
        run.progress = progress_of(run.success, run.steps, self.max_steps)
        return run


class SlotFailed(RuntimeError):
    """A slot could not be run to its end (policy server or node failure): the session is invalid."""


@dataclass
class NodeRunner:
    """Runs a slot through the ROS 2 deploy graph: ``sim_robot`` at the seed + the policy node on the slot URL."""

    task: str
    max_steps: int
    store: str = ""  # episode store path ('' = not recorded); the policy node records into it
    cameras: tuple[str, ...] = ()
    image_size: int = 96
    domain_id: int = -1  # -1: $ROS_DOMAIN_ID (or 0)
    log_dir: str = "data/arena_logs"
    overrides: tuple[str, ...] = ()  # further ``rlstack deploy`` overrides (e.g. robot.control_hz=10)
    name = "node"

    @property
    def store_uri(self) -> str:
        """Where the episodes go ('' = not recorded)."""
        return self.store

    def run(self, endpoint: str, rec: SlotRecord) -> SlotRun:
        """One deployed episode of the slot; SlotFailed naming the cause if the node or the server failed."""
        # `rlstack deploy` in its own process: the arena (robot_learning) never imports ros_nodes, and the
        # graph is exactly the one an engineer deploys; its deploy_report.json is the result.
        log_dir = Path(self.log_dir) / f"{rec.session_id}-{rec.slot}"
        tags = ",".join(f"{k}:{v if isinstance(v, int | float) else _quoted(v)}" for k, v in rec.tags().items())
        overrides = [f"task={self.task}", f"deploy.policy.server={_quoted(endpoint)}", "episodes=1",
                     f"max_steps={self.max_steps}", f"robot.seed={rec.seed}", f"robot.image_size={self.image_size}",
                     f"robot.cameras=[{','.join(self.cameras)}]", f"domain_id={self.domain_id}",
                     f"log_dir={_quoted(str(log_dir))}", f"store={_quoted(self.store or 'none')}",
                     "deploy.record.source=arena", f"deploy.record.policy_id={_quoted(rec.policy_id)}",
                     f"deploy.record.instruction={_quoted(rec.instruction)}", f"operator={_quoted(rec.operator)}",
                     f"++deploy.record.tags={{{tags}}}", *self.overrides]  # ++: the default {} has no keys to override
        report_path = log_dir / "deploy_report.json"
        report_path.unlink(missing_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "deploy.log").open("w") as log:
            proc = subprocess.run([sys.executable, "-m", "robot_learning.cli", "deploy", *overrides],
                                  stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0 or not report_path.exists():
            tail = (log_dir / "deploy.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise SlotFailed(f"deploy graph failed (exit {proc.returncode}: {' | '.join(tail)}); logs in {log_dir}")
        report = json.loads(report_path.read_text())
        errors = int(report["diagnostics"].get("inference_errors") or 0)
        if errors:
            raise SlotFailed(f"the policy node saw {errors} inference error(s) from the slot's policy server; "
                             f"logs in {log_dir}")
        if report["seeds"] != [rec.seed]:
            raise SlotFailed(f"sim_robot started seed {report['seeds']}, not the session's {rec.seed}")
        run = SlotRun(slot=rec.slot, seed=rec.seed, success=bool(report["per_episode_success"][0]),
                      steps=int(report["steps"][0]))
        run.progress = progress_of(run.success, run.steps, self.max_steps)
        run.store_episode = self._stored_episode(rec) if self.store else None
        return run

    def _stored_episode(self, rec: SlotRecord) -> int:
        """Index of the episode the policy node recorded for this slot."""
        from robot_learning.data.store import EpisodeStore

        store = EpisodeStore.open(self.store, mode="r")
        try:
            found = [e.index for e in store.episodes() if e.meta.tags.get("arena_session") == rec.session_id
                     and e.meta.tags.get("arena_slot") == rec.slot]
        finally:
            store.close()
        if not found:
            raise SlotFailed(f"the policy node recorded no episode of slot {rec.slot} into {self.store}")
        return found[-1]


def _quoted(value: Any) -> str:
    """A Hydra override value quoted so spaces, commas and quotes survive."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _recorded(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in data.items()}


def _step_fields(success: bool, done: bool) -> dict[str, np.ndarray]:
    values = {"reward": float(success), "done": done, "terminal": success, "intervention": False,
              "control_source": CONTROL_SOURCES.index("policy")}
    return {k: np.asarray(values[k], dtype=dt) for k, dt in STEP_SCHEMA.items()}


def evaluate_session(api: ArenaAPI, robot_name: str, task: str, instruction: str, runner: Any, seed: int,
                     evaluator: str = "", decide: Callable[[SlotRun, SlotRun], tuple[str, float, float]] | None = None,
                     progress: Callable[[str], None] = print) -> SessionResult:
    """One full session: start, run A then B from ``seed`` with ``runner``, report both runs, vote (or invalidate)."""
    from robot_learning.serve.client import PolicyServerError

    s = api.request("POST", "/api/sessions", json={"robot": robot_name, "task": task, "instruction": instruction})
    sid = s["id"]
    result = SessionResult(session_id=sid)
    progress(f"session {sid[:8]}: task '{task}', instruction '{instruction}' ({runner.name} runner)")
    for slot in ("A", "B"):
        endpoint = next(x["endpoint"] for x in s["slots"] if x["slot"] == slot)
        api.request("POST", f"/api/sessions/{sid}/episodes", json={"slot": slot, "status": "running", "seed": seed})
        rec = SlotRecord(session_id=sid, slot=slot, seed=seed, task=task, instruction=instruction, operator=evaluator)
        try:
            run = runner.run(endpoint, rec)
            current = api.request("GET", f"/api/sessions/{sid}")
            if current["state"] != "open":  # the relay saw the policy server die mid-episode
                raise SlotFailed(current["invalid_reason"] or f"session is {current['state']}")
        except (PolicyServerError, SlotFailed, ValueError) as exc:
            result.invalid_reason = f"slot {slot}: {exc}"
            api.request("POST", f"/api/sessions/{sid}/episodes", json={"slot": slot, "status": "failed", "seed": seed})
            current = api.request("GET", f"/api/sessions/{sid}")
            if current["state"] == "open":
                api.request("POST", f"/api/sessions/{sid}/invalidate", json={"reason": result.invalid_reason[:1000]})
            progress(f"session {sid[:8]}: invalid ({result.invalid_reason})")
            return result
        result.runs[slot] = run
        api.request("POST", f"/api/sessions/{sid}/episodes", json={
            "slot": slot, "status": "done", "success": run.success, "steps": run.steps, "seed": seed,
            "store_uri": runner.store_uri, "store_episode": run.store_episode})
        progress(f"session {sid[:8]}: slot {slot} {'succeeded' if run.success else 'failed'} in {run.steps} steps")
    a, b = result.runs["A"], result.runs["B"]
    outcome, pa, pb = decide(a, b) if decide else (auto_vote(a, b), a.progress, b.progress)
    result.vote = api.request("POST", f"/api/sessions/{sid}/vote", json={
        "idempotency_key": f"{sid}-{uuid.uuid4().hex[:8]}", "outcome": outcome, "progress_a": pa,
        "progress_b": pb, "comment": "", "valid": True})
    reveal = result.vote["reveal"]
    progress(f"session {sid[:8]}: voted {outcome}; A was {reveal['A']}, B was {reveal['B']}")
    return result


def ask_vote(a: SlotRun, b: SlotRun) -> tuple[str, float, float]:
    """Ask the person at the terminal for the verdict."""
    print(f"A: {'success' if a.success else 'failure'} in {a.steps} steps; B: {'success' if b.success else 'failure'} in {b.steps} steps")
    while True:
        outcome = input("which did better? [A/B/tie/both_bad]: ").strip()
        if outcome in ("A", "B", "tie", "both_bad"):
            break
    pa = float(input("progress of A (0-100): ") or a.progress)
    pb = float(input("progress of B (0-100): ") or b.progress)
    return outcome, pa, pb
