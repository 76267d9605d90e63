"""Store maintenance: validate, repair, merge, export an episode's camera to mp4, a summary table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from robot_learning.data.store import (
    SCHEMA_VERSION,
    STAMP_PREFIX,
    EpisodeStore,
    StoreError,
    partial_files,
)
from robot_learning.stats import format_rate


@dataclass
class ValidationReport:
    """Errors mean committed data is missing or unreadable; warnings are leftovers ``repair`` cleans."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no error was found."""
        return not self.errors


def _array_names(store: EpisodeStore) -> dict[str, int]:
    """Every data array -> the number of rows the index says are committed."""
    names = {f"data/{k}": store.data_end for k in store.keys}
    names.update({f"stamps/{k}": store.data_end for k in store.stamp_keys})
    for s in store.streams:
        n = int(store._index["stream_ends"].get(s, 0))
        names[f"streams/{s}/values"] = n
        names[f"streams/{s}/stamps"] = n
    return names


def _partial_files(store: EpisodeStore) -> list[Path]:
    """Temp files a killed local writer can leave (zarr writes to *.partial then renames)."""
    return partial_files(store.uri)


def _present_chunks(store: EpisodeStore, name: str) -> set[int]:
    """First-axis indices of the chunks that exist for array ``name``."""
    prefix = f"{name}/c/"

    async def collect() -> set[int]:
        found = set()
        async for key in store._zstore.list_prefix(prefix):
            head = key[len(prefix):].split("/")[0]
            if head.isdigit():
                found.add(int(head))
        return found

    return sync(collect())


def validate(store: EpisodeStore, deep: bool = False) -> ValidationReport:
    """Check the index against the arrays; ``deep`` also decodes every committed episode."""
    report = ValidationReport()
    store._arrays.clear()  # current shapes, not cached ones
    version = store.config.get("schema_version")
    if version != SCHEMA_VERSION:
        report.errors.append(f"schema_version {version} (this code reads {SCHEMA_VERSION})")
    previous_end = 0
    for e in store.episodes():
        if e.end <= e.start:
            report.errors.append(f"episode {e.index}: empty or negative row range [{e.start}, {e.end})")
        if e.start < previous_end:
            report.errors.append(f"episode {e.index}: rows [{e.start}, {e.end}) overlap the previous episode")
        if e.end > store.data_end:
            report.errors.append(f"episode {e.index}: ends at row {e.end} beyond data_end {store.data_end}")
        for s, (a, b) in e.streams.items():
            if b > int(store._index["stream_ends"].get(s, 0)) or a > b:
                report.errors.append(f"episode {e.index}: stream {s!r} rows [{a}, {b}) beyond the committed end")
        previous_end = max(previous_end, e.end)
    for name, committed in _array_names(store).items():
        try:
            arr = store.array(name)
        except StoreError as exc:
            if committed:
                report.errors.append(str(exc))
            else:  # a writer died while creating arrays for a first episode; the next writer recreates them
                report.warnings.append(f"{exc} (nothing committed in it; the next writer recreates it)")
            continue
        if arr.shape[0] < committed:
            report.errors.append(f"{name}: {arr.shape[0]} rows but {committed} are committed")
        elif arr.shape[0] > committed:
            report.warnings.append(f"{name}: {arr.shape[0] - committed} uncommitted rows past the end (repair trims)")
        if deep and committed:
            needed = set(range(math.ceil(committed / arr.chunks[0])))
            missing = sorted(needed - _present_chunks(store, name))
            if missing:
                rows = [(c * arr.chunks[0], min((c + 1) * arr.chunks[0], committed)) for c in missing[:5]]
                report.errors.append(f"{name}: {len(missing)} chunk(s) missing, e.g. rows {rows}")
    ends = store.array("meta/episode_ends")[:]
    if list(ends) != [e.end for e in store.episodes()]:
        report.warnings.append("meta/episode_ends mirror differs from the index (repair rewrites it)")
    for p in _partial_files(store):
        report.warnings.append(f"leftover temp file {p} (repair removes it)")
    if deep:
        for e in tqdm(store.episodes(), desc="decode episodes", disable=len(store) < 20):
            _check_episode(store, e, report)
    return report


