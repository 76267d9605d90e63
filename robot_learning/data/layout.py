"""On-disk layout of the episode store: constants, metadata types, and the zarr nodes it creates.

See ``store.py`` for the layout picture and the crash-safety argument.
"""

from __future__ import annotations

import copy
import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from robot_learning.data.codecs import JpegCodec

SCHEMA_VERSION = 1
SOURCES = ("teleop", "policy", "intervention", "scripted", "arena")
# The one step schema every writer uses (teleop recorder, policy node, sim demos, arena, RL actors):
# key -> dtype. ``action`` is the executed action (the operator's during a takeover); ``reward`` is
# what the writer observed (0 where it knows none; labels are computed later, never rewritten in
# place); ``done`` ends the episode, ``terminal`` says the end is a true terminal state (success or
# failure, no bootstrapping), ``done and not terminal`` is a truncation; ``intervention`` is a person
# in control; ``control_source`` is a code into CONTROL_SOURCES.
STEP_SCHEMA = {"reward": np.float32, "done": np.bool_, "terminal": np.bool_, "intervention": np.bool_,
               "control_source": np.uint8}
CONTROL_SOURCES = ("policy", "human", "hold", "estop")
# Keys of STEP_SCHEMA hold one value per step (shape ()); ``done`` may be true on the last step only,
# ``terminal`` only where ``done`` is. Stores written before ``control_source`` existed stay readable.
STEP_STAMPED = ("action", "reward", "done", "terminal", "intervention", "control_source")
IMAGE_PREFIX = "camera_"
IMAGE_CODECS = ("jpeg", "lossless")
STAMP_PREFIX = "stamp/"
LOWDIM_CHUNK_ROWS = 1024
STAMP_CHUNK_ROWS = 4096
FLUSH_STEPS = 64
FLUSH_BYTES = 64 << 20


class StoreError(Exception):
    """Bad input or a damaged/missing store; the message names the key, step or episode."""


def schema_step(
    reward: float = 0.0, done: bool = False, terminal: bool = False, intervention: bool = False,
    control_source: str | int = "policy",
) -> dict[str, np.ndarray]:
    """The STEP_SCHEMA fields of one step, typed as the store holds them (``control_source`` by name or code)."""
    if isinstance(control_source, str):
        if control_source not in CONTROL_SOURCES:
            raise StoreError(f"control_source {control_source!r} is not one of {CONTROL_SOURCES}")
        code = CONTROL_SOURCES.index(control_source)
    else:
        code = int(control_source)
        if not 0 <= code < len(CONTROL_SOURCES) or code != control_source:
            raise StoreError(f"control_source code {control_source!r} is not one of 0..{len(CONTROL_SOURCES) - 1} "
                             f"({', '.join(CONTROL_SOURCES)})")
    if terminal and not done:
        raise StoreError("terminal=True needs done=True (a terminal state ends the episode)")
    with np.errstate(over="ignore"):
        r = np.float32(reward)
    if math.isfinite(reward) and not math.isfinite(r):
        raise StoreError(f"reward {reward!r} overflows float32")
    return {"reward": np.asarray(r), "done": np.asarray(bool(done)), "terminal": np.asarray(bool(terminal)),
            "intervention": np.asarray(bool(intervention)), "control_source": np.asarray(code, dtype=np.uint8)}


@dataclass
class EpisodeMeta:
    """Per-episode metadata stored in the episode table."""

    task: str = ""
    source: str = "scripted"
    operator: str = ""
    policy_id: str = ""
    instruction: str = ""
    rates: dict[str, float] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise StoreError on a bad field."""
        if self.source not in SOURCES:
            raise StoreError(f"EpisodeMeta.source must be one of {SOURCES}, got {self.source!r}")
        for name in ("task", "operator", "policy_id", "instruction"):
            if not isinstance(getattr(self, name), str):
                raise StoreError(f"EpisodeMeta.{name} must be a string")
        for stream, rate in self.rates.items():
            if not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
                raise StoreError(f"EpisodeMeta.rates[{stream!r}] must be a positive number, got {rate!r}")
        try:
            json.dumps(self.tags, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"EpisodeMeta.tags must be plain JSON values (str, int, float, bool, list, dict): {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpisodeMeta:
        """Inverse of to_dict (unknown fields are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: copy.deepcopy(v) for k, v in d.items() if k in names})


@dataclass(frozen=True)
class EpisodeInfo:
    """One committed episode: its rows [start, end) in ``data/*`` and its metadata."""

    index: int
    start: int
    end: int
    length: int
    meta: EpisodeMeta
    success: bool
    start_time: float
    duration: float
    uid: str
    streams: dict[str, tuple[int, int]]


