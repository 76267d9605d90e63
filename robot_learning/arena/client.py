"""The evaluator client: start a session, run slot A then B on the robot, record both, vote.

The pair arrives as two opaque per-session policy-server endpoints (the arena relays them), so the
client never learns which policies it ran until the vote is stored. Each slot runs through the policy
server client (``robot_learning.serve.client.RemotePolicy``) driven by ``PolicyAgent`` directly on the
sim robot, from the same seed (matched start states), and is recorded into the episode store
(``source=arena``, the session id and the anonymous slot as its policy id). The ROS 2 policy node
path (``rlstack deploy``) is not used here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
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


def run_slot(endpoint: str, robot: Any, slot: str, seed: int, max_steps: int,
             writer_factory: Callable | None) -> SlotRun:
    """One episode of the slot's policy on ``robot`` from ``seed``; recorded if ``writer_factory``."""
    from robot_learning.eval.policy_agent import PolicyAgent
    from robot_learning.serve.client import RemotePolicy

    run = SlotRun(slot=slot, seed=seed)
    obs = robot.reset(seed=seed)
    data = sim_observation(robot, obs)
    remote = RemotePolicy(endpoint, obs_shapes={k: v.shape for k, v in data.items()},
                          action_dim=robot.spec.action_dim, action_mode=robot.action_mode)
    writer = writer_factory(slot, seed) if writer_factory else None
    try:
        agent = PolicyAgent(remote)
        agent.reset(seed=seed)
        success = robot.success()
        while not success and run.steps < max_steps:
            action = np.asarray(agent.act(data), dtype=np.float32)
            tick = time.time()
            robot.act(action)
            run.steps += 1
            success = robot.success()
            if writer is not None:
                writer.append({**_recorded(obs.data), "action": action,
                               **_step_fields(success, done=success or run.steps >= max_steps)},
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
    run.progress = progress_of(run.success, run.steps, max_steps)
    return run


def _recorded(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in data.items()}


def _step_fields(success: bool, done: bool) -> dict[str, np.ndarray]:
    values = {"reward": float(success), "done": done, "terminal": success, "intervention": False,
              "control_source": CONTROL_SOURCES.index("policy")}
    return {k: np.asarray(values[k], dtype=dt) for k, dt in STEP_SCHEMA.items()}


def evaluate_session(api: ArenaAPI, robot_name: str, task: str, instruction: str, robot: Any, seed: int,
                     max_steps: int, store: Any = None, evaluator: str = "",
                     decide: Callable[[SlotRun, SlotRun], tuple[str, float, float]] | None = None,
                     progress: Callable[[str], None] = print) -> SessionResult:
    """One full session: start, run A then B from ``seed``, report both runs, vote (or invalidate)."""
    s = api.request("POST", "/api/sessions", json={"robot": robot_name, "task": task, "instruction": instruction})
    sid = s["id"]
    result = SessionResult(session_id=sid)
    progress(f"session {sid[:8]}: task '{task}', instruction '{instruction}'")

    def writer_factory(slot: str, ep_seed: int) -> Any:
        from robot_learning.data.store import EpisodeMeta

        meta = EpisodeMeta(task=task, source="arena", operator=evaluator, policy_id=f"arena-slot-{slot}",
                           instruction=instruction, rates={"step": float(robot.control_hz)},
                           tags={"arena_session": sid, "arena_slot": slot, "seed": ep_seed})
        return store.begin_episode(meta)

    from robot_learning.serve.client import PolicyServerError

    for slot in ("A", "B"):
        endpoint = next(x["endpoint"] for x in s["slots"] if x["slot"] == slot)
        api.request("POST", f"/api/sessions/{sid}/episodes", json={"slot": slot, "status": "running", "seed": seed})
        try:
            run = run_slot(endpoint, robot, slot, seed, max_steps, writer_factory if store is not None else None)
        except (PolicyServerError, ValueError) as exc:
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
            "store_uri": str(getattr(store, "uri", "") or ""), "store_episode": run.store_episode})
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
