"""``rlstack data``: inspect and maintain episode stores (local paths or s3://bucket/prefix).

Sub-commands come from ``SUBCOMMANDS``: those with a module path live in their own module (imported
only when the data CLI is built) with ``add_arguments(parser)`` / ``run(args) -> int``; e.g.
``import-bag`` lives in ``robot_learning/data/bag_import.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robot_learning.data.store import EpisodeStore, StoreError

# name -> (module with add_arguments/run, or None for the commands in this file; one-line help)
SUBCOMMANDS: dict[str, tuple[str | None, str]] = {
    "info": (None, "summary table: codec, keys, stamps, one row per episode"),
    "validate": (None, "check the index against the arrays (exit 1 on damage); --deep decodes everything"),
    "repair": (None, "trim uncommitted tails left by a killed writer, remove temp files"),
    "stats": (None, "normalization statistics (min/max/mean/std/q01/q99) per key"),
    "delete-episode": (None, "remove one episode from the index (atomic; the others stay bit-identical)"),
    "merge": (None, "append every episode of one or more stores to another (also compacts)"),
    "export-video": (None, "write an episode's camera to mp4 (OpenCV), at the real frame rate"),
    "import-bag": ("robot_learning.data.bag_import", "import rosbag2 recordings as episodes (--dry-run: topics, rates, a mapping)"),
    "view": ("robot_learning.data.view", "show episodes in Rerun: spawn the viewer, --serve PORT or --save FILE.rrd"),
    "report": ("robot_learning.data.report", "one self-contained HTML report: success, lengths, thumbnails, timing, flags"),
}


def _storage_options(pairs: list[str] | None) -> dict[str, Any] | None:
    """KEY=VALUE pairs -> fsspec storage options (values parsed as JSON when they are JSON)."""
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--storage-option needs KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _open(args: argparse.Namespace, uri: str | None = None, mode: str = "r", **kw: Any) -> EpisodeStore:
    return EpisodeStore.open(uri or args.store, mode=mode, storage_options=_storage_options(args.storage_option), **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the data sub-commands."""
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    def add(name: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=SUBCOMMANDS[name][1], description=SUBCOMMANDS[name][1])
        return p

    def with_store(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("store", help="store path or s3://bucket/prefix")
        p.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                       help="fsspec option for remote stores, e.g. endpoint_url=http://127.0.0.1:9000")
        return p

    with_store(add("info"))
    p = with_store(add("validate"))
    p.add_argument("--deep", action="store_true", help="also check every chunk exists and decode every episode")
    with_store(add("repair"))
    p = with_store(add("stats"))
    p.add_argument("--keys", nargs="+", help="keys (default: every low-dim key)")
    p.add_argument("--episodes", nargs="+", type=int, help="episode indices (default: all)")
    p.add_argument("--out", help="also write the stats as JSON here")
    p = with_store(add("delete-episode"))
    p.add_argument("episode", type=int, help="episode index (see info)")
    p = with_store(add("merge"))
    p.add_argument("sources", nargs="+", help="stores whose episodes are appended to STORE")
    p.add_argument("--image-codec", choices=("jpeg", "lossless"), help="codec if STORE is created")
    p = with_store(add("export-video"))
    p.add_argument("episode", type=int)
    p.add_argument("--camera", help="camera name, e.g. front (default: the first camera)")
    p.add_argument("--out", help="mp4 path (default: <store>_ep<N>_<camera>.mp4 in the working directory)")
    p.add_argument("--fps", type=float, help="frame rate (default: from the real frame stamps)")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if module_name is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # e.g. an optional dependency missing: the other commands still work
            p.set_defaults(_unavailable=f"'{name}' is not available: {exc}")
            continue
        module.add_arguments(p)


def _info(args: argparse.Namespace) -> int:
    from robot_learning.data.maintenance import summary

    print(summary(_open(args)))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from robot_learning.data.maintenance import validate

    report = validate(_open(args), deep=args.deep)
    for w in report.warnings:
        print(f"warning: {w}")
    for e in report.errors:
        print(f"ERROR: {e}")
    print("ok" if report.ok else f"{len(report.errors)} error(s)")
    return 0 if report.ok else 1


def _repair(args: argparse.Namespace) -> int:
    from robot_learning.data.maintenance import repair

    actions = repair(_open(args, mode="a"))
    print("\n".join(actions) if actions else "nothing to repair")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from robot_learning.data.stats import compute_stats

    store = _open(args)
    keys = args.keys or [k for k in store.keys if not k.startswith("camera_")]
    stats = compute_stats(store, keys, episodes=args.episodes)
    print(f"{'key':<16} {'field':<5} values")
    for key, s in stats.items():
        for name in ("min", "max", "mean", "std", "q01", "q99"):
            values = " ".join(f"{v:9.4g}" for v in getattr(s, name).reshape(-1)[:12])
            print(f"{key:<16} {name:<5} {values}")
    if args.out:
        Path(args.out).write_text(json.dumps({k: v.to_dict() for k, v in stats.items()}, indent=1))
        print(f"wrote {args.out}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    store = _open(args, mode="a")
    info = store.episode(args.episode)
    store.delete_episode(args.episode)
    print(f"deleted episode {info.index} ({info.length} steps, task {info.meta.task!r}); {len(store)} left")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from robot_learning.data.maintenance import merge

    sources = [_open(args, uri=s) for s in args.sources]
    dest = _open(args, mode="a", image_codec=args.image_codec or sources[0].image_codec)
    n = merge(sources, dest)
    print(f"copied {n} episodes into {dest.uri} (now {len(dest)})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from robot_learning.data.maintenance import export_video

    store = _open(args)
    cams = [k for k in store.keys if k.startswith("camera_")]
    if not cams:
        raise StoreError(f"{store.uri} has no camera keys")
    camera = args.camera or cams[0]
    name = camera.removeprefix("camera_")
    out = args.out or f"{Path(args.store.rstrip('/')).stem}_ep{args.episode}_{name}.mp4"
    path = export_video(store, args.episode, camera, out, fps=args.fps)
    print(f"wrote {path}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": _info, "validate": _validate, "repair": _repair, "stats": _stats,
    "delete-episode": _delete, "merge": _merge, "export-video": _export,
}


def run(args: argparse.Namespace) -> int:
    """Dispatch one data sub-command; store errors print one clear line and exit 2."""
    if getattr(args, "_unavailable", None):
        print(f"error: {args._unavailable}", file=sys.stderr)
        return 2
    try:
        handler = HANDLERS.get(args.data_command)
        if handler is None:
            module_name = SUBCOMMANDS[args.data_command][0]
            return int(importlib.import_module(str(module_name)).run(args) or 0)
        return handler(args)
    except (StoreError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
