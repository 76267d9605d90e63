"""``rlstack data import-bag``: rosbag2 recordings (sqlite3 or mcap, read with ``rosbags``) -> episodes.

The topic mapping and the alignment are the recorder's (``robot_learning.data.alignment``), taken from the
same Hydra config as ``rlstack collect`` (``configs/collect.yaml``), so a session recorded with
``ros2 bag record`` becomes the same training data the live recorder would have written. Messages
are fed in log-time order; unstamped messages (``/action``) use their log time, which is their
receive time at the recording machine, as the live recorder does. One bag is one episode.

    rlstack data import-bag session1/ session2/ --store data/real.zarr --config robot=external
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robot_learning.data.streams import MODES, STREAM_TYPES


@dataclass
class BagImportResult:
    """What happened to one bag."""

    bag: str
    episode: int | None
    steps: int
    success: bool
    streams: dict[str, Any] = field(default_factory=dict)
    rejected_examples: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # dropped control ticks by cause (EpisodeAligner.drops)
    warnings: list[str] = field(default_factory=list)  # e.g. an mcap file without CRCs


def import_bag(
    bag: str | Path,
    store: Any,
    streams: Sequence[Any],
    clock: str,
    control_hz: float,
    task: str = "",
    source: str = "teleop",
    operator: str = "",
    success_topic: str = "",
    success: bool = False,
) -> BagImportResult:
    """Align one rosbag2 bag and commit it to ``store`` as one episode; bad messages are counted, skipped.

    The bag's mcap files are CRC-checked first (``bag_inspect.verify_bag``): a corrupt one is a ValueError."""
    from robot_learning.data.alignment import EpisodeAligner
    from robot_learning.data.bag_inspect import verify_bag
    from robot_learning.data.store import StoreError

    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f"{bag}: no such bag (a rosbag2 directory with metadata.yaml)")
    by_topic = {s.topic: s for s in streams}
    aligner = EpisodeAligner(streams, clock, control_hz, max_wait_s=float("inf"))
    examples: list[str] = []
    warnings = verify_bag(bag)  # one extra read of the files; a flipped payload byte is caught before any write
    try:
        result = _import(bag, store, streams, by_topic, aligner, clock, control_hz, task, source, operator,
                         success_topic, success, examples)
        result.warnings = warnings
        return result
    except (ValueError, FileNotFoundError, StoreError):
        raise
    except Exception as exc:  # rosbags' AnyReaderError, CDR deserialization errors, a truncated file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{bag}: not a readable rosbag2 bag ({type(exc).__name__}: {first[:200]})") from exc


