"""Crash-safe zarr v3 episode store, local or ``s3://`` (fsspec).

Layout (``schema_version`` 1)::

    zarr.json                 root attrs: robot_learning_store {schema_version, image_codec, ...}, schema
    data/<key>                per-step arrays concatenated over time (T, *shape); images one frame per chunk
    stamps/<key>              float64 real capture time of each stored stream; ``stamps/step`` = control tick
    streams/<name>/values     high-rate streams (e.g. 500 Hz joints), own time axis
    streams/<name>/stamps     their capture times
    meta/zarr.json            attrs "index": the episode table -- THE COMMIT POINT
    meta/episode_ends         int64 mirror of the committed episode ends (diffusion_policy style)

Crash safety: rows are written past the committed end (``index.data_end``) first, then the index is
written in one piece (zarr writes a metadata document with one atomic ``os.replace`` locally and one
PUT on S3). Readers only trust the index, so an episode is visible exactly when its index write lands;
a writer killed at any instant leaves every committed row untouched (appends only write rows past
``data_end``; a rewritten partial low-dim chunk is replaced atomically with identical committed bytes).
JPEG chunks hold one frame, so a committed frame is never re-encoded. ``repair`` trims the tails.

Timestamps in ``read_episode``: ``"stamp/step"`` (control tick) and ``"stamp/<key>"`` for every stored
observation stream (seconds, float64). ``action``/``reward``/``done``/``terminal``/``intervention`` use
the step stamp unless a stamp was given for them in the first step.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
import zarr.storage
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from robot_learning.data.codecs import JpegCodec

SCHEMA_VERSION = 1
SOURCES = ("teleop", "policy", "intervention", "scripted")
STEP_STAMPED = ("action", "reward", "done", "terminal", "intervention")
IMAGE_PREFIX = "camera_"
IMAGE_CODECS = ("jpeg", "lossless")
STAMP_PREFIX = "stamp/"
LOWDIM_CHUNK_ROWS = 1024
STAMP_CHUNK_ROWS = 4096
FLUSH_STEPS = 64
FLUSH_BYTES = 64 << 20


class StoreError(Exception):
    """Bad input or a damaged/missing store; the message names the key, step or episode."""


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


def _is_url(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _empty_index() -> dict[str, Any]:
    return {"generation": 0, "data_end": 0, "stream_ends": {}, "episodes": []}


class EpisodeStore:
    """An episode store; open with ``EpisodeStore.open``."""

    def __init__(self, uri: str, zstore: zarr.abc.store.Store, read_only: bool) -> None:
        self.uri = uri
        self._zstore = zstore
        self.read_only = read_only
        self._arrays: dict[str, zarr.Array] = {}
        self._writer: EpisodeWriter | None = None
        self._lock_file: Any = None
        attrs = _read_attrs(zstore, "")
        self.config: dict[str, Any] = dict(attrs["robot_learning_store"])  # type: ignore[arg-type]
        self._schema: dict[str, Any] = dict(attrs.get("schema") or {})  # type: ignore[arg-type]
        self.refresh()

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        uri: str | os.PathLike[str],
        mode: str = "a",
        image_codec: str | None = None,
        storage_options: dict[str, Any] | None = None,
        jpeg_quality: int = 90,
    ) -> EpisodeStore:
        """Open ``uri`` (path or fsspec URL): mode "r" read-only, "a" create-or-append, "w" overwrite.

        ``image_codec`` ("jpeg" or "lossless") applies when the store is created; an existing store
        keeps the codec recorded in its attributes.
        """
        uri = str(uri)
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        if image_codec is not None and image_codec not in IMAGE_CODECS:
            raise ValueError(f"image_codec must be one of {IMAGE_CODECS}, got {image_codec!r}")
        if _is_url(uri):
            zstore = zarr.storage.FsspecStore.from_url(
                uri, storage_options=storage_options, read_only=(mode == "r"))
        else:
            path = _local_path(uri)
            if mode == "r" and not path.exists():
                raise StoreError(f"{uri}: no such store (path does not exist)")
            if mode != "r" and path.exists() and not path.is_dir():
                raise StoreError(f"{uri}: is a file, not an episode store")
            zstore = zarr.storage.LocalStore(path, read_only=(mode == "r"))
        state = _probe(zstore)
        if state == "foreign" and mode == "w":
            raise StoreError(f"{uri}: refusing to overwrite something that is not an episode store")
        if state == "foreign" or (state != "store" and mode == "r"):
            raise StoreError(f"{uri}: not an episode store (no robot_learning_store attributes in zarr.json)")
        if mode == "w" or state in ("empty", "foreign-empty"):
            _create(zstore, image_codec or "jpeg", jpeg_quality)
        return cls(uri, zstore, read_only=(mode == "r"))

    # ---------------------------------------------------------------- index
    def refresh(self) -> None:
        """Re-read the episode table: see episodes committed since open.

        Opened arrays are kept (reads past a cached shape reopen the array), so a refresh costs two
        small reads, which matters on S3."""
        self._index = dict(_read_attrs(self._zstore, "meta").get("index") or _empty_index())
        schema = dict(_read_attrs(self._zstore, "").get("schema") or {})
        if schema != self._schema:
            self._arrays.clear()
        self._schema = schema

    def _write_index(self, index: dict[str, Any]) -> None:
        """The commit point: one atomic write of meta/zarr.json, then the episode_ends mirror."""
        index = dict(index, generation=int(self._index.get("generation", 0)) + 1)
        zarr.open_group(self._zstore, path="meta", mode="r+", zarr_format=3).attrs.put({"index": index})
        self._index = index
        ends = np.asarray([e["end"] for e in index["episodes"]], dtype=np.int64)
        mirror = self.array("meta/episode_ends")
        mirror.resize((len(ends),))
        if len(ends):
            mirror[:] = ends

    def __len__(self) -> int:
        return len(self._index["episodes"])

    @property
    def data_end(self) -> int:
        """Rows of data/* covered by the index (committed episodes and deleted ones' dead rows)."""
        return int(self._index["data_end"])

    @property
    def image_codec(self) -> str:
        """'jpeg' or 'lossless', fixed at creation."""
        return str(self.config["image_codec"])

    @property
    def keys(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-step keys -> (per-step shape, dtype)."""
        return {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in self._schema.get("keys", {}).items()}

    @property
    def stamp_keys(self) -> list[str]:
        """Streams with stored capture stamps ("step" first)."""
        return list(self._schema.get("stamps", []))

    @property
    def streams(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """High-rate streams -> (per-sample shape, dtype)."""
        return {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in self._schema.get("streams", {}).items()}

    def episodes(
        self,
        success: bool | None = None,
        source: str | Sequence[str] | None = None,
        task: str | Sequence[str] | None = None,
    ) -> list[EpisodeInfo]:
        """Committed episodes, optionally filtered by success, source and task."""
        sources = {source} if isinstance(source, str) else (set(source) if source is not None else None)
        tasks = {task} if isinstance(task, str) else (set(task) if task is not None else None)
        out = []
        for i, e in enumerate(self._index["episodes"]):
            info = _info(i, e)
            if success is not None and info.success != bool(success):
                continue
            if sources is not None and info.meta.source not in sources:
                continue
            if tasks is not None and info.meta.task not in tasks:
                continue
            out.append(info)
        return out

    def episode(self, i: int) -> EpisodeInfo:
        """One committed episode by index."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range: store {self.uri} has {n} episodes")
        return _info(i % n, self._index["episodes"][i])

    # ---------------------------------------------------------------- reading
    def array(self, name: str) -> zarr.Array:
        """The zarr array at ``name`` (e.g. "data/joint_pos"), opened once and cached."""
        arr = self._arrays.get(name)
        if arr is None:
            arr = self.open_arrays([name])[name]
        return arr

    def open_arrays(self, names: Sequence[str], min_rows: Mapping[str, int] | None = None) -> dict[str, zarr.Array]:
        """Cached arrays for ``names``; those missing, or shorter than ``min_rows`` (a writer appended
        since), are (re)opened concurrently -- one round trip instead of one per array on S3."""
        min_rows = min_rows or {}
        stale = [n for n in dict.fromkeys(names)
                 if n not in self._arrays or self._arrays[n].shape[0] < min_rows.get(n, 0)]
        if stale:
            mode = "r" if self.read_only else "r+"

            async def open_all() -> list[Any]:
                return await asyncio.gather(*[
                    zarr.api.asynchronous.open_array(store=self._zstore, path=n, mode=mode, zarr_format=3)
                    for n in stale], return_exceptions=True)

            for name, opened in zip(stale, sync(open_all()), strict=True):
                if isinstance(opened, BaseException):
                    if isinstance(opened, FileNotFoundError):
                        raise StoreError(f"{self.uri}: array {name} is missing") from opened
                    raise opened
                arr = zarr.Array(opened)
                if not self.read_only:
                    # store every chunk, even all-zero ones, so validate can tell a lost chunk from zeros
                    arr = arr.with_config({"write_empty_chunks": True})
                self._arrays[name] = arr
        return {n: self._arrays[n] for n in names}

    def read_many(self, requests: Sequence[tuple[str, int, int]]) -> list[np.ndarray]:
        """Rows [start, end) of several arrays (by zarr path), fetched concurrently."""
        ends: dict[str, int] = {}
        for name, _a, b in requests:
            ends[name] = max(ends.get(name, 0), b)
        arrays = self.open_arrays(list(ends), min_rows=ends)

        async def read_all() -> list[Any]:
            return await asyncio.gather(*[arrays[n].async_array.getitem(slice(a, b)) for n, a, b in requests])

        return [np.asarray(x) for x in sync(read_all())]

    def read_rows(self, key: str, start: int, end: int) -> np.ndarray:
        """Rows [start, end) of data/<key> (or of stamps/<k> for key "stamp/<k>")."""
        return self.read_many([(_array_path(key), start, end)])[0]

    def read_episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of episode ``i`` plus "stamp/step" and "stamp/<key>" for each stamped key read."""
        info = self.episode(i)
        known = self.keys
        wanted = list(known) if keys is None else list(keys)
        stamps = set(self.stamp_keys)
        out_keys: list[str] = []
        for key in wanted:
            if key.startswith(STAMP_PREFIX):
                if key[len(STAMP_PREFIX):] not in stamps:
                    raise StoreError(f"episode {info.index}: no stamp stream {key!r} (have {sorted(stamps)})")
            elif key not in known:
                raise StoreError(f"episode {info.index}: no key {key!r} in store {self.uri} (keys: {sorted(known)})")
            out_keys.append(key)
            if key in stamps:
                out_keys.append(STAMP_PREFIX + key)
        out_keys = list(dict.fromkeys([*out_keys, STAMP_PREFIX + "step"]))
        arrays = self.read_many([(_array_path(k), info.start, info.end) for k in out_keys])
        return dict(zip(out_keys, arrays, strict=True))

    def read_stream(self, i: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """High-rate stream ``name`` of episode ``i``: (values (n, *shape), capture stamps (n,))."""
        info = self.episode(i)
        if name not in self.streams:
            raise StoreError(f"episode {info.index}: no stream {name!r} (streams: {sorted(self.streams)})")
        a, b = info.streams.get(name, (0, 0))
        values, stamps = self.read_many([(f"streams/{name}/values", a, b), (f"streams/{name}/stamps", a, b)])
        return values, stamps

    # ---------------------------------------------------------------- writing
    def begin_episode(self, meta: EpisodeMeta) -> EpisodeWriter:
        """Start one episode; it is invisible to readers until ``commit``."""
        from robot_learning.data.writer import EpisodeWriter

        if self.read_only:
            raise StoreError(f"{self.uri}: opened read-only (mode='r')")
        if self._writer is not None:
            raise StoreError(f"{self.uri}: an episode is already being written; commit or discard it first")
        meta.validate()
        self._acquire_lock()
        try:
            self.refresh()
            self._arrays.clear()  # the writer needs the current shapes, not cached ones
            self._trim_to(self.data_end)  # drop tails left by a crashed writer before appending
        except BaseException:
            self._release_lock()
            raise
        self._writer = EpisodeWriter(self, meta)
        return self._writer

    def add_episode(
        self,
        meta: EpisodeMeta,
        data: Mapping[str, np.ndarray],
        stamps: Mapping[str, np.ndarray],
        success: bool,
        streams: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        start_time: float | None = None,
        before_commit: Callable[[int], None] | None = None,
    ) -> int:
        """Write a whole episode of equal-length arrays at once (import/merge); returns its index.

        ``stamps`` maps stream name ("step", "camera_front", ...) to per-step capture times;
        ``before_commit(first_row)`` runs after the rows are written and before the index is.
        """
        lengths = {k: len(np.asarray(v)) if np.ndim(v) else -1 for k, v in {**data, **stamps}.items()}
        if not lengths:
            raise StoreError("add_episode: no data")
        first = next(iter(lengths))
        for k, n in lengths.items():
            if n != lengths[first]:
                raise StoreError(f"add_episode: key {k!r} has {n} steps but {first!r} has {lengths[first]}")
        w = self.begin_episode(meta)
        try:
            for t in range(lengths[first]):
                w.append({k: v[t] for k, v in data.items()}, {k: float(v[t]) for k, v in stamps.items()})
            for name, (values, st) in (streams or {}).items():
                w.append_stream(name, values, st)
            if start_time is not None:
                w.start_time = float(start_time)
            return w.commit(success=success, before_index=before_commit)
        except BaseException:
            if self._writer is w:
                w.discard()
            raise

    def delete_episode(self, i: int) -> None:
        """Remove episode ``i`` from the index (atomic). Its rows become dead space (``merge`` compacts);
        if it is the last episode by rows, the arrays are truncated."""
        if self.read_only:
            raise StoreError(f"{self.uri}: opened read-only (mode='r')")
        with self._locked():
            self.refresh()
            info = self.episode(i)
            index = copy.deepcopy(self._index)
            del index["episodes"][info.index]
            eps = index["episodes"]
            if info.end == index["data_end"]:
                index["data_end"] = max([e["end"] for e in eps], default=0)
                for name, (_a, b) in info.streams.items():
                    if b == index["stream_ends"].get(name):
                        index["stream_ends"][name] = max([e["streams"].get(name, [0, 0])[1] for e in eps], default=0)
            self._write_index(index)
            self._trim_to(self.data_end)

    def _trim_to(self, end: int) -> list[str]:
        """Resize data/, stamps/ and streams/ arrays to the committed ends; returns what was trimmed."""
        trimmed = []
        names = [f"data/{k}" for k in self.keys] + [f"stamps/{k}" for k in self.stamp_keys]
        ends = dict.fromkeys(names, end)
        for s in self.streams:
            n = int(self._index["stream_ends"].get(s, 0))
            ends[f"streams/{s}/values"] = n
            ends[f"streams/{s}/stamps"] = n
        for name, n in ends.items():
            try:
                arr = self.array(name)
            except StoreError:
                continue
            if arr.shape[0] > n:  # never grows: a too-short array is damage that validate reports
                trimmed.append(f"{name}: {arr.shape[0] - n} uncommitted rows")
                arr.resize((n, *arr.shape[1:]))
        return trimmed

    # ---------------------------------------------------------------- writer lock
    def _acquire_lock(self) -> None:
        """One writer at a time. Local stores: an flock, released by the kernel if the writer dies.
        Remote stores have no lock primitive; one writer per store is the caller's responsibility."""
        if _is_url(self.uri):
            return
        import fcntl

        f = open(_local_path(self.uri) / ".writer.lock", "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            raise StoreError(f"{self.uri}: another writer holds the store (.writer.lock)") from exc
        self._lock_file = f

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._writer is not None:
            raise StoreError(f"{self.uri}: an episode is being written; commit or discard it first")
        self._acquire_lock()
        self._arrays.clear()
        try:
            yield
        finally:
            self._release_lock()

    def _create_arrays(self, schema: dict[str, Any]) -> None:
        """Create data/ and stamps/ arrays for a new schema (only while no episode is committed)."""
        for group in ("data", "stamps"):
            zarr.create_group(self._zstore, path=group, overwrite=True)
        for key, spec in schema["keys"].items():
            shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
            if spec["kind"] == "image":
                kw = _image_codec_kwargs(self.config)
                chunks = (1, *shape)  # one frame per chunk: a window read touches only its frames
            else:
                kw = {"compressors": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")}
                chunks = (LOWDIM_CHUNK_ROWS, *shape)
            zarr.create_array(self._zstore, name=f"data/{key}", shape=(0, *shape), chunks=chunks,
                              dtype=dtype, fill_value=0, **kw)
        for key in schema["stamps"]:
            zarr.create_array(self._zstore, name=f"stamps/{key}", shape=(0,), chunks=(STAMP_CHUNK_ROWS,),
                              dtype=np.float64, fill_value=0.0, compressors=BloscCodec(cname="zstd", clevel=3))
        self._set_schema(dict(schema, streams={}))

    def _create_stream(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        zarr.create_array(self._zstore, name=f"streams/{name}/values", shape=(0, *shape),
                          chunks=(STAMP_CHUNK_ROWS, *shape), dtype=dtype, fill_value=0, overwrite=True,
                          compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
        zarr.create_array(self._zstore, name=f"streams/{name}/stamps", shape=(0,), chunks=(STAMP_CHUNK_ROWS,),
                          dtype=np.float64, fill_value=0.0, overwrite=True,
                          compressors=BloscCodec(cname="zstd", clevel=3))
        streams = dict(self._schema.get("streams", {}))
        streams[name] = {"shape": list(shape), "dtype": np.dtype(dtype).str}
        self._set_schema(dict(self._schema, streams=streams))

    def _set_schema(self, schema: dict[str, Any]) -> None:
        root = zarr.open_group(self._zstore, mode="r+", zarr_format=3)
        root.attrs.update({"schema": schema})
        self._schema = schema
        self._arrays.clear()

    def close(self) -> None:
        """Discard an open writer and release the writer lock."""
        if self._writer is not None:
            self._writer.discard()
        self._release_lock()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EpisodeStore({self.uri!r}, episodes={len(self)}, codec={self.image_codec})"


def _info(i: int, e: Mapping[str, Any]) -> EpisodeInfo:
    return EpisodeInfo(
        index=i, start=int(e["start"]), end=int(e["end"]), length=int(e["end"]) - int(e["start"]),
        meta=EpisodeMeta.from_dict(e["meta"]), success=bool(e["success"]),
        start_time=float(e["start_time"]), duration=float(e["duration"]), uid=str(e["uid"]),
        streams={k: (int(v[0]), int(v[1])) for k, v in e.get("streams", {}).items()},
    )


def _array_path(key: str) -> str:
    """Zarr path of a per-step key ("joint_pos") or of its stamps ("stamp/joint_pos")."""
    return f"stamps/{key[len(STAMP_PREFIX):]}" if key.startswith(STAMP_PREFIX) else f"data/{key}"


def _read_attrs(zstore: zarr.abc.store.Store, path: str) -> dict[str, Any]:
    """Attributes of the group at ``path``, read straight from its zarr.json: one GET on S3."""
    key = f"{path}/zarr.json" if path else "zarr.json"
    buf = sync(zstore.get(key, default_buffer_prototype()))
    if buf is None:
        raise StoreError(f"{key} is missing: not an episode store, or a damaged one")
    return dict(json.loads(buf.to_bytes()).get("attributes") or {})


def _image_codec_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    if config["image_codec"] == "jpeg":
        return {"serializer": JpegCodec(quality=int(config.get("jpeg_quality", 90))), "compressors": None}
    # Lossless: zstd level 1 inside blosc; byte shuffle does nothing for uint8, so it is off.
    return {"compressors": BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle", typesize=1)}


def _probe(zstore: zarr.abc.store.Store) -> str:
    """'store', 'empty' (nothing there), 'foreign-empty' (an empty zarr group) or 'foreign'."""
    try:
        root = zarr.open_group(zstore, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        async def _any_key() -> bool:
            async for _ in zstore.list():
                return True
            return False

        return "foreign" if sync(_any_key()) else "empty"
    except (ValueError, KeyError, TypeError):
        return "foreign"
    if "robot_learning_store" in root.attrs:
        return "store"
    return "foreign" if list(root.keys()) or root.attrs.asdict() else "foreign-empty"


def _create(zstore: zarr.abc.store.Store, image_codec: str, jpeg_quality: int) -> None:
    root = zarr.create_group(zstore, overwrite=True, attributes={
        "robot_learning_store": {"schema_version": SCHEMA_VERSION, "image_codec": image_codec,
                                 "jpeg_quality": int(jpeg_quality), "created": time.time(),
                                 "created_by": f"robot_learning {uuid.uuid4().hex[:8]}"},
        "schema": {},
    })
    root.create_group("meta", attributes={"index": _empty_index()})
    zarr.create_array(zstore, name="meta/episode_ends", shape=(0,), chunks=(65536,), dtype=np.int64,
                      fill_value=0)


from robot_learning.data.writer import EpisodeWriter  # noqa: E402  (re-export; writer imports this module)

__all__ = ["EpisodeStore", "EpisodeMeta", "EpisodeInfo", "EpisodeWriter", "StoreError", "SOURCES"]