def is_url(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def empty_index() -> dict[str, Any]:
    return {"generation": 0, "data_end": 0, "stream_ends": {}, "episodes": []}


def episode_info(i: int, e: Mapping[str, Any]) -> EpisodeInfo:
    return EpisodeInfo(
        index=i, start=int(e["start"]), end=int(e["end"]), length=int(e["end"]) - int(e["start"]),
        meta=EpisodeMeta.from_dict(e["meta"]), success=bool(e["success"]),
        start_time=float(e["start_time"]), duration=float(e["duration"]), uid=str(e["uid"]),
        streams={k: (int(v[0]), int(v[1])) for k, v in e.get("streams", {}).items()},
    )


def array_path(key: str) -> str:
    """Zarr path of a per-step key ("joint_pos") or of its stamps ("stamp/joint_pos")."""
    return f"stamps/{key[len(STAMP_PREFIX):]}" if key.startswith(STAMP_PREFIX) else f"data/{key}"


def read_attrs(zstore: zarr.abc.store.Store, path: str) -> dict[str, Any]:
    """Attributes of the group at ``path``, read straight from its zarr.json: one GET on S3."""
    key = f"{path}/zarr.json" if path else "zarr.json"
    buf = sync(zstore.get(key, default_buffer_prototype()))
    if buf is None:
        raise StoreError(f"{key} is missing: not an episode store, or a damaged one")
    return dict(json.loads(buf.to_bytes()).get("attributes") or {})


def image_codec_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    if config["image_codec"] == "jpeg":
        return {"serializer": JpegCodec(quality=int(config.get("jpeg_quality", 90))), "compressors": None}
    # Lossless: zstd level 1 inside blosc; byte shuffle does nothing for uint8, so it is off.
    return {"compressors": BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle", typesize=1)}


def probe(zstore: zarr.abc.store.Store) -> str:
    """'store', 'empty' (nothing there), 'foreign-empty' (an empty zarr group) or 'foreign'."""
    try:
        root = zarr.open_group(zstore, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        async def _any_key() -> bool:
            async for key in zstore.list():
                if key != ".writer.lock" and not key.endswith(".partial"):  # ours: a lock taken before creation
                    return True
            return False

        return "foreign" if sync(_any_key()) else "empty"
    except (ValueError, KeyError, TypeError):
        return "foreign"
    if "robot_learning_store" in root.attrs:
        return "store"
    return "foreign" if list(root.keys()) or root.attrs.asdict() else "foreign-empty"


def create_store(zstore: zarr.abc.store.Store, image_codec: str, jpeg_quality: int,
                 allow_nonfinite: tuple[str, ...] = ()) -> None:
    _clear(zstore)
    root = zarr.create_group(zstore, attributes={
        "robot_learning_store": {"schema_version": SCHEMA_VERSION, "image_codec": image_codec,
                                 "jpeg_quality": int(jpeg_quality), "allow_nonfinite": sorted(allow_nonfinite),
                                 "created": time.time(),
                                 "created_by": f"robot_learning {uuid.uuid4().hex[:8]}"},
        "schema": {},
    })
    root.create_group("meta", attributes={"index": empty_index()})
    zarr.create_array(zstore, name="meta/episode_ends", shape=(0,), chunks=(65536,), dtype=np.int64,
                      fill_value=0)


def _clear(zstore: zarr.abc.store.Store) -> None:
    """Remove everything but the writer lock (zarr's own overwrite deletes the lock file too, and a
    second writer would then lock a new file: two writers)."""
    async def run() -> None:
        async for entry in zstore.list_dir(""):
            if entry == ".writer.lock":
                continue
            await zstore.delete_dir(entry)
            await zstore.delete(entry)

    sync(run())


def create_step_arrays(zstore: zarr.abc.store.Store, config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Create empty data/<key> and stamps/<key> arrays for ``schema`` (replacing any)."""
    for group in ("data", "stamps"):
        zarr.create_group(zstore, path=group, overwrite=True)
    for key, spec in schema["keys"].items():
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if spec["kind"] == "image":
            kw = image_codec_kwargs(config)
            chunks = (1, *shape)  # one frame per chunk: a window read touches only its frames
        else:
            kw = {"compressors": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")}
            chunks = (LOWDIM_CHUNK_ROWS, *shape)
        zarr.create_array(zstore, name=f"data/{key}", shape=(0, *shape), chunks=chunks, dtype=dtype,
                          fill_value=0, **kw)
    for key in schema["stamps"]:
        zarr.create_array(zstore, name=f"stamps/{key}", shape=(0,), chunks=(STAMP_CHUNK_ROWS,),
                          dtype=np.float64, fill_value=0.0, compressors=BloscCodec(cname="zstd", clevel=3))


def create_stream_arrays(zstore: zarr.abc.store.Store, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Create empty streams/<name>/values and streams/<name>/stamps."""
    zarr.create_array(zstore, name=f"streams/{name}/values", shape=(0, *shape), chunks=(STAMP_CHUNK_ROWS, *shape),
                      dtype=dtype, fill_value=0, overwrite=True,
                      compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    zarr.create_array(zstore, name=f"streams/{name}/stamps", shape=(0,), chunks=(STAMP_CHUNK_ROWS,),
                      dtype=np.float64, fill_value=0.0, overwrite=True, compressors=BloscCodec(cname="zstd", clevel=3))