def _import(bag: Path, store: Any, streams: Sequence[Any], by_topic: dict[str, Any], aligner: Any, clock: str,
            control_hz: float, task: str, source: str, operator: str, success_topic: str, success: bool,
            examples: list[str]) -> BagImportResult:
    """The import proper (``import_bag`` turns reader failures into one-line errors)."""
    from rosbags.highlevel import AnyReader

    from robot_learning.data.alignment import SampleError, decode
    from robot_learning.data.store import EpisodeMeta

    final_success = success
    with AnyReader([bag]) as reader:
        present = {c.topic: c for c in reader.connections}
        missing = [s.topic for s in streams if s.topic not in present]
        if aligner.streams[clock].topic in missing:
            raise ValueError(f"{bag}: the clock topic {aligner.streams[clock].topic} is not in the bag "
                             f"(topics: {sorted(present)})")
        for s in streams:
            c = present.get(s.topic)
            if c is not None and c.msgtype != s.ros_type:
                raise ValueError(f"{bag}: topic {s.topic} has type {c.msgtype}, stream '{s.name}' expects {s.ros_type}")
        if missing:
            raise ValueError(f"{bag}: the bag lacks topic(s) {missing} that the configuration records (bag topics: "
                             f"{sorted(present)}); pass --stream NAME=/TOPIC:TYPE for the ones it has")
        wanted = [c for t, c in present.items() if t in by_topic or t == success_topic]
        meta = EpisodeMeta(task=task, source=source, operator=operator,
                           rates={"step": control_hz, **{k: s.rate_hz for s in streams for k in s.keys if s.rate_hz > 0}},
                           tags={"bag": str(bag)})
        writer = store.begin_episode(meta)
        try:
            for conn, log_ns, raw in reader.messages(connections=wanted):
                try:
                    msg = reader.deserialize(raw, conn.msgtype)
                except Exception as exc:  # noqa: BLE001 (a corrupt payload: the bag is bad, say where)
                    raise ValueError(f"{bag}: message on {conn.topic} at log time {log_ns * 1e-9:.3f} cannot be "
                                     f"deserialized as {conn.msgtype} ({type(exc).__name__}); the bag is corrupt") from exc
                t = log_ns * 1e-9
                if conn.topic == success_topic:
                    final_success = bool(msg.data)
                    continue
                s = by_topic[conn.topic]
                try:
                    stamp, values = decode(s, msg)
                except SampleError as exc:
                    aligner.stats[s.name].rejected += 1
                    aligner.stats[s.name].last_error = str(exc)
                    if len(examples) < 10:
                        examples.append(f"{str(exc)} (log time {t:.3f})")
                    continue
                try:
                    aligner.add(s.name, stamp, values, recv_time=t)
                except SampleError as exc:
                    if len(examples) < 10:
                        examples.append(f"{str(exc)} (log time {t:.3f})")
                    continue
                for step in aligner.pop_ready(now=t):
                    writer.append(step.data, step.stamps)
                _write_raw(writer, aligner)
            for step in aligner.flush():
                writer.append(step.data, step.stamps)
            _write_raw(writer, aligner)
            if len(writer) == 0:
                writer.discard()
                return BagImportResult(str(bag), None, 0, False, aligner.summary(), examples, dict(aligner.drops))
            writer.meta.tags["recorder"] = {"streams": aligner.summary(), "dropped_ticks": dict(aligner.drops)}
            index = writer.commit(success=final_success)
        except BaseException:
            writer.discard()
            raise
    return BagImportResult(str(bag), index, aligner.steps_out, final_success, aligner.summary(), examples,
                           dict(aligner.drops))


