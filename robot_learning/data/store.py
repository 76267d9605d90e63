"""Crash-safe zarr v3 episode store, local or ``s3://`` (fsspec).

Layout (``schema_version`` 1)::

    zarr.json                 root attrs: robot_learning_store {schema_version, image_codec, ...}, schema
    data/<key>                per-step arrays concatenated over time (T, *shape); images one frame per chunk
    stamps/<key>              float64 real capture time of each stored stream; ``stamps/step`` = control tick
    streams/<name>/values     high-rate streams (e.g. 500 Hz joints), own time axis
    streams/<name>/stamps     their capture times
    meta/zarr.json            attrs "index": the episode table -- THE COMMIT POINT
    meta/episode_ends         int64 mirror of the committed episode ends (diffusion_policy style)

Crash safety: growing a zarr array rewrites its zarr.json separately from its chunks, array by array,
so array shapes (and an ``episode_ends`` array resized before or after the data) are never a safe
commit record. Here rows are written past the committed end (``index.data_end``) first, then the index
is written in one piece (zarr writes a metadata document with one atomic ``os.replace`` locally and one
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
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
import zarr.storage
from zarr.core.sync import sync

from robot_learning.data.layout import (  # noqa: F401  (constants re-exported for callers)
    CONTROL_SOURCES,
    FLUSH_BYTES,
    FLUSH_STEPS,
    IMAGE_CODECS,
    IMAGE_PREFIX,
    SCHEMA_VERSION,
    SOURCES,
    STAMP_PREFIX,
    STEP_SCHEMA,
    STEP_STAMPED,
    EpisodeInfo,
    EpisodeMeta,
    StoreError,
    array_path,
    create_step_arrays,
    create_store,
    create_stream_arrays,
    empty_index,
    episode_info,
    is_url,
    local_path,
    probe,
    read_attrs,
    schema_step,
)
from robot_learning.data.writer import EpisodeWriter


class EpisodeStore:
    """An episode store; open with ``EpisodeStore.open``."""

    def __init__(self, uri: str, zstore: zarr.abc.store.Store, read_only: bool, lock_file: Any = None) -> None:
        self.uri = uri
        self._zstore = zstore
        self.read_only = read_only
        self._arrays: dict[str, zarr.Array] = {}
        self._writer: EpisodeWriter | None = None
        self._lock_file: Any = lock_file  # the writer lock, held from open until close
        self.opened_cleanup: list[str] = []  # what opening for writing cleaned up after a killed writer
        attrs = read_attrs(zstore, "")
        self.config: dict[str, Any] = dict(attrs["robot_learning_store"])  # type: ignore[arg-type]
        if self.config.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{uri}: store schema version {self.config.get('schema_version')}; "
                             f"this code reads version {SCHEMA_VERSION}")
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
        allow_nonfinite: Sequence[str] | None = None,
    ) -> EpisodeStore:
        """Open ``uri`` (path or fsspec URL): mode "r" read-only, "a" create-or-append, "w" overwrite.

        A local store opened with "a" or "w" is this process's to write until ``close()``: a second
        writer (any process, or another handle here) is refused at open, between episodes too, and
        "w" never wipes a store someone else holds. ``image_codec`` ("jpeg" or "lossless") and
        ``allow_nonfinite`` (keys / stream names that may hold NaN/inf; every other float value must be
        finite) apply when the store is created and are recorded in it.
        """
        uri = str(uri)
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        if image_codec is not None and image_codec not in IMAGE_CODECS:
            raise ValueError(f"image_codec must be one of {IMAGE_CODECS}, got {image_codec!r}")
        allowed = _allowed_keys(allow_nonfinite)
        if is_url(uri):
            zstore = zarr.storage.FsspecStore.from_url(
                uri, storage_options=storage_options, read_only=(mode == "r"))
        else:
            path = local_path(uri)
            if mode == "r" and not path.exists():
                raise StoreError(f"{uri}: no such store (path does not exist)")
            if mode != "r" and path.exists() and not path.is_dir():
                raise StoreError(f"{uri}: is a file, not an episode store")
            zstore = zarr.storage.LocalStore(path, read_only=(mode == "r"))
        state = probe(zstore)
        if state == "foreign" and mode == "w":
            raise StoreError(f"{uri}: refusing to overwrite something that is not an episode store")
        if state == "foreign" or (state != "store" and mode == "r"):
            raise StoreError(f"{uri}: not an episode store (no robot_learning_store attributes in zarr.json)")
        lock = None if mode == "r" else _acquire_writer_lock(uri, overwrite=(mode == "w" and state == "store"))
        try:
            state = probe(zstore)  # again, under the lock: another writer may have created it meanwhile
            if mode == "w" or state in ("empty", "foreign-empty"):
                create_store(zstore, image_codec or "jpeg", jpeg_quality, allowed or ())
            store = cls(uri, zstore, read_only=(mode == "r"), lock_file=lock)
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        if allow_nonfinite is not None and allowed != store.allow_nonfinite:
            store.close()
            raise StoreError(f"{uri}: allow_nonfinite={sorted(allowed or ())} but the store was created with "
                             f"{sorted(store.allow_nonfinite)} (fixed at creation)")
        if lock is not None:
            store.opened_cleanup = store._clean_after_killed_writer()
        return store

    # ---------------------------------------------------------------- index
    def refresh(self) -> None:
        """Re-read the episode table: see episodes committed since open.

        Opened arrays are kept (reads past a cached shape reopen the array), so a refresh costs two
        small reads, which matters on S3."""
        self._index = dict(read_attrs(self._zstore, "meta").get("index") or empty_index())
        schema = dict(read_attrs(self._zstore, "").get("schema") or {})
        if schema != self._schema:
            self._arrays.clear()
        self._schema = schema

    def _write_index(self, index: dict[str, Any]) -> None:
        """The commit point: one atomic write of meta/zarr.json, then the episode_ends mirror."""
        index = dict(index, generation=int(self._index.get("generation", 0)) + 1)
        zarr.open_group(self._zstore, path="meta", mode="r+", zarr_format=3).attrs.put({"index": index})
        self._index = index
        try:  # the mirror is a convenience copy: failing it must not report a landed commit as failed
            ends = np.asarray([e["end"] for e in index["episodes"]], dtype=np.int64)
            mirror = self.array("meta/episode_ends")
            mirror.resize((len(ends),))
            if len(ends):
                mirror[:] = ends
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"{self.uri}: episode committed, but meta/episode_ends was not updated ({exc}); "
                          "`rlstack data repair` rewrites it", stacklevel=3)

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
    def allow_nonfinite(self) -> frozenset[str]:
        """Keys and stream names that may hold NaN/inf (fixed at creation; none by default)."""
        return frozenset(self.config.get("allow_nonfinite") or ())

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
            info = episode_info(i, e)
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
        return episode_info(i % n, self._index["episodes"][i])

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
            # every read runs to its end before the first failure is raised: a failure that left the
            # others pending made asyncio log "Task was destroyed but it is pending" for each of them
            return await asyncio.gather(*[arrays[n].async_array.getitem(slice(a, b)) for n, a, b in requests],
                                        return_exceptions=True)

        out = sync(read_all())
        for (name, a, b), x in zip(requests, out, strict=True):
            if isinstance(x, BaseException):
                raise StoreError(f"{self.uri}: {name} rows [{a}, {b}) unreadable: {type(x).__name__}: {x}") from x
        return [np.asarray(x) for x in out]

    def read_rows(self, key: str, start: int, end: int) -> np.ndarray:
        """Rows [start, end) of data/<key> (or of stamps/<k> for key "stamp/<k>")."""
        return self.read_many([(array_path(key), start, end)])[0]

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
        arrays = self.read_many([(array_path(k), info.start, info.end) for k in out_keys])
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
        if self.read_only:
            raise StoreError(f"{self.uri}: opened read-only (mode='r')")
        if self._writer is not None:
            raise StoreError(f"{self.uri}: an episode is already being written; commit or discard it first")
        self._check_writable()
        meta.validate()
        self.refresh()
        self._arrays.clear()  # the writer needs the current shapes, not cached ones
        self._trim_to(self.data_end)  # drop tails a discard or a crash left before appending
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
    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.uri}: opened read-only (mode='r')")
        if self._lock_file is None and not is_url(self.uri):
            raise StoreError(f"{self.uri}: this handle no longer holds the writer lock (closed); open the store again")

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Maintenance between episodes (the writer lock is held since open)."""
        if self._writer is not None:
            raise StoreError(f"{self.uri}: an episode is being written; commit or discard it first")
        self._check_writable()
        self._arrays.clear()
        yield

    def _clean_after_killed_writer(self) -> list[str]:
        """Under a fresh writer lock: trim uncommitted tails and remove zarr's ``*.partial`` temp files,
        which only a killed writer leaves (no other writer can be running now)."""
        done = [f"trimmed {t}" for t in self._trim_to(self.data_end)]
        for p in partial_files(self.uri):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                done.append(f"removed {p}")
        return done

    def _create_arrays(self, schema: dict[str, Any]) -> None:
        """Create data/ and stamps/ arrays for a new schema (only while no episode is committed)."""
        create_step_arrays(self._zstore, self.config, schema)
        self._set_schema(dict(schema, streams={}))

    def _create_stream(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        create_stream_arrays(self._zstore, name, shape, dtype)
        streams = dict(self._schema.get("streams", {}))
        streams[name] = {"shape": list(shape), "dtype": np.dtype(dtype).str}
        self._set_schema(dict(self._schema, streams=streams))

    def _drop_streams(self, names: Sequence[str]) -> None:
        """Forget streams nothing committed uses (a discarded episode's new ones)."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                sync(self._zstore.delete_dir(f"streams/{name}"))
        streams = {k: v for k, v in self._schema.get("streams", {}).items() if k not in names}
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



def _allowed_keys(keys: Sequence[str] | None) -> frozenset[str] | None:
    if keys is None:
        return None
    if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(f"allow_nonfinite must be a sequence of key names, got {keys!r}")
    return frozenset(keys)


def _acquire_writer_lock(uri: str, overwrite: bool) -> Any:
    """The writer lock of a local store: an flock on ``.writer.lock`` (the kernel drops it if the
    writer dies), recording the holder's pid for the refusal message. Remote stores have no lock
    primitive: one writer per store is the caller's responsibility there."""
    if is_url(uri):
        return None
    import fcntl

    path = local_path(uri)
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / ".writer.lock", "a+")  # noqa: SIM115 (held until close)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        holder += " (this process: close the other handle first)" if holder == str(os.getpid()) else ""
        what = "not overwriting it" if overwrite else "one writer per store; open it with mode='r' to read"
        raise StoreError(f"{uri}: another writer holds the store (.writer.lock, pid {holder}); {what}") from exc
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def partial_files(uri: str) -> list[Path]:
    """Temp files a killed local writer can leave (zarr writes ``<name>.<uuid>.partial``, then renames)."""
    if is_url(uri):
        return []
    return sorted(local_path(uri).rglob("*.partial"))


__all__ = ["EpisodeStore", "EpisodeMeta", "EpisodeInfo", "EpisodeWriter", "StoreError", "SOURCES", "STEP_SCHEMA",
           "CONTROL_SOURCES", "schema_step"]
