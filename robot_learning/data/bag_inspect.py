"""What is in a rosbag2 bag before importing it: the mcap CRC check and ``import-bag --dry-run``.

``verify_bag`` checks every ``.mcap`` file's chunk CRCs and data-section CRC (the ``mcap`` package
reads the records; the check and the error naming the chunk are ours), so a flipped byte inside a
payload is an error naming the file, the chunk and its byte offset, not silently wrong pixels.
``survey`` reads a bag's topics, types, message counts, measured rates and stamp gaps;
``suggest_streams`` turns the topics whose types the importer decodes into ``--stream`` specs.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_learning.data.alignment import GAP_PERIODS
from robot_learning.data.streams import ROS_TYPES, StreamConfig

# ROS type -> the stream type the importer decodes it as (joint states: positions and velocities)
STREAM_TYPE_OF = {ros: kind for kind, ros in ROS_TYPES.items() if kind != "joint_position"}


def verify_mcap(path: Path) -> str | None:
    """Check one mcap file's chunk and data-section CRCs; raise ValueError naming the chunk and offset.

    Returns a note when the file carries no CRCs (rosbags' own writer writes none; ``ros2 bag record``
    writes them), since then corruption inside a payload cannot be detected."""
    from mcap.records import Chunk, DataEnd
    from mcap.stream_reader import CRCValidationError, StreamReader, get_chunk_data_stream

    chunks = unchecked = 0
    offset = 8  # after the magic: where the record being read starts
    data_crc = 0
    with open(path, "rb") as f:
        try:
            # emit_chunks: chunks come whole, so their CRC is checked here and the failing one named
            for record in StreamReader(f, emit_chunks=True, validate_crcs=True).records:
                if isinstance(record, Chunk):
                    where = (f"chunk {chunks} at byte offset {offset} (log times "
                             f"{record.message_start_time * 1e-9:.3f}..{record.message_end_time * 1e-9:.3f} s)")
                    try:
                        get_chunk_data_stream(record, validate_crc=True)
                    except CRCValidationError as exc:
                        raise ValueError(f"{path}: {where} fails its CRC check (stored {exc.expected:#010x}, "
                                         f"computed {exc.actual:#010x}): the file is corrupt") from None
                    except Exception as exc:  # noqa: BLE001 (a damaged compressed chunk)
                        raise ValueError(f"{path}: {where} cannot be decompressed ({type(exc).__name__}: "
                                         f"{str(exc)[:120]}): the file is corrupt") from None
                    chunks += 1
                    unchecked += record.uncompressed_crc == 0
                elif isinstance(record, DataEnd):
                    data_crc = record.data_section_crc
                offset = f.tell()
        except CRCValidationError as exc:  # the data section (everything before DataEnd)
            raise ValueError(f"{path}: the data section (bytes 0..{offset}) fails its CRC check (stored "
                             f"{exc.expected:#010x}, computed {exc.actual:#010x}): the file is corrupt") from None
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 (truncated, garbage: any reader failure is a bad file)
            raise ValueError(f"{path}: not a valid mcap file at byte offset {offset} "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if chunks and unchecked == chunks and not data_crc:
        return f"{path}: written without CRCs; corruption inside its payloads cannot be detected"
    return None


def verify_bag(bag: Path) -> list[str]:
    """``verify_mcap`` on every mcap file of a bag directory (sqlite3 files have no checksums)."""
    files = sorted(bag.glob("*.mcap")) if bag.is_dir() else [bag] if bag.suffix == ".mcap" and bag.is_file() else []
    notes = [verify_mcap(p) for p in files]
    return [n for n in notes if n]


@dataclass
class TopicSurvey:
    """One topic of a bag: type, count, measured rate and stamp gaps."""

    topic: str
    msgtype: str
    count: int = 0
    stamped: bool = False  # rate and gaps from header stamps (else from log times)
    rate_hz: float = 0.0  # 1 / mean interval outside gaps
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (start, length s), start from the bag's start
    out_of_order: int = 0
    detail: str = ""  # image size and encoding, joint names, array length


def survey(bag: Path) -> list[TopicSurvey]:
    """Read every message of a bag (once) for its topics' counts, rates and gaps."""
    from rosbags.highlevel import AnyReader

    if not bag.exists():
        raise FileNotFoundError(f"{bag}: no such bag (a rosbag2 directory with metadata.yaml)")
    try:
        with AnyReader([bag]) as reader:
            out = {c.topic: TopicSurvey(c.topic, c.msgtype) for c in reader.connections}
            stamps: dict[str, list[float]] = {t: [] for t in out}
            start = reader.start_time * 1e-9
            for conn, log_ns, raw in reader.messages():
                s = out[conn.topic]
                s.count += 1
                t = log_ns * 1e-9
                if conn.msgtype in STREAM_TYPE_OF:
                    msg = reader.deserialize(raw, conn.msgtype)
                    header = getattr(msg, "header", None)
                    if header is not None:
                        s.stamped = True
                        t = header.stamp.sec + header.stamp.nanosec * 1e-9
                    if not s.detail:
                        s.detail = _detail(msg)
                stamps[conn.topic].append(t)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as exc:  # rosbags' AnyReaderError, a payload that does not deserialize, a truncated file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{bag}: not a readable rosbag2 bag ({type(exc).__name__}: {first[:200]})") from exc
    for topic, s in out.items():
        _rate_and_gaps(s, np.asarray(stamps[topic]), start)
    return sorted(out.values(), key=lambda s: s.topic)