def _check_episode(store: EpisodeStore, e: Any, report: ValidationReport) -> None:
    """Decode one episode and check what the writer guarantees: finite values (unless allowed), stamps
    that never go backwards, ``done`` on the last step only. Stores written before these checks
    existed (no ``allow_nonfinite`` attribute) get warnings for them instead of errors."""
    legacy = "allow_nonfinite" not in store.config
    flag = report.warnings if legacy else report.errors
    try:
        ep = store.read_episode(e.index)
        streams = {s: store.read_stream(e.index, s) for s in e.streams}
    except Exception as exc:  # noqa: BLE001 (report every unreadable episode, keep going)
        report.errors.append(f"episode {e.index}: unreadable: {exc}")
        return
    allowed = store.allow_nonfinite
    for key, v in ep.items():
        if key.startswith(STAMP_PREFIX):
            if np.any(np.diff(v) < 0):
                report.errors.append(f"episode {e.index}: {key} goes backwards at step "
                                     f"{int(np.flatnonzero(np.diff(v) < 0)[0]) + 1}")
        elif v.dtype.kind == "f" and key not in allowed and not np.all(np.isfinite(v)):
            step = int(np.flatnonzero(~np.isfinite(v.reshape(len(v), -1)).all(axis=1))[0])
            flag.append(f"episode {e.index}: key {key!r} holds NaN/inf (first at step {step})")
    for name, (values, stamps) in streams.items():
        if np.any(np.diff(stamps) < 0):
            report.errors.append(f"episode {e.index}: stream {name!r} stamps go backwards")
        if values.dtype.kind == "f" and name not in allowed and not np.all(np.isfinite(values)):
            flag.append(f"episode {e.index}: stream {name!r} holds NaN/inf")
    done = ep.get("done")
    if done is not None and done.ndim == 1 and np.any(done[:-1]):
        flag.append(f"episode {e.index}: done=True before the last step (step {int(np.flatnonzero(done[:-1])[0])})")


def repair(store: EpisodeStore) -> list[str]:
    """Trim uncommitted tails, rewrite the episode_ends mirror, remove temp files; returns what was done."""
    if store.read_only:
        raise StoreError(f"{store.uri}: opened read-only; repair needs mode 'a'")
    actions: list[str] = list(store.opened_cleanup)  # what opening the store for writing already did
    with store._locked():
        store.refresh()
        actions += store._clean_after_killed_writer()
        ends = [e.end for e in store.episodes()]
        if list(store.array("meta/episode_ends")[:]) != ends:
            store._write_index(store._index)
            actions.append("rewrote meta/episode_ends from the index")
    return actions


def merge(sources: Sequence[EpisodeStore], dest: EpisodeStore) -> int:
    """Append every committed episode of ``sources`` to ``dest`` (metadata, stamps and streams kept).

    Images are copied as their stored chunk bytes when both stores use the same image codec, so JPEG
    frames are not re-encoded (no generation loss); otherwise they are decoded and re-encoded.
    Returns the number of episodes copied. Rows of deleted episodes are not copied (compaction).
    """
    copied = 0
    for src in sources:
        same_codec = (src.config["image_codec"], src.config.get("jpeg_quality")) == (
            dest.config["image_codec"], dest.config.get("jpeg_quality"))
        for e in tqdm(src.episodes(), desc=f"merge {src.uri}"):
            ep = src.read_episode(e.index)
            data = {k: ep[k] for k in src.keys}
            stamps = {k[len(STAMP_PREFIX):]: v for k, v in ep.items() if k.startswith(STAMP_PREFIX)}
            streams = {s: src.read_stream(e.index, s) for s in e.streams}
            raw = _raw_image_copier(src, dest, e) if same_codec else None
            dest.add_episode(e.meta, data, stamps, success=e.success, streams=streams,
                             start_time=e.start_time, before_commit=raw)
            copied += 1
    return copied


