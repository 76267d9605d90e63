"""Episodes as a Rerun recording: cameras, joints, end-effector, actions, rewards and flags on the
real capture timeline; raw high-rate streams on their own timelines.

Every per-step key is logged on two timelines: ``capture_time`` (the stream's own capture stamps,
so a late camera frame shows up late) and ``step`` (the control tick index). Entity paths, for
episode ``i`` (``episode_<i>/``)::

    meta                    episode metadata (markdown, static)
    camera/<name>           JPEG frames (on the camera's capture stamps)
    joint_pos, joint_vel    one series per joint
    ee_pose                 x y z qx qy qz qw series; ee/position (a moving point), ee/trajectory (static)
    action, gripper, reward, done, terminal, intervention, control_source (code)  scalar series
    control_source/log      the name of who controls, logged at each change
    <other key>             any other low-dim key, one series per element
    streams/<name>          raw high-rate samples; timeline ``<name>_sample`` and capture_time

From Python (a notebook)::

    from robot_learning.data import view
    rec = view.recording("data/demo/lift.zarr", [0])   # a rerun RecordingStream, held in memory
    rec.notebook_show()             # or rec.save("ep0.rrd"), or view.save("data/demo/lift.zarr", "ep0.rrd", [0])
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robot_learning.data.layout import IMAGE_PREFIX, STAMP_PREFIX
from robot_learning.data.store import EpisodeStore, StoreError

CAPTURE = "capture_time"
STEP = "step"
POSE_NAMES = ("x", "y", "z", "qx", "qy", "qz", "qw")
FLAG_KEYS = ("reward", "done", "terminal", "intervention", "control_source")


def _rr() -> Any:
    try:
        import rerun as rr
    except ImportError as exc:  # a clear line instead of a traceback when the optional viewer is missing
        raise StoreError(f"the episode viewer needs rerun-sdk (pip install rerun-sdk): {exc}") from exc
    return rr


def entity_prefix(index: int) -> str:
    """Root entity path of episode ``index``."""
    return f"episode_{index}"


def _indexes(rr: Any, stamps: np.ndarray, steps: np.ndarray) -> list[Any]:
    return [rr.TimeColumn(CAPTURE, timestamp=np.asarray(stamps, dtype=np.float64)),
            rr.TimeColumn(STEP, sequence=np.asarray(steps, dtype=np.int64))]


def _series(rec: Any, rr: Any, path: str, values: np.ndarray, stamps: np.ndarray, names: Sequence[str] | None = None) -> None:
    """One scalar series per element of ``values`` (T, ...), on capture time and step."""
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    if len(v) == 0:
        return
    if names is None or len(names) != v.shape[1]:
        names = [str(d) for d in range(v.shape[1])] if v.shape[1] > 1 else [path.rsplit("/", 1)[-1]]
    rec.log(path, rr.SeriesLines(names=list(names)), static=True)
    rec.send_columns(path, indexes=_indexes(rr, stamps, np.arange(len(v))), columns=rr.Scalars.columns(scalars=v))


def _metadata_markdown(store: EpisodeStore, index: int) -> str:
    info = store.episode(index)
    m = info.meta
    rows = [("store", store.uri), ("episode", str(info.index)), ("uid", info.uid), ("task", m.task),
            ("instruction", m.instruction), ("source", m.source), ("operator", m.operator),
            ("policy", m.policy_id), ("success", str(info.success)), ("steps", str(info.length)),
            ("duration", f"{info.duration:.2f} s"), ("rates", json.dumps(m.rates))]
    text = "\n".join(f"| {k} | {v} |" for k, v in rows if v)
    tags = json.dumps(m.tags, indent=1, sort_keys=True)
    return f"# Episode {info.index}\n\n| field | value |\n|---|---|\n{text}\n\n## tags\n```json\n{tags}\n```\n"


def _log_camera(rec: Any, rr: Any, path: str, frames: np.ndarray, stamps: np.ndarray, jpeg_quality: int) -> None:
    import cv2

    if jpeg_quality <= 0:  # raw pixels: exact, but ~10x larger recordings
        for t, frame in enumerate(frames):
            rec.set_time(CAPTURE, timestamp=float(stamps[t]))
            rec.set_time(STEP, sequence=t)
            rec.log(path, rr.Image(frame, color_model="RGB"))
        return
    blobs = []
    for frame in frames:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise StoreError(f"{path}: a frame of shape {frame.shape} could not be JPEG-encoded")
        blobs.append(buf.tobytes())
    rec.send_columns(path, indexes=_indexes(rr, stamps, np.arange(len(frames))),
                     columns=rr.EncodedImage.columns(blob=blobs, media_type=["image/jpeg"] * len(blobs)))


def log_episode(rec: Any, store: EpisodeStore, index: int, jpeg_quality: int = 90) -> list[str]:
    """Log episode ``index`` of ``store`` into the rerun recording ``rec``; returns its entity paths."""
    rr = _rr()
    info = store.episode(index)
    prefix = entity_prefix(info.index)
    paths = [f"{prefix}/meta"]
    rec.log(paths[0], rr.TextDocument(_metadata_markdown(store, info.index), media_type=rr.MediaType.MARKDOWN),
            static=True)
    lowdim = [k for k in store.keys if not k.startswith(IMAGE_PREFIX)]
    ep = store.read_episode(info.index, keys=lowdim)
    tick = ep[STAMP_PREFIX + "step"]
    names = info.meta.tags.get("action_names") if isinstance(info.meta.tags, dict) else None
    for key in lowdim:
        stamps = ep.get(STAMP_PREFIX + key, tick)
        path = f"{prefix}/{key}"
        labels = POSE_NAMES if key == "ee_pose" else (names if key == "action" else None)
        if key.endswith("_pos") or key.endswith("_vel"):
            labels = [f"j{d}" for d in range(int(np.prod(store.keys[key][0]) or 1))]
        _series(rec, rr, path, ep[key], stamps, labels)
        paths.append(path)
    if "control_source" in ep:
        paths.append(_log_control_source(rec, rr, f"{prefix}/control_source/log", ep["control_source"],
                                         ep.get(STAMP_PREFIX + "control_source", tick)))
    if "ee_pose" in ep and np.prod(store.keys["ee_pose"][0]) >= 3:
        paths += _log_ee(rec, rr, prefix, ep["ee_pose"], ep.get(STAMP_PREFIX + "ee_pose", tick))
    for key in store.keys:
        if key.startswith(IMAGE_PREFIX):
            frames = store.read_rows(key, info.start, info.end)
            stamps = store.read_rows(STAMP_PREFIX + key, info.start, info.end) if key in store.stamp_keys else tick
            path = f"{prefix}/camera/{key[len(IMAGE_PREFIX):]}"
            _log_camera(rec, rr, path, frames, stamps, jpeg_quality)
            paths.append(path)
    for name in store.streams:
        values, stamps = store.read_stream(info.index, name)
        if len(values):
            v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
            path = f"{prefix}/streams/{name}"
            rec.send_columns(path, indexes=[rr.TimeColumn(CAPTURE, timestamp=stamps),
                                            rr.TimeColumn(f"{name}_sample", sequence=np.arange(len(v)))],
                             columns=rr.Scalars.columns(scalars=v))
            paths.append(path)
    return paths


def _log_control_source(rec: Any, rr: Any, path: str, codes: np.ndarray, stamps: np.ndarray) -> str:
    from robot_learning.data.quality import control_source_names

    codes = np.asarray(codes).reshape(-1).astype(np.int64)
    change = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.array([], int)
    if len(change):
        texts = control_source_names(codes[change])
        rec.send_columns(path, indexes=_indexes(rr, stamps[change], change),
                         columns=rr.TextLog.columns(text=texts, level=["INFO"] * len(texts)))
    return path


def _log_ee(rec: Any, rr: Any, prefix: str, pose: np.ndarray, stamps: np.ndarray) -> list[str]:
    xyz = np.asarray(pose, dtype=np.float32).reshape(len(pose), -1)[:, :3]
    xyz = xyz[np.all(np.isfinite(xyz), axis=1)] if len(xyz) else xyz
    rec.log(f"{prefix}/ee/trajectory", rr.LineStrips3D([xyz]), static=True)
    pos = np.asarray(pose, dtype=np.float32).reshape(len(pose), -1)[:, :3]
    rec.send_columns(f"{prefix}/ee/position", indexes=_indexes(rr, stamps, np.arange(len(pos))),
                     columns=rr.Points3D.columns(positions=pos).partition([1] * len(pos)))
    return [f"{prefix}/ee/trajectory", f"{prefix}/ee/position"]


def blueprint(store: EpisodeStore, episodes: Sequence[int]) -> Any:
    """Default layout: one tab per episode with cameras, joint/action plots, flags, the 3-D path and metadata."""
    import rerun.blueprint as rrb

    cams = [k[len(IMAGE_PREFIX):] for k in store.keys if k.startswith(IMAGE_PREFIX)]
    plots = [k for k in ("joint_pos", "joint_vel", "ee_pose", "action", "gripper") if k in store.keys]
    flags = [k for k in FLAG_KEYS if k in store.keys]
    tabs = []
    for i in episodes:
        p = entity_prefix(i)
        left = [rrb.Grid(*[rrb.Spatial2DView(origin=f"{p}/camera/{c}", name=c) for c in cams])] if cams else []
        if "ee_pose" in store.keys:
            left.append(rrb.Spatial3DView(origin=f"{p}/ee", name="end-effector path"))
        left.append(rrb.TextDocumentView(origin=f"{p}/meta", name="metadata"))
        right = [rrb.TimeSeriesView(origin=f"{p}/{k}", name=k) for k in plots]
        if flags:
            right.append(rrb.TimeSeriesView(origin=p, contents=[f"{p}/{k}" for k in flags], name="reward / flags"))
        if store.streams:
            right.append(rrb.TimeSeriesView(origin=f"{p}/streams", name="raw streams"))
        tabs.append(rrb.Horizontal(rrb.Vertical(*left), rrb.Vertical(*right), name=f"episode {i}"))
    return rrb.Blueprint(rrb.Tabs(*tabs), rrb.TimePanel(timeline=CAPTURE), collapse_panels=False)


def open_store(uri: str | EpisodeStore, storage_options: dict[str, Any] | None = None) -> EpisodeStore:
    """Open a store read-only; an unreachable remote store raises one StoreError line, not a traceback."""
    if isinstance(uri, EpisodeStore):
        return uri
    uri = str(uri)
    if "://" in uri and not uri.startswith("file://"):
        # a viewer should fail fast on a dead endpoint: botocore otherwise retries for minutes
        options = dict(storage_options or {})
        options.setdefault("config_kwargs", {"connect_timeout": 5, "read_timeout": 30,
                                             "retries": {"max_attempts": 2}})
        try:
            return EpisodeStore.open(uri, mode="r", storage_options=options)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 (botocore/aiohttp/fsspec raise many types for one cause)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"{uri}: cannot reach the store ({type(exc).__name__}: {first})") from exc
    return EpisodeStore.open(uri, mode="r", storage_options=storage_options)


def select_episodes(store: EpisodeStore, episodes: Sequence[int] | None) -> list[int]:
    """The episode indices to show (default: the first); a bad index raises StoreError."""
    if len(store) == 0:
        raise StoreError(f"{store.uri} has no episodes: nothing to show")
    chosen = [0] if not episodes else [int(i) for i in episodes]
    for i in chosen:
        if not -len(store) <= i < len(store):
            raise StoreError(f"episode {i} out of range: {store.uri} has {len(store)} episodes (0-{len(store) - 1})")
    return [i % len(store) for i in chosen]


def _build(
    store: str | EpisodeStore, episodes: Sequence[int] | None, storage_options: dict[str, Any] | None,
    jpeg_quality: int, application_id: str = "rlstack_data",
) -> tuple[Any, EpisodeStore, list[int]]:
    rr = _rr()
    st = open_store(store, storage_options)
    chosen = select_episodes(st, episodes)
    rec = rr.RecordingStream(application_id)  # a fresh recording id: viewing twice never merges rows
    rec.send_recording_name(f"{Path(st.uri.rstrip('/')).name} episode {', '.join(map(str, chosen))}")
    for i in chosen:
        log_episode(rec, st, i, jpeg_quality)
    return rec, st, chosen


def recording(
    store: str | EpisodeStore, episodes: Sequence[int] | None = None, storage_options: dict[str, Any] | None = None,
    jpeg_quality: int = 90, application_id: str = "rlstack_data",
) -> Any:
    """A rerun RecordingStream holding the episodes (buffered in memory until a sink is set:
    ``rec.save(path)``, ``rec.spawn()``, ``rec.serve_grpc()`` or ``rec.notebook_show()``)."""
    return _build(store, episodes, storage_options, jpeg_quality, application_id)[0]


def save(
    store: str | EpisodeStore, path: str | os.PathLike[str], episodes: Sequence[int] | None = None,
    storage_options: dict[str, Any] | None = None, jpeg_quality: int = 90,
) -> Path:
    """Write the episodes, with the default layout, to an ``.rrd`` file (open it with ``rerun FILE``)."""
    rec, st, chosen = _build(store, episodes, storage_options, jpeg_quality)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rec.save(str(out), default_blueprint=blueprint(st, chosen))
    rec.flush()
    rec.disconnect()
    return out


def has_display() -> bool:
    """Whether a native viewer window can open here."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def spawn(store: str | EpisodeStore, episodes: Sequence[int] | None = None,
          storage_options: dict[str, Any] | None = None, jpeg_quality: int = 90) -> None:
    """Open the native Rerun viewer (needs a display) and stream the episodes to it."""
    rec, st, chosen = _build(store, episodes, storage_options, jpeg_quality)
    rec.spawn(default_blueprint=blueprint(st, chosen))
    rec.flush()


