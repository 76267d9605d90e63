"""Request and response bodies of the arena API (pydantic: every field typed, bounded, no extras)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Name = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:@/+-]+$")


class Strict(BaseModel):
    """Unknown fields are an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


def _check_shapes(v: dict[str, list[int]]) -> dict[str, list[int]]:
    if not v:
        raise ValueError("must name at least one observation")
    if len(v) > 32:
        raise ValueError("at most 32 observation keys")
    for key, shape in v.items():
        if not 1 <= len(key) <= 64:
            raise ValueError(f"observation key {key[:70]!r}: 1-64 characters")
        if not 1 <= len(shape) <= 4 or any(not 1 <= s <= 4096 for s in shape):
            raise ValueError(f"observation '{key}': shape {shape} must have 1-4 dims, each in 1..4096")
    return v


class FieldError(BaseModel):
    """One invalid field of a request: where (``loc``), what is wrong, the error type."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """The body of every refused API request: what is wrong and where; ``errors`` per field for a 422."""

    detail: str
    errors: list[FieldError] | None = None


ERROR_RESPONSES = {code: {"model": ErrorOut, "description": text} for code, text in (
    (401, "no or unknown token"), (403, "not allowed for this token"), (404, "unknown robot or session"),
    (409, "conflicts with the stored state"), (410, "session expired"), (413, "request body too large"),
    (422, "invalid request"), (429, "rate limit"), (503, "database unavailable: retry"))}


class EvaluatorIn(Strict):
    """Admin: create an evaluator (its token is returned once)."""

    name: str = Name
    site: str = Field(default="", max_length=100)
    is_admin: bool = False


class EvaluatorOut(BaseModel):
    """The new evaluator with its token (shown only now; the server keeps a hash)."""

    id: int
    name: str
    token: str


class RobotIn(Strict):
    """Admin: a robot with the observations and action interface it provides."""

    name: str = Name
    site: str = Field(default="", max_length=100)
    obs_shapes: dict[str, list[int]]
    action_dim: int = Field(ge=1, le=64)
    action_mode: Literal["ee_delta", "ee_abs", "joint"] = "ee_delta"

    _shapes = field_validator("obs_shapes")(_check_shapes)


class PolicyIn(Strict):
    """Admin: a policy-server endpoint with its declared spec."""

    name: str = Name
    endpoint: str = Field(min_length=6, max_length=300, pattern=r"^wss?://[^\s]+$")
    obs_shapes: dict[str, list[int]]
    action_dim: int = Field(ge=1, le=64)
    action_mode: Literal["ee_delta", "ee_abs", "joint"] = "ee_delta"
    tasks: list[str] = Field(default_factory=list, max_length=32)
    check: bool = True  # health-check the endpoint now and refuse it if it does not answer

    _shapes = field_validator("obs_shapes")(_check_shapes)


class SessionIn(Strict):
    """Evaluator: start a session by stating the robot and the task/instruction first."""

    robot: str = Name
    task: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    instruction: str = Field(default="", max_length=1000)


class Slot(BaseModel):
    """One anonymous side of the pair: an opaque per-session policy-server endpoint."""

    slot: Literal["A", "B"]
    endpoint: str


class EpisodeOut(BaseModel):
    """A recorded run of one slot."""

    slot: str
    status: str
    success: bool | None
    steps: int
    seed: int | None
    store_uri: str
    store_episode: int | None
    has_video: bool


class SessionOut(BaseModel):
    """A session as its evaluator sees it; ``reveal`` is filled only after the vote."""

    id: str
    robot: str
    task: str
    instruction: str
    state: str
    invalid_reason: str
    expires_at: dt.datetime
    slots: list[Slot]
    episodes: list[EpisodeOut]
    reveal: dict[str, str] | None = None


class EpisodeIn(Strict):
    """Evaluator client: the status of one slot's run, and where it was recorded."""

    slot: Literal["A", "B"]
    status: Literal["running", "done", "failed"] = "done"
    success: bool | None = None
    steps: int = Field(default=0, ge=0, le=10_000_000)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    store_uri: str = Field(default="", max_length=1000)
    store_episode: int | None = Field(default=None, ge=0)
    video: str = Field(default="", max_length=1000)


class InvalidateIn(Strict):
    """Evaluator client: the session cannot be judged (policy died, robot fault, ...)."""

    reason: str = Field(min_length=1, max_length=1000)


class VoteIn(Strict):
    """The verdict: progress per slot, the outcome, free text and a validity flag."""

    idempotency_key: str = Field(min_length=8, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    outcome: Literal["A", "B", "tie", "both_bad"]
    progress_a: float = Field(ge=0, le=100)
    progress_b: float = Field(ge=0, le=100)
    comment: str = Field(default="", max_length=2000)
    valid: bool = True


class VoteOut(BaseModel):
    """The stored vote; ``replayed`` when this idempotency key had already been stored."""

    vote_id: int
    session_id: str
    outcome: str
    replayed: bool
    reveal: dict[str, str]
