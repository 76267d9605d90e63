"""Schemathesis against the arena's OpenAPI schema, over real HTTP on loopback (SQLite, admin token).

Every operation gets generated valid and invalid requests; the run fails on any 5xx, on a response
body that does not match its documented schema, or on a wrong content type. Operations on a session
get a real open session half of the time (a fresh one per case), so the vote, episode and
invalidation logic is reached and not only the 404 for an unknown id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance  # noqa: E402

from robot_learning.arena.services import ArenaSettings  # noqa: E402
from tests.integration.test_arena_api import LiveArena, setup_pair  # noqa: E402

pytestmark = pytest.mark.integration
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveArena]:
    """The arena on SQLite with a robot and two policies registered."""
    folder: Path = tmp_path_factory.mktemp("arena_schema")
    arena = LiveArena(ArenaSettings(db_url=f"sqlite:///{folder}/arena.db", health_check=False, n_boot=10, seed=0,
                                    rate_limit_per_min=100_000, video_dir=str(folder / "videos")))
    setup_pair(arena, ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b"])
    yield arena
    arena.stop()


def _call(case, live: LiveArena) -> int:  # noqa: ANN001 (schemathesis Case)
    """One generated request against the live app, checked; its status code."""
    if case.method == "POST" and case.path == "/api/policies" and isinstance(case.body, dict):
        case.body["check"] = False  # generated endpoints are arbitrary hosts: never probe them from a test
    if "session_id" in (case.path_parameters or {}) and next(_counter) % 2 == 0:
        with live.client(live.admin) as c:
            r = c.post("/api/sessions", json={"robot": "bench", "task": "lift"})
            assert r.status_code == 200, r.text
            case.path_parameters["session_id"] = r.json()["id"]
    response = case.call_and_validate(base_url=live.url, headers={"Authorization": f"Bearer {live.admin}"},
                                      checks=CHECKS)
    return response.status_code


_counter = iter(range(10**9))


def _fuzz(op, mode: GenerationMode, live: LiveArena, codes: list[int]) -> None:  # noqa: ANN001 (APIOperation)
    """Generated requests of one kind (valid or invalid) for one operation; their status codes into ``codes``."""

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:  # noqa: ANN001
        codes.append(_call(case, live))

    run()


def test_api_conforms_to_its_schema_and_never_fails_with_5xx(live: LiveArena) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    codes: dict[tuple[str, str], list[int]] = {}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(op, mode, live, codes.setdefault((op.label, mode.value), []))
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, op.label  # nothing to make invalid (no parameters)
    # the run reached the logic: valid requests were accepted and invalid ones refused with a 4xx
    assert any(200 <= c < 300 for (_, mode), cs in codes.items() if mode == "positive" for c in cs), codes
    assert any(c == 422 for (_, mode), cs in codes.items() if mode == "negative" for c in cs), codes