def serve(store: str | EpisodeStore, port: int, episodes: Sequence[int] | None = None,
          storage_options: dict[str, Any] | None = None, jpeg_quality: int = 90, block: bool = True) -> str:
    """Serve the web viewer on http://127.0.0.1:<port> (data on <port>+1) with the episodes; blocks until Ctrl-C.

    Rerun binds every interface: on a shared network, reach it through ``ssh -L`` and firewall the ports."""
    rr = _rr()
    rec, st, chosen = _build(store, episodes, storage_options, jpeg_quality)
    # next to the web port, not rerun's 9876 (a spawned viewer's)
    grpc_url = rec.serve_grpc(grpc_port=port + 1, default_blueprint=blueprint(st, chosen))
    rec.flush()
    rr.serve_web_viewer(web_port=port, open_browser=False, connect_to=grpc_url)
    url = f"http://127.0.0.1:{port}"
    print(f"web viewer on {url} (data on {grpc_url}); Ctrl-C stops", flush=True)
    if block:
        import time

        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    return url


# ---------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """``rlstack data view`` arguments."""
    p.add_argument("store", help="store path or s3://bucket/prefix")
    p.add_argument("episodes", nargs="*", type=int, metavar="EPISODE", help="episode indices (default: 0)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--save", metavar="FILE.rrd", help="write a Rerun recording file (open it later with `rerun FILE.rrd`)")
    how.add_argument("--spawn", action="store_true", help="open the native Rerun viewer (needs a display; the default if there is one)")
    how.add_argument("--serve", type=int, metavar="PORT", help="serve the web viewer on http://127.0.0.1:PORT (data on PORT+1; remote machine: ssh -L PORT:localhost:PORT)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of logged frames, 0 = raw pixels (default 90)")
    p.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                   help="fsspec option for remote stores, e.g. endpoint_url=http://127.0.0.1:9000")


def run(args: argparse.Namespace) -> int:
    """Spawn, serve or save; with no display and no choice, save next to the working directory."""
    from robot_learning.data.cli import _storage_options

    if not 0 <= args.jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality must be in 0..100, got {args.jpeg_quality}")
    options = _storage_options(args.storage_option)
    if args.serve is not None:
        serve(args.store, args.serve, args.episodes, options, args.jpeg_quality)
        return 0
    if args.spawn or (args.save is None and has_display()):
        spawn(args.store, args.episodes, options, args.jpeg_quality)
        print("sent to the Rerun viewer")
        return 0
    out = args.save
    if out is None:
        eps = "_".join(map(str, args.episodes or [0]))
        out = f"{Path(args.store.rstrip('/')).stem}_ep{eps}.rrd"
    path = save(args.store, out, args.episodes, options, args.jpeg_quality)
    if args.save is None:
        print("no display here, so saved instead (--spawn or --serve PORT to choose)")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it with: rerun {path}")
    return 0