def _write_raw(writer: Any, aligner: Any) -> None:
    """Samples of ``keep_raw`` streams (StreamConfig.keep_raw) go to streams/<key>, unresampled."""
    for key, (values, stamps) in aligner.pop_raw().items():
        writer.append_stream(key, values, stamps)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``rlstack data import-bag BAG... --store PATH [--config key=value ...]`` (or ``--dry-run BAG...``)."""
    parser.description = ("Import rosbag2 bags (sqlite3 or mcap) as episodes, with the recorder's topic mapping "
                          "and alignment from configs/collect.yaml. One bag = one episode. --dry-run first shows "
                          "a bag's topics, types, rates and gaps and a suggested --stream mapping.")
    parser.add_argument("bags", nargs="+", help="rosbag2 directories (with metadata.yaml)")
    parser.add_argument("--store", default=None, help="episode store to append to (path or s3:// URL); "
                        "required unless --dry-run")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each bag's topics, message types, counts, rates and stamp gaps and a suggested "
                             "import command line (--stream specs for the topics the importer decodes); write nothing")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of configs/collect.yaml that pick the topic mapping, e.g. robot=external "
                             "recorder.clock=joint task=lift")
    parser.add_argument("--stream", action="append", default=[], metavar="NAME=/TOPIC:TYPE[:MODE:RATE:HxW]",
                        help="record exactly these streams instead of the config's (repeatable); TYPE is one of "
                             f"{', '.join(STREAM_TYPES)}; MODE one of {', '.join(MODES)}")
    parser.add_argument("--clock", default=None, help="clock stream name (default: the config's recorder.clock)")
    parser.add_argument("--control-hz", type=float, default=None, help="control rate (default: the config's)")
    parser.add_argument("--success-topic", default="", help="std_msgs/Bool topic whose last value is the success flag")
    parser.add_argument("--success", action="store_true", help="mark every imported episode successful")
    parser.add_argument("--source", default="teleop", help="episode source (teleop, policy, intervention, scripted)")
    parser.add_argument("--operator", default="", help="operator name stored with the episodes")


def print_summary(r: BagImportResult, control_hz: float) -> None:
    """One line per bag, then per stream its gaps and rejections, and why control ticks were dropped."""
    rejected = sum(s["rejected"] for s in r.streams.values())
    worst = max((s["align_err_max_ms"] for s in r.streams.values()), default=0.0)
    where = f"episode {r.episode}" if r.episode is not None else "nothing committed (no aligned steps)"
    print(f"{r.bag}: {where}, {r.steps} steps, success={r.success}, rejected {rejected} messages, "
          f"max alignment error {worst:.1f} ms")
    for name, st in r.streams.items():
        why = ", ".join(f"{k} {n}" for k, n in st.get("rejected_by", {}).items())
        if st["rejected"] or st["gaps"] or st["missing_steps"]:
            print(f"  {name}: {st['received']} received, {st['gaps']} missing by stamps (gaps), "
                  f"{st['rejected']} rejected{f' ({why})' if why else ''}, missing for {st['missing_steps']} "
                  f"control ticks")
    dropped = sum(r.dropped.values())
    if dropped:
        print(f"  {dropped} of {r.steps + dropped} control ticks dropped, by cause (t in s from the first tick):")
        causes = sorted(r.dropped.items(), key=lambda kv: (-kv[1], kv[0]))
        for why, n in causes[:8]:
            print(f"    {n:>6}  {why}")
        if len(causes) > 8:
            print(f"    {sum(n for _w, n in causes[8:]):>6}  ({len(causes) - 8} more causes)")
    slow = [f"{name} ({st['rate_hz']:g} Hz)" for name, st in r.streams.items()
            if any(w.startswith(f"{name}: nearest sample") for w in r.dropped) and 0 < st["rate_hz"] < control_hz]
    if slow:
        print(f"  hint: {', '.join(slow)} {'runs' if len(slow) == 1 else 'run'} slower than the {control_hz:g} Hz control "
              f"rate: sampled 'nearest', ticks between its samples are dropped; mode 'latest' holds the last sample "
              f"(--stream NAME=/TOPIC:TYPE:latest)")
    for e in r.rejected_examples[:3]:
        print(f"  rejected: {e}", file=sys.stderr)
    for w in r.warnings:
        print(f"import-bag: warning: {w}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Import each bag (or, with --dry-run, describe it); exit 2 if any bag failed."""
    from tqdm import tqdm

    from robot_learning.data.alignment import StreamConfig
    from robot_learning.data.collect_config import load_config
    from robot_learning.data.store import EpisodeStore

    try:
        cfg, _ = load_config(list(args.config), graph=False)
        streams = [StreamConfig.from_param(s) for s in args.stream] if args.stream else cfg.all_streams()
    except ValueError as exc:
        print(f"import-bag: {exc}", file=sys.stderr)
        return 2
    clock = args.clock or cfg.recorder.clock
    control_hz = args.control_hz or cfg.robot.control_hz
    if args.dry_run:
        from robot_learning.data.bag_inspect import dry_run

        return max(dry_run(Path(bag), control_hz, streams) for bag in args.bags)
    if not args.store:
        print("import-bag: --store PATH is required (or --dry-run to only look at the bags)", file=sys.stderr)
        return 2
    from robot_learning.data.store import is_url, local_path

    created = not is_url(args.store) and not local_path(args.store).exists()
    store = EpisodeStore.open(args.store, mode="a")
    failures = 0
    try:
        for bag in tqdm(args.bags, desc="bags", unit="bag", disable=len(args.bags) < 2):
            try:
                r = import_bag(bag, store, streams, clock, control_hz, task=cfg.robot.task, source=args.source,
                               operator=args.operator, success_topic=args.success_topic, success=args.success)
            except (ValueError, FileNotFoundError) as exc:
                print(f"import-bag: {exc}", file=sys.stderr)
                failures += 1
                continue
            print_summary(r, control_hz)
            failures += r.episode is None
    finally:
        empty = len(store) == 0
        store.close()
        if created and empty:  # a failed import into a new path leaves no empty store behind
            import shutil

            shutil.rmtree(local_path(args.store), ignore_errors=True)
    return 2 if failures else 0
