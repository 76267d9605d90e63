"""Data-quality figures of an episode store: pauses, action saturation and smoothness, stamp gaps,
dropped frames, NaN, stream rates / jitter / alignment, and state coverage.

The store report (``report.py``) draws these; they are plain functions so that a notebook can ask
the same questions, e.g. why a policy cannot tell how long a demo paused::

    from robot_learning.data.quality import store_quality, pause_lengths
    qualities, problems = store_quality(store)
    [q.flags for q in qualities if q.flags]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot_learning.data.layout import CONTROL_SOURCES, IMAGE_PREFIX, STAMP_PREFIX, STEP_STAMPED, EpisodeInfo
from robot_learning.data.store import EpisodeStore

FLAG_KINDS = ("pause", "saturation", "dropped_frames", "stamp_gap", "nan", "blank_camera", "unreadable")
MOTION_KEYS = ("joint_pos", "ee_pose", "gripper")  # what "the robot moved" is judged on, first found wins


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality flags (defaults suit 10-50 Hz manipulation demos)."""

    pause_speed: float = 0.01  # norm of d(motion key)/dt below this (units/s: rad/s, m/s) is "still"
    min_pause_s: float = 1.0  # a still run at least this long is a pause
    saturation_fraction: float = 0.5  # a continuous action dim at its bound on >= this share of steps
    saturation_tol: float = 1e-4  # |a - bound| <= tol * (high - low) counts as "at the bound"
    action_low: tuple[float, ...] | None = None  # known action bounds; else the store-wide extremes
    action_high: tuple[float, ...] | None = None
    gap_factor: float = 2.0  # a stamp step longer than this many nominal periods is a gap
    blank_std: float = 2.0  # a camera frame whose pixel std is below this is blank (a dead camera)

    def __post_init__(self) -> None:
        for name in ("pause_speed", "min_pause_s", "saturation_fraction", "saturation_tol", "gap_factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"QualityConfig.{name} must be a positive number, got {value!r}")
        if (self.action_low is None) != (self.action_high is None):
            raise ValueError("QualityConfig: give both action_low and action_high, or neither")


@dataclass(frozen=True)
class Flag:
    """One suspicious thing in one episode."""

    kind: str  # one of FLAG_KINDS
    message: str
    step: int | None = None  # first step concerned, if any


@dataclass
class StreamTiming:
    """Measured timing of one stamped stream in one episode."""

    rate_hz: float  # 1 / median stamp step
    jitter_ms: float  # std of the stamp steps
    gaps: int  # stamp steps > gap_factor nominal periods
    duplicates: int  # stamp steps <= 0 (a frame held or re-sent)
    align_max_ms: float  # max |stamp - control tick| (observation streams only, else nan)
    align_mean_ms: float


@dataclass
class EpisodeQuality:
    """Every figure and flag of one episode."""

    index: int
    length: int
    duration: float
    pauses: list[tuple[int, int, float]] = field(default_factory=list)  # (first step, last step, seconds)
    still_runs: list[float] = field(default_factory=list)  # seconds of every still run, pause or not
    saturation: dict[str, float] = field(default_factory=dict)  # action dim -> share of steps at a bound
    smoothness: float = math.nan  # mean |second difference| of the action / its std; higher = jerkier
    timing: dict[str, StreamTiming] = field(default_factory=dict)
    dropped_frames: dict[str, int] = field(default_factory=dict)  # camera -> frames missing or held
    nonfinite: dict[str, int] = field(default_factory=dict)  # key -> NaN/inf values
    flags: list[Flag] = field(default_factory=list)

    @property
    def longest_pause(self) -> float:
        """Seconds of the longest pause (0 if none)."""
        return max((p[2] for p in self.pauses), default=0.0)


# ---------------------------------------------------------------- single figures
def pause_lengths(
    positions: np.ndarray, stamps: np.ndarray, speed: float = 0.01, min_duration: float = 1.0
) -> list[tuple[int, int, float]]:
    """Runs where the motion signal moves slower than ``speed`` for at least ``min_duration`` seconds.

    Returns (first step, last step, seconds). NaN rows count as motion (they are flagged elsewhere)."""
    x = np.asarray(positions, dtype=np.float64).reshape(len(positions), -1)
    t = np.asarray(stamps, dtype=np.float64)
    if len(x) < 2:
        return []
    dt = np.maximum(np.diff(t), 1e-9)
    v = np.linalg.norm(np.diff(x, axis=0), axis=1) / dt
    still = v < speed  # NaN compares False: not still
    out = []
    i = 0
    while i < len(still):
        if not still[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(still) and still[j + 1]:
            j += 1
        seconds = float(t[j + 1] - t[i])  # the run spans steps i .. j+1
        if seconds >= min_duration:
            out.append((i, j + 1, seconds))
        i = j + 1
    return out


def continuous_dims(actions: np.ndarray, min_distinct: int = 5) -> np.ndarray:
    """Which action dims take many values (a binary gripper command at +-1 is not saturation)."""
    a = np.asarray(actions).reshape(len(actions), -1)
    return np.array([len(np.unique(a[:, d][np.isfinite(a[:, d])])) >= min_distinct for d in range(a.shape[1])])


def action_saturation(
    actions: np.ndarray, low: np.ndarray, high: np.ndarray, tol: float = 1e-4, dims: np.ndarray | None = None
) -> np.ndarray:
    """Share of steps each action dim sits at ``low`` or ``high`` (dims not in ``dims`` get 0)."""
    a = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
    low, high = np.asarray(low, np.float64).reshape(-1), np.asarray(high, np.float64).reshape(-1)
    if len(a) == 0:
        return np.zeros(a.shape[1])
    margin = tol * np.maximum(high - low, 1e-12)
    at = (np.abs(a - low) <= margin) | (np.abs(a - high) <= margin)
    share = at.mean(axis=0)
    if dims is not None:
        share = np.where(dims, share, 0.0)
    return share


def action_smoothness(actions: np.ndarray) -> float:
    """Mean |second difference| of the action in units of its per-dim std: 0 smooth, ~2 white noise."""
    a = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
    if len(a) < 3:
        return math.nan
    std = np.nanstd(a, axis=0)
    keep = std > 1e-9
    if not keep.any():
        return 0.0
    d2 = np.diff(a[:, keep], n=2, axis=0) / std[keep]
    return float(np.nanmean(np.abs(d2)))


def stream_timing(
    stamps: np.ndarray, period: float | None, gap_factor: float = 2.0, tick: np.ndarray | None = None
) -> StreamTiming:
    """Rate, jitter, gaps and duplicates of one stream's stamps; alignment against ``tick`` if given."""
    t = np.asarray(stamps, dtype=np.float64)
    dt = np.diff(t)
    pos = dt[dt > 0]
    median = float(np.median(pos)) if len(pos) else math.nan
    nominal = period if period else median
    gaps = int(np.sum(dt > gap_factor * nominal)) if nominal and math.isfinite(nominal) else 0
    align_max = align_mean = math.nan
    if tick is not None and len(t):
        err = np.abs(t - np.asarray(tick, dtype=np.float64))
        align_max, align_mean = 1e3 * float(err.max()), 1e3 * float(err.mean())
    return StreamTiming(rate_hz=1.0 / median if median and math.isfinite(median) else math.nan,
                        jitter_ms=1e3 * float(np.std(dt)) if len(dt) else math.nan, gaps=gaps,
                        duplicates=int(np.sum(dt <= 0)), align_max_ms=align_max, align_mean_ms=align_mean)


def dropped_frames(stamps: np.ndarray, period: float | None) -> int:
    """Frames the camera should have delivered over the episode's span but did not: a held frame
    (a repeated stamp, the recorder reusing the last image) and a silent stretch both count."""
    t = np.asarray(stamps, dtype=np.float64)
    if len(t) < 2:
        return 0
    dt = np.diff(t)
    pos = dt[dt > 0]
    nominal = period or (float(np.median(pos)) if len(pos) else 0.0)
    distinct = len(np.unique(t))
    if not nominal:
        return len(t) - distinct
    expected = int(round((t[-1] - t[0]) / nominal)) + 1
    return max(0, expected - distinct)


def is_blank(frame: np.ndarray, std: float = 2.0) -> bool:
    """A frame with (almost) no pixel variation: a dead, covered or unplugged camera."""
    return bool(np.asarray(frame, dtype=np.float32).std() < std)


def nonfinite_counts(episode: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Key -> number of NaN/inf values, for the float keys that have any."""
    out = {}
    for key, value in episode.items():
        a = np.asarray(value)
        if a.dtype.kind == "f":
            n = int(a.size - np.count_nonzero(np.isfinite(a)))
            if n:
                out[key] = n
    return out


@dataclass
class Coverage:
    """How much of its range a state key visits: per-dim histograms over the store-wide range."""

    key: str
    edges: np.ndarray  # (dims, bins + 1)
    counts: np.ndarray  # (dims, bins) steps per bin
    occupied: float  # share of (dim, bin) cells with any step
    projection: np.ndarray  # (n, 2) steps projected on the first two principal axes (a subsample)


def state_coverage(
    store: EpisodeStore, key: str = "joint_pos", episodes: Sequence[int] | None = None, bins: int = 20,
    max_points: int = 5000,
) -> Coverage:
    """Histogram of each dim of ``key`` over the chosen episodes, and a 2-D PCA picture of the visits."""
    if key not in store.keys:
        raise ValueError(f"state_coverage: key {key!r} is not in {store.uri} (keys: {sorted(store.keys)})")
    infos = store.episodes() if episodes is None else [store.episode(int(i)) for i in episodes]
    if not infos:
        raise ValueError(f"state_coverage: no episodes in {store.uri}")
    x = np.concatenate([store.read_rows(key, e.start, e.end) for e in infos]).astype(np.float64)
    x = x.reshape(len(x), -1)
    x = x[np.all(np.isfinite(x), axis=1)]
    if len(x) == 0:
        raise ValueError(f"state_coverage: {key!r} has no finite rows")
    lo, hi = x.min(0), x.max(0)
    hi = np.where(hi > lo, hi, lo + 1e-6)
    edges = np.stack([np.linspace(lo[d], hi[d], bins + 1) for d in range(x.shape[1])])
    counts = np.stack([np.histogram(x[:, d], bins=edges[d])[0] for d in range(x.shape[1])])
    centred = x - x.mean(0)
    # PCA by SVD on a subsample: enough to see clusters and holes in the visited states
    pick = np.linspace(0, len(x) - 1, min(len(x), max_points)).astype(int)
    _u, _s, vt = np.linalg.svd(centred[pick], full_matrices=False)
    axes = vt[:2] if len(vt) >= 2 else np.vstack([vt, np.zeros_like(vt)])[:2]
    return Coverage(key=key, edges=edges, counts=counts, occupied=float(np.mean(counts > 0)),
                    projection=centred[pick] @ axes.T)


# ---------------------------------------------------------------- per episode
def nominal_period(info: EpisodeInfo, key: str) -> float | None:
    """1 / the nominal rate of ``key`` from the episode metadata (``rates`` or ``tags.control_hz``)."""
    rates = info.meta.rates
    rate = rates.get(key) or (rates.get("step") if key in ("step", *STEP_STAMPED) else None)
    if not rate and key in ("step", *STEP_STAMPED):
        rate = info.meta.tags.get("control_hz") if isinstance(info.meta.tags, dict) else None
    try:
        return 1.0 / float(rate) if rate else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def action_bounds(
    store: EpisodeStore, cfg: QualityConfig, episodes: Sequence[EpisodeInfo] | None = None, key: str = "action"
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(low, high, continuous dims) of the action: the configured bounds, else the store-wide extremes.

    Without known bounds, a dim whose store-wide extreme is held on many steps has been clipped: an
    unclipped continuous signal reaches its extreme on one step."""
    if key not in store.keys:
        return None
    infos = list(store.episodes() if episodes is None else episodes)
    if not infos:
        return None
    a = np.concatenate([store.read_rows(key, e.start, e.end) for e in infos]).astype(np.float64)
    a = a.reshape(len(a), -1)
    dims = continuous_dims(a)
    if cfg.action_low is not None and cfg.action_high is not None:
        low, high = np.asarray(cfg.action_low, np.float64), np.asarray(cfg.action_high, np.float64)
        if low.shape != (a.shape[1],) or high.shape != (a.shape[1],):
            raise ValueError(f"QualityConfig.action_low/high need {a.shape[1]} values (the store's {key} size)")
        return low, high, dims
    finite = np.where(np.isfinite(a), a, np.nan)
    return np.nanmin(finite, axis=0), np.nanmax(finite, axis=0), dims


def episode_quality(
    store: EpisodeStore, i: int, cfg: QualityConfig | None = None,
    bounds: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    episode: Mapping[str, np.ndarray] | None = None,
) -> EpisodeQuality:
    """Figures and flags of episode ``i``; ``episode`` (from ``read_episode``) avoids a second read."""
    cfg = cfg or QualityConfig()
    info = store.episode(i)
    if episode is None:
        episode = read_lowdim(store, i)
    tick = np.asarray(episode[STAMP_PREFIX + "step"], dtype=np.float64)
    q = EpisodeQuality(index=info.index, length=info.length,
                       duration=float(tick[-1] - tick[0]) if len(tick) else 0.0)
    q.nonfinite = nonfinite_counts(episode)
    for key, n in q.nonfinite.items():
        a = np.asarray(episode[key]).reshape(info.length, -1)
        first = int(np.argmax(~np.all(np.isfinite(a), axis=1)))
        q.flags.append(Flag("nan", f"{key}: {n} NaN/inf value(s), first at step {first}", first))
    motion = next((k for k in MOTION_KEYS if k in episode), None)
    if motion is not None:
        x = np.asarray(episode[motion], dtype=np.float64).reshape(info.length, -1)
        if motion == "ee_pose":
            x = x[:, :3]  # position only: quaternion sign flips are not motion
        runs = pause_lengths(x, tick, cfg.pause_speed, 0.0)
        q.still_runs = [r[2] for r in runs]
        q.pauses = [r for r in runs if r[2] >= cfg.min_pause_s]
        for a, b, secs in q.pauses:
            q.flags.append(Flag("pause", f"no motion ({motion}) for {secs:.1f} s, steps {a}-{b}", a))
    if "action" in episode and bounds is not None:
        actions = np.asarray(episode["action"], dtype=np.float64).reshape(info.length, -1)
        share = action_saturation(actions, bounds[0], bounds[1], cfg.saturation_tol, bounds[2])
        names = _action_names(info, actions.shape[1])
        q.saturation = {names[d]: float(s) for d, s in enumerate(share) if bounds[2][d]}
        for d, s in enumerate(share):
            if s >= cfg.saturation_fraction and info.length >= 3:
                q.flags.append(Flag("saturation", f"action {names[d]} at its bound on {100 * s:.0f}% of steps"))
        q.smoothness = action_smoothness(actions[:, bounds[2]] if bounds[2].any() else actions)
    elif "action" in episode:
        q.smoothness = action_smoothness(episode["action"])
    _timing_flags(info, episode, tick, cfg, q)
    return q


def _action_names(info: EpisodeInfo, n: int) -> list[str]:
    names = info.meta.tags.get("action_names") if isinstance(info.meta.tags, dict) else None
    if isinstance(names, list) and len(names) == n:
        return [str(x) for x in names]
    return [str(d) for d in range(n)]


def _timing_flags(
    info: EpisodeInfo, episode: Mapping[str, np.ndarray], tick: np.ndarray, cfg: QualityConfig, q: EpisodeQuality
) -> None:
    """Rates, jitter, alignment, stamp gaps and dropped frames of every stamped stream."""
    recorder = (info.meta.tags.get("recorder") or {}) if isinstance(info.meta.tags, dict) else {}
    reported = recorder.get("streams", {}) if isinstance(recorder, dict) else {}
    for name in [k[len(STAMP_PREFIX):] for k in episode if k.startswith(STAMP_PREFIX)]:
        stamps = episode[STAMP_PREFIX + name]
        period = nominal_period(info, name)
        observation = name != "step" and name not in STEP_STAMPED
        timing = stream_timing(stamps, period, cfg.gap_factor, tick if observation else None)
        q.timing[name] = timing
        if name.startswith(IMAGE_PREFIX):
            n = dropped_frames(stamps, period)
            rec = reported.get(name) or reported.get(name[len(IMAGE_PREFIX):]) or {}
            n = max(n, int(rec.get("dropped", 0) or 0) + int(rec.get("gaps", 0) or 0))
            q.dropped_frames[name] = n
            if n:
                q.flags.append(Flag("dropped_frames", f"{name}: {n} frame(s) dropped or held"))
        elif timing.gaps and name not in ("intervention", "control_source"):
            # flags such as /intervention are published on change: long silences there are normal
            dt = np.diff(np.asarray(stamps, dtype=np.float64))
            nominal = period or (1.0 / timing.rate_hz if timing.rate_hz else 0.0)
            first = int(np.argmax(dt > cfg.gap_factor * nominal)) if nominal else 0
            q.flags.append(Flag("stamp_gap", f"{name}: {timing.gaps} stamp gap(s), the longest "
                                f"{float(dt.max()):.2f} s (nominal {nominal:.3f} s), first after step {first}", first))


def read_lowdim(store: EpisodeStore, i: int) -> dict[str, np.ndarray]:
    """Every low-dim key of episode ``i`` plus every stamp stream (camera stamps without pixels)."""
    lowdim = [k for k in store.keys if not k.startswith(IMAGE_PREFIX)]
    stamps = [STAMP_PREFIX + k for k in store.stamp_keys]
    return store.read_episode(i, keys=lowdim + stamps)


def store_quality(
    store: EpisodeStore, episodes: Sequence[int] | None = None, cfg: QualityConfig | None = None,
    progress: bool = False,
) -> tuple[list[EpisodeQuality], list[str]]:
    """Quality of every chosen episode and the problems that kept an episode out (one line each)."""
    cfg = cfg or QualityConfig()
    infos = store.episodes() if episodes is None else [store.episode(int(i)) for i in episodes]
    problems: list[str] = []
    try:
        bounds = action_bounds(store, cfg, infos)
    except (ValueError, OSError, KeyError) as exc:
        if isinstance(exc, ValueError) and "QualityConfig" in str(exc):
            raise
        bounds = None
        problems.append(f"action bounds not computed: {exc}")
    out = []
    iterator: Any = infos
    if progress:
        from tqdm import tqdm

        iterator = tqdm(infos, desc="quality", unit="ep", leave=False)
    for info in iterator:
        try:
            out.append(episode_quality(store, info.index, cfg, bounds))
        except Exception as exc:  # noqa: BLE001 (a damaged episode must not stop the report of the rest)
            problems.append(f"episode {info.index}: not analysed ({type(exc).__name__}: {exc})")
    return out, problems


def control_source_names(codes: np.ndarray) -> list[str]:
    """Control-source codes -> names (unknown codes stay visible as 'code N')."""
    return [CONTROL_SOURCES[c] if 0 <= c < len(CONTROL_SOURCES) else f"code {c}" for c in np.asarray(codes).tolist()]
