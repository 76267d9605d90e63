"""``rlstack arena evaluate``'s session loop end to end: served scripted experts behind the arena relay,
the sim robot, episodes recorded into a real store, the simulated evaluator's vote."""

from __future__ import annotations

from pathlib import Path

import pytest

from robot_learning.arena.client import ArenaAPI, evaluate_session, sim_provided
from robot_learning.arena.services import ArenaSettings
from robot_learning.data.store import EpisodeStore
from robot_learning.deploy.scripted import ExpertPolicy
from robot_learning.serve.server import PolicyServer
from tests.integration.test_arena_api import LiveArena

pytestmark = pytest.mark.integration


def test_sim_session_runs_both_slots_records_them_and_votes(tmp_path: Path) -> None:
    from sim import make_robot

    arena = LiveArena(ArenaSettings(db_url=f"sqlite:///{tmp_path}/arena.db", n_boot=10, seed=0))
    servers = [PolicyServer(ExpertPolicy("push", quality=q), port=0, name=f"expert-q{q:g}").start_in_thread()
               for q in (1.0, 0.0)]
    robot = make_robot(task="push", cameras=(), render=False)
    try:
        with arena.client(arena.admin) as c:
            assert c.post("/api/robots", json={"name": "sim", "obs_shapes": sim_provided("push"), "action_dim": 5}).status_code == 200
            for srv in servers:
                spec = srv.policy.spec
                r = c.post("/api/policies", json={"name": srv.name, "endpoint": srv.url, "action_dim": 5,
                                                  "obs_shapes": {k: list(v) for k, v in spec.obs_shapes.items()}})
                assert r.status_code == 200, r.text  # health-checked against the declared spec
        store = EpisodeStore.open(tmp_path / "arena.zarr", mode="a")
        api = ArenaAPI(arena.url, arena.evaluator("sim-evaluator"))
        res = evaluate_session(api, "sim", "push", "push the cube to the target", robot, seed=3, max_steps=60,
                               store=store, evaluator="sim-evaluator", progress=lambda _m: None)
        api.close()
        assert res.vote is not None and set(res.vote["reveal"].values()) == {"expert-q1", "expert-q0"}
        strong = "A" if res.vote["reveal"]["A"] == "expert-q1" else "B"
        assert res.runs[strong].success and res.vote["outcome"] == strong
        assert res.runs["A"].seed == res.runs["B"].seed == 3
        store.refresh()
        metas = [e.meta for e in store.episodes()]
        assert [m.source for m in metas] == ["arena", "arena"]
        assert {m.policy_id for m in metas} == {"arena-slot-A", "arena-slot-B"}
        assert all(m.tags["arena_session"] == res.session_id for m in metas)
        with arena.client() as c:
            board = c.get("/api/leaderboard").json()
        assert board["n_votes"] == 1 and board["rows"][0]["name"] == "expert-q1"
    finally:
        robot.close()
        for srv in servers:
            srv.stop()
        arena.stop()
