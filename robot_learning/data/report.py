"""``rlstack data report``: one self-contained HTML page about a store (no server, no network).

Store summary, success rate with Wilson 95 % CI per task / source / operator, episode lengths,
first/last frame of every camera per episode, stream rates and stamp jitter, alignment errors, the
data-quality figures of ``quality.py`` and flags for suspicious episodes, each linking to its row.
Figures are matplotlib PNGs and thumbnails JPEGs, both inlined as data: URIs.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_learning.data.layout import IMAGE_PREFIX, STEP_STAMPED, EpisodeInfo
from robot_learning.data.quality import (
    FLAG_KINDS,
    EpisodeQuality,
    Flag,
    QualityConfig,
    is_blank,
    state_coverage,
    store_quality,
)
from robot_learning.data.store import EpisodeStore, StoreError
from robot_learning.stats import format_rate, wilson_interval

TEMPLATE = Path(__file__).with_name("report_template.html")


@dataclass(frozen=True)
class ReportConfig:
    """What the report reads: thumbnails and analysed episodes are sampled evenly above the caps."""

    max_thumbnails: int = 200  # episodes with first/last camera frames
    max_episodes: int | None = None  # episodes analysed (None: all)
    thumb_height: int = 72
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self) -> None:
        if self.max_thumbnails < 0 or self.thumb_height < 8:
            raise ValueError("ReportConfig: max_thumbnails must be >= 0 and thumb_height >= 8")
        if self.max_episodes is not None and self.max_episodes < 1:
            raise ValueError(f"ReportConfig.max_episodes must be >= 1, got {self.max_episodes}")


@dataclass
class ReportResult:
    """What was written and what was left out."""

    path: Path
    episodes: int
    analysed: int
    flagged: int
    notes: list[str]


def even_sample(items: Sequence[int], k: int) -> list[int]:
    """At most ``k`` items, evenly spread (all of them if there are fewer)."""
    if len(items) <= k:
        return list(items)
    if k <= 0:
        return []
    picks = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


# ---------------------------------------------------------------- figures
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(ncols: int = 1, width: float = 5.5, height: float = 3.0) -> tuple[Any, Any]:
    # Figure, not pyplot: no global state and no GUI backend, so the report runs headless and threaded
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def length_figure(infos: Sequence[EpisodeInfo]) -> str:
    """Histogram of episode lengths in steps and seconds, split by success."""
    fig, (a, b) = _figure(2)
    for ok, colour in ((True, "tab:green"), (False, "tab:red")):
        sel = [e for e in infos if e.success == ok]
        if sel:
            label = f"{'success' if ok else 'failure'} ({len(sel)})"
            a.hist([e.length for e in sel], bins=min(30, max(5, len(sel))), alpha=0.6, color=colour, label=label)
            b.hist([e.duration for e in sel], bins=min(30, max(5, len(sel))), alpha=0.6, color=colour, label=label)
    a.set(xlabel="steps", ylabel="episodes", title="episode length")
    b.set(xlabel="seconds", title="episode duration")
    a.legend(fontsize=8)
    return _png(fig)


def timing_figure(qualities: Sequence[EpisodeQuality]) -> str | None:
    """Measured rate per episode and stamp jitter, per stream."""
    streams = sorted({s for q in qualities for s, t in q.timing.items() if math.isfinite(t.rate_hz)})
    if not streams:
        return None
    fig, (a, b) = _figure(2)
    for k, s in enumerate(streams):
        idx = [q.index for q in qualities if s in q.timing]
        a.plot(idx, [q.timing[s].rate_hz for q in qualities if s in q.timing], ".", label=s, alpha=0.7)
        b.boxplot([[q.timing[s].jitter_ms for q in qualities if s in q.timing and math.isfinite(q.timing[s].jitter_ms)]
                   or [0.0]], positions=[k], widths=0.6)
    a.set(xlabel="episode", ylabel="Hz", title="measured rate (1 / median stamp step)")
    a.legend(fontsize=7, ncol=2)
    b.set_xticks(range(len(streams)), streams, rotation=45, ha="right", fontsize=8)
    b.set(ylabel="ms", title="stamp jitter (std of stamp steps) per episode")
    return _png(fig)


def alignment_figure(qualities: Sequence[EpisodeQuality]) -> str | None:
    """Max |capture stamp - control tick| per episode, per observation stream."""
    streams = sorted({s for q in qualities for s, t in q.timing.items() if math.isfinite(t.align_max_ms)})
    if not streams:
        return None
    fig, (a,) = _figure(1, width=7)
    data = [[q.timing[s].align_max_ms for q in qualities if s in q.timing] for s in streams]
    a.boxplot(data, widths=0.6)
    a.set_xticks(range(1, len(streams) + 1), streams, rotation=45, ha="right", fontsize=8)
    a.set(ylabel="ms", title="alignment error: max |stamp - control tick| per episode")
    return _png(fig)


def quality_figure(qualities: Sequence[EpisodeQuality], min_pause: float) -> str:
    """Still-run (pause) lengths, action smoothness and action saturation per episode."""
    fig, (a, b, c) = _figure(3, width=4.2)
    runs = [r for q in qualities for r in q.still_runs]
    pauses = sum(len(q.pauses) for q in qualities)
    a.hist(runs or [0.0], bins=20, color="tab:orange", range=(0, max([*runs, 1.2 * min_pause])))
    a.axvline(min_pause, color="k", ls="--", lw=1, label=f"pause threshold {min_pause:g} s")
    a.set(xlabel="seconds without motion", ylabel="still runs",
          title=f"still runs ({len(runs)}; {pauses} pauses)")
    a.legend(fontsize=7)
    idx = [q.index for q in qualities]
    b.plot(idx, [q.smoothness for q in qualities], ".", color="tab:purple")
    b.set(xlabel="episode", ylabel="mean |d2 a| / std(a)", title="action jerkiness (0 = smooth)")
    dims = sorted({d for q in qualities for d in q.saturation})
    for d in dims:
        c.plot(idx, [100 * q.saturation.get(d, 0.0) for q in qualities], ".", label=f"action {d}", alpha=0.7)
    c.set(xlabel="episode", ylabel="% of steps", title="action at its bound")
    if dims:
        c.legend(fontsize=7)
    return _png(fig)


def coverage_figure(store: EpisodeStore, episodes: Sequence[int]) -> tuple[str | None, str]:
    """State coverage of the first motion key: PCA picture and per-dim occupancy."""
    key = next((k for k in ("joint_pos", "ee_pose") if k in store.keys), None)
    if key is None:
        return None, "no joint_pos / ee_pose key: state coverage not drawn"
    cov = state_coverage(store, key, episodes)
    fig, (a, b) = _figure(2)
    a.scatter(cov.projection[:, 0], cov.projection[:, 1], s=4, alpha=0.4)
    a.set(xlabel="PC 1", ylabel="PC 2", title=f"{key}: visited states (PCA)")
    b.imshow(np.log1p(cov.counts), aspect="auto", cmap="viridis", origin="lower")
    b.set(xlabel="bin (store-wide range of each dim)", ylabel="dim", title=f"{key}: steps per bin (log)")
    return _png(fig), f"{key}: {100 * cov.occupied:.0f}% of (dim, bin) cells visited"


# ---------------------------------------------------------------- thumbnails and tables
def _jpeg_uri(frame: np.ndarray, height: int) -> str:
    import cv2

    h, w = frame.shape[:2]
    small = cv2.resize(frame, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(small[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise StoreError(f"thumbnail of shape {frame.shape} could not be encoded")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def thumbnails(store: EpisodeStore, info: EpisodeInfo, cfg: ReportConfig) -> tuple[list[dict[str, str]], list[Flag]]:
    """First and last frame of every camera of one episode, and blank-camera / unreadable flags."""
    cams = [k for k in store.keys if k.startswith(IMAGE_PREFIX)]
    out, flags = [], []
    if not cams or info.length == 0:
        return out, flags
    requests = [(f"data/{c}", r, r + 1) for c in cams for r in (info.start, info.end - 1)]
    try:
        frames = store.read_many(requests)
    except Exception as exc:  # noqa: BLE001 (a lost chunk: say so in the row, keep the report)
        return out, [Flag("unreadable", f"camera frames unreadable ({type(exc).__name__}: {exc})")]
    for k, cam in enumerate(cams):
        first, last = frames[2 * k][0], frames[2 * k + 1][0]
        name = cam[len(IMAGE_PREFIX):]
        out.append({"camera": name, "first": _jpeg_uri(first, cfg.thumb_height), "last": _jpeg_uri(last, cfg.thumb_height)})
        blank = [w for w, f in (("first", first), ("last", last)) if is_blank(f, cfg.quality.blank_std)]
        if blank:
            flags.append(Flag("blank_camera", f"{cam}: {' and '.join(blank)} frame blank (a dead or covered camera?)"))
    return out, flags


def success_rows(infos: Sequence[EpisodeInfo]) -> list[dict[str, Any]]:
    """Success rate with Wilson CI overall and per task, source and operator."""
    rows = []
    groups: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for e in infos:
        groups[("task", e.meta.task or "(none)")].append(e.success)
        groups[("source", e.meta.source)].append(e.success)
        groups[("operator", e.meta.operator or "(none)")].append(e.success)
    wins = sum(e.success for e in infos)
    lo, hi = wilson_interval(wins, len(infos))
    rows.append({"group": "all", "value": "", "n": len(infos), "rate": format_rate(wins, len(infos)), "lo": lo, "hi": hi})
    for (group, value), oks in sorted(groups.items()):
        lo, hi = wilson_interval(sum(oks), len(oks))
        rows.append({"group": group, "value": value, "n": len(oks), "rate": format_rate(sum(oks), len(oks)),
                     "lo": lo, "hi": hi})
    return rows


def _summary(store: EpisodeStore, infos: Sequence[EpisodeInfo]) -> list[tuple[str, str]]:
    keys = ", ".join(f"{k} {dtype}{list(shape)}" for k, (shape, dtype) in store.keys.items())
    streams = ", ".join(f"{k} {dtype}{list(shape)}" for k, (shape, dtype) in store.streams.items()) or "none"
    missing = [k for k in ("intervention", "control_source", "reward", "done") if k not in store.keys]
    created = store.config.get("created")
    rows = [("store", store.uri), ("schema", f"v{store.config.get('schema_version')}, images {store.image_codec}"),
            ("created", dt.datetime.fromtimestamp(created, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if created else "?"),
            ("episodes", str(len(infos))), ("steps", str(sum(e.length for e in infos))),
            ("recorded time", f"{sum(e.duration for e in infos) / 60:.1f} min"),
            ("cameras", ", ".join(k[len(IMAGE_PREFIX):] for k in store.keys if k.startswith(IMAGE_PREFIX)) or "none"),
            ("keys", keys), ("stamped streams", ", ".join(store.stamp_keys)), ("high-rate streams", streams)]
    if missing:
        rows.append(("keys not recorded", ", ".join(missing)))
    return rows


def _row_class(flags: Sequence[Flag]) -> str:
    return "flagged" if flags else ""


def build_report(
    store: str | EpisodeStore, out: str | Path, cfg: ReportConfig | None = None,
    storage_options: dict[str, Any] | None = None, progress: bool = False,
) -> ReportResult:
    """Write the HTML report of ``store`` to ``out``; returns what was written and left out."""
    import jinja2

    from robot_learning.data.view import open_store

    cfg = cfg or ReportConfig()
    st = open_store(store, storage_options)
    infos = st.episodes()
    if not infos:
        raise StoreError(f"{st.uri} has no episodes: nothing to report")
    notes: list[str] = []
    all_idx = [e.index for e in infos]
    analysed = all_idx if cfg.max_episodes is None else even_sample(all_idx, cfg.max_episodes)
    if len(analysed) < len(all_idx):
        notes.append(f"quality analysed for {len(analysed)} of {len(all_idx)} episodes (evenly sampled, --max-episodes)")
    qualities, problems = store_quality(st, analysed, cfg.quality, progress=progress)
    notes += problems
    by_index = {q.index: q for q in qualities}
    flags: dict[int, list[Flag]] = {q.index: list(q.flags) for q in qualities}
    for p in problems:
        if p.startswith("episode "):
            i = int(p.split()[1].rstrip(":"))
            flags.setdefault(i, []).append(Flag("unreadable", p.split(": ", 1)[1]))
    cams = [k for k in st.keys if k.startswith(IMAGE_PREFIX)]
    thumbs_for = _thumbnail_episodes(all_idx, flags, cfg.max_thumbnails)
    if cams and len(thumbs_for) < len(all_idx):
        notes.append(f"thumbnails for {len(thumbs_for)} of {len(all_idx)} episodes (flagged first, the rest "
                     f"evenly sampled; --max-thumbnails raises the cap)")
    info_by = {e.index: e for e in infos}
    thumbs: dict[int, list[dict[str, str]]] = {}
    for i in thumbs_for:
        thumbs[i], extra = thumbnails(st, info_by[i], cfg)
        flags.setdefault(i, []).extend(extra)
    figures = [("Episode lengths", length_figure(infos), "")]
    sent = ", ".join(k for k in STEP_STAMPED if k in st.keys)
    align_caption = (f"Measured for observation streams; {sent} are stamped when sent (flags such as intervention "
                     "when they change), so they are left out." if sent else "")
    for title, fig, caption in (("Stream rates and stamp jitter", timing_figure(qualities), ""),
                                ("Alignment errors", alignment_figure(qualities), align_caption)):
        if fig:
            figures.append((title, fig, caption))
    if qualities:
        figures.append(("Data quality: pauses, smoothness, saturation", quality_figure(qualities, cfg.quality.min_pause_s), ""))
        try:
            fig, caption = coverage_figure(st, [q.index for q in qualities])
            if fig:
                figures.append(("State coverage", fig, caption))
            else:
                notes.append(caption)
        except ValueError as exc:
            notes.append(f"state coverage not drawn: {exc}")
    rows = []
    for e in infos:
        q = by_index.get(e.index)
        rows.append({"index": e.index, "task": e.meta.task, "source": e.meta.source, "operator": e.meta.operator,
                     "policy": e.meta.policy_id, "success": e.success, "length": e.length,
                     "duration": f"{e.duration:.1f}", "flags": flags.get(e.index, []),
                     "pause": f"{q.longest_pause:.1f}" if q else "-",
                     "smooth": f"{q.smoothness:.2f}" if q and math.isfinite(q.smoothness) else "-",
                     "thumbs": thumbs.get(e.index), "klass": _row_class(flags.get(e.index, []))})
    flagged = sorted(i for i, f in flags.items() if f)
    by_kind = {k: [(i, "; ".join(f.message for f in flags[i] if f.kind == k)) for i in flagged
                   if any(f.kind == k for f in flags[i])] for k in FLAG_KINDS}
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(TEMPLATE.read_text()).render(
        title=f"Store report: {Path(st.uri.rstrip('/')).name}", summary=_summary(st, infos),
        success=success_rows(infos), figures=figures, notes=notes, rows=rows, flagged=flagged, flags=flags,
        by_kind={k: v for k, v in by_kind.items() if v}, cfg=cfg.quality, n=len(infos),
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), thumb_height=cfg.thumb_height)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return ReportResult(path=path, episodes=len(infos), analysed=len(qualities), flagged=len(flagged), notes=notes)


def _thumbnail_episodes(all_idx: Sequence[int], flags: dict[int, list[Flag]], cap: int) -> list[int]:
    """Flagged episodes first (what a reader will click on), then an even sample of the rest."""
    flagged = [i for i in all_idx if flags.get(i)][:cap]
    rest = [i for i in all_idx if not flags.get(i)]
    return sorted(flagged + even_sample(rest, cap - len(flagged)))


# ---------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """``rlstack data report`` arguments."""
    p.add_argument("store", help="store path or s3://bucket/prefix")
    p.add_argument("--out", help="HTML path (default: <store name>_report.html in the working directory)")
    p.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                   help="fsspec option for remote stores, e.g. endpoint_url=http://127.0.0.1:9000")
    p.add_argument("--max-thumbnails", type=int, default=200, help="episodes with camera thumbnails (default 200)")
    p.add_argument("--max-episodes", type=int, help="analyse an even sample of this many episodes (default: all)")
    q = QualityConfig()
    p.add_argument("--min-pause", type=float, default=q.min_pause_s, help=f"seconds without motion that flag a pause (default {q.min_pause_s})")
    p.add_argument("--pause-speed", type=float, default=q.pause_speed, help=f"speed below which the robot is still (default {q.pause_speed})")
    p.add_argument("--saturation-fraction", type=float, default=q.saturation_fraction,
                   help=f"share of steps at an action bound that flags saturation (default {q.saturation_fraction})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Write the report and print where."""
    from robot_learning.data.cli import _storage_options

    cfg = ReportConfig(max_thumbnails=args.max_thumbnails, max_episodes=args.max_episodes,
                       quality=QualityConfig(min_pause_s=args.min_pause, pause_speed=args.pause_speed,
                                             saturation_fraction=args.saturation_fraction))
    out = args.out or f"{Path(args.store.rstrip('/')).stem}_report.html"
    result = build_report(args.store, out, cfg, storage_options=_storage_options(args.storage_option),
                          progress=not args.no_progress)
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.path} ({result.episodes} episodes, {result.flagged} flagged)")
    return 0