def _detail(msg: Any) -> str:
    """A short description of a message's shape."""
    if hasattr(msg, "encoding") and hasattr(msg, "height"):
        return f"{msg.width}x{msg.height} {msg.encoding}"
    if hasattr(msg, "format") and hasattr(msg, "data"):
        return f"compressed {msg.format}"
    if hasattr(msg, "name") and hasattr(msg, "position"):
        return f"{len(msg.position)} joints {list(msg.name)}"
    if hasattr(msg, "layout"):
        return f"{len(msg.data)} values"
    return ""


def _rate_and_gaps(s: TopicSurvey, t: np.ndarray, start: float) -> None:
    """Gaps: intervals over GAP_PERIODS median intervals (the aligner's rule; the whole recording is
    known here, so the median, unlike the live aligner's running mean); rate: 1 / mean other interval."""
    if len(t) < 2:
        return
    dt = np.diff(t)
    s.out_of_order = int(np.sum(dt <= 0))
    median = float(np.median(dt[dt > 0])) if np.any(dt > 0) else 0.0
    if median > 0:
        hole = dt > GAP_PERIODS * median
        s.rate_hz = 1.0 / float(np.mean(dt[~hole]))  # the publisher's rate, which a gap does not lower
        s.gaps = [(float(t[i] - start), float(dt[i])) for i in np.flatnonzero(hole)]


def _stream_name(topic: str, taken: set[str]) -> str:
    """A store key from a topic: /camera/front/image_raw -> camera_front, /joint_states -> joint."""
    parts = [p for p in topic.strip("/").split("/") if p not in ("image_raw", "image_rect", "image", "compressed")]
    name = re.sub(r"[^0-9a-zA-Z_]", "_", "_".join(parts)) or "stream"
    name = {"joint_states": "joint", "joint_state": "joint"}.get(name, name)
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def suggest_streams(topics: list[TopicSurvey], control_hz: float) -> tuple[list[StreamConfig], str, list[str]]:
    """``--stream`` specs for the topics the importer decodes, the clock stream's name, and notes."""
    pairs: list[tuple[StreamConfig, TopicSurvey]] = []
    notes: list[str] = []
    taken: set[str] = set()
    for s in topics:
        kind = STREAM_TYPE_OF.get(s.msgtype)
        if kind is None or (kind == "bool" and "success" in s.topic):
            continue
        mode = "nearest" if s.stamped else ("next" if kind == "float_array" else "latest")
        if s.stamped and 0 < s.rate_hz < control_hz and kind != "joint_state":
            mode = "latest"
            notes.append(f"{s.topic} ({s.rate_hz:.2f} Hz) is slower than the control rate ({control_hz:g} Hz): mode "
                         f"'latest' holds its last sample; 'nearest' would drop the ticks whose nearest sample is "
                         f"more than half a control period away")
        hw = re.match(r"(\d+)x(\d+) ", s.detail) if kind == "image" else None
        pairs.append((StreamConfig(_stream_name(s.topic, taken), s.topic, kind, mode=mode,
                                   rate_hz=round(s.rate_hz, 2) if s.stamped else 0.0,
                                   height=int(hw.group(2)) if hw else 0, width=int(hw.group(1)) if hw else 0), s))
    # the clock: the fastest joint state stream, else the fastest stamped stream sampled 'nearest'
    stamped = [p for p in pairs if p[0].mode == "nearest"]
    joints = [p for p in stamped if p[0].type == "joint_state"]
    clock = max(joints or stamped, key=lambda p: p[1].rate_hz)[0].name if stamped else ""
    return [p[0] for p in pairs], clock, notes