def _raw_image_copier(src: EpisodeStore, dest: EpisodeStore, e: Any) -> Any:
    """Before commit: overwrite the new episode's image chunks with the source's stored bytes."""
    image_keys = [k for k, spec in src._schema["keys"].items() if spec["kind"] == "image"]

    def copy_chunks(dest_start: int) -> None:
        async def run() -> None:
            proto = default_buffer_prototype()
            for key in image_keys:
                enc_src = src.array(f"data/{key}").metadata.encode_chunk_key
                enc_dst = dest.array(f"data/{key}").metadata.encode_chunk_key
                for t in range(e.length):
                    buf = await src._zstore.get(f"data/{key}/" + enc_src((e.start + t, 0, 0, 0)), proto)
                    if buf is None:
                        raise StoreError(f"{src.uri}: episode {e.index} key {key!r}: chunk of row {e.start + t} missing")
                    await dest._zstore.set(f"data/{key}/" + enc_dst((dest_start + t, 0, 0, 0)), buf)

        sync(run())

    return copy_chunks


def export_video(store: EpisodeStore, episode: int, camera: str, out: str | Path, fps: float | None = None) -> Path:
    """Write one episode's camera frames to an mp4 (OpenCV); fps from the real frame stamps by default."""
    import cv2

    key = camera if camera.startswith("camera_") else f"camera_{camera}"
    if key not in store.keys:
        cams = [k for k in store.keys if k.startswith("camera_")]
        raise StoreError(f"episode {episode}: no camera {key!r} (cameras: {cams})")
    ep = store.read_episode(episode, [key])
    frames = ep[key]
    if fps is None:
        stamps = ep.get(STAMP_PREFIX + key, ep[STAMP_PREFIX + "step"])
        dt = np.diff(stamps)
        fps = float(1.0 / np.median(dt)) if len(dt) and np.median(dt) > 0 else 10.0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise StoreError(f"OpenCV could not open {out} for writing")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
    finally:
        writer.release()
    return out


def summary(store: EpisodeStore) -> str:
    """A readable table: store facts, keys, and one row per episode."""
    eps = store.episodes()
    n_success = sum(e.success for e in eps)
    lines = [
        f"store      {store.uri}",
        f"schema     v{store.config.get('schema_version')}, images {store.image_codec}"
        + (f" (quality {store.config.get('jpeg_quality')})" if store.image_codec == "jpeg" else ""),
        f"episodes   {len(eps)}, steps {sum(e.length for e in eps)}"
        + (f", dead rows {store.data_end - sum(e.length for e in eps)}" if store.data_end > sum(e.length for e in eps) else ""),
        f"success    {format_rate(n_success, len(eps)) if eps else 'n/a'}",
        "keys       " + ", ".join(f"{k} {v[1]}{list(v[0])}" for k, v in store.keys.items()),
        "stamps     " + ", ".join(store.stamp_keys),
    ]
    if store.streams:
        lines.append("streams    " + ", ".join(f"{k} {v[1]}{list(v[0])}" for k, v in store.streams.items()))
    header = f"{'#':>4} {'len':>5} {'dur s':>7} {'ok':>3} {'source':<12} {'task':<14} {'operator':<10} {'policy':<10} instruction"
    lines += ["", header, "-" * len(header)]
    for e in eps:
        m = e.meta
        lines.append(f"{e.index:>4} {e.length:>5} {e.duration:>7.1f} {'y' if e.success else 'n':>3} {m.source:<12} "
                     f"{m.task[:14]:<14} {m.operator[:10]:<10} {m.policy_id[:10]:<10} {m.instruction[:40]}")
    return "\n".join(lines)