def spec(s: StreamConfig) -> str:
    """The compact ``--stream`` form ``name=/topic:type:mode:rate[:HxW]`` of a stream."""
    text = f"{s.name}={s.topic}:{s.type}:{s.mode}:{s.rate_hz:g}" if s.rate_hz else f"{s.name}={s.topic}:{s.type}:{s.mode}"
    if s.height and s.width:
        text += (":" if s.rate_hz else "::") + f"{s.height}x{s.width}"
    return text


def dry_run(bag: Path, control_hz: float, configured: list[StreamConfig]) -> int:
    """Print what a bag holds and a suggested import command line; writes nothing. 0, or 2 for a bad bag."""
    try:
        notes = verify_bag(bag)
        topics = survey(bag)
    except (ValueError, FileNotFoundError) as exc:
        print(f"import-bag: {exc}", file=sys.stderr)
        return 2
    total = sum(s.count for s in topics)
    print(f"{bag}: {len(topics)} topics, {total} messages")
    width = max([len(s.topic) for s in topics] + [5])
    tw = max([len(s.msgtype) for s in topics] + [4])
    print(f"  {'topic':<{width}}  {'type':<{tw}}  {'count':>7}  {'rate Hz':>8}  {'timing':<7}  gaps (t from the bag's start)")
    for s in topics:
        gaps = ", ".join(f"{g:.2f} s at t={t0:.2f} s" for t0, g in s.gaps[:3]) + (
            f", ... {len(s.gaps)} in all" if len(s.gaps) > 3 else "")
        order = f"; {s.out_of_order} stamps out of order" if s.out_of_order else ""
        rate = f"{s.rate_hz:8.2f}" if s.rate_hz else f"{'-':>8}"
        print(f"  {s.topic:<{width}}  {s.msgtype:<{tw}}  {s.count:>7}  {rate}  {'stamps' if s.stamped else 'log':<7}  "
              f"{gaps or 'none'}{order}{'  (' + s.detail + ')' if s.detail else ''}")
    unsupported = [s.topic for s in topics if s.msgtype not in STREAM_TYPE_OF]
    if unsupported:
        print(f"  not importable (no stream type for their message types): {', '.join(unsupported)}")
    for n in notes:
        print(f"  warning: {n}")
    present = {s.topic for s in topics}
    lacking = [c.topic for c in configured if c.topic not in present]
    if configured:
        print(f"  the configuration's streams: {len(configured) - len(lacking)} of {len(configured)} topics in the "
              f"bag" + (f"; lacking {', '.join(lacking)}" if lacking else ""))
    streams, clock, hints = suggest_streams(topics, control_hz)
    if not clock:
        print("  no stamped stream the importer decodes, so no clock to align to: nothing to suggest")
        return 0
    success = [s.topic for s in topics if s.msgtype == ROS_TYPES["bool"] and "success" in s.topic]
    args = ["rlstack", "data", "import-bag", str(bag), "--store", "STORE.zarr", "--clock", clock,
            "--control-hz", f"{control_hz:g}"] + (["--success-topic", success[0]] if success else [])
    print("suggested import (edit --store; --control-hz is --control-hz or the configuration's):")
    print("  " + " ".join(shlex.quote(a) for a in args) + " \\")
    print(" \\\n".join(f"    --stream {shlex.quote(spec(s))}" for s in streams))
    for h in hints:
        print(f"  note: {h}")
    return 0

