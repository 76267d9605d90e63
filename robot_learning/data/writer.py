"""EpisodeWriter: validates and buffers one episode's steps, writes them past the committed end,
and commits by writing the episode index once (see ``store.py`` for the crash-safety argument)."""

from __future__ import annotations

import asyncio
import copy
import math
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.core.sync import sync

from robot_learning.data.layout import (
    FLUSH_BYTES,
    FLUSH_STEPS,
    IMAGE_PREFIX,
    STEP_STAMPED,
    EpisodeMeta,
    StoreError,
)

if TYPE_CHECKING:
    from robot_learning.data.store import EpisodeStore


def _infer_spec(key: str, value: Any) -> dict[str, Any]:
    """Schema entry for ``key`` from its first value; Python floats become float32."""
    if isinstance(value, bool):
        arr = np.asarray(value, dtype=bool)
    elif isinstance(value, float):
        arr = np.asarray(value, dtype=np.float32)
    else:
        arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise StoreError(f"step 0: key {key!r} has unsupported dtype {arr.dtype} (need bool/int/float arrays)")
    if key.startswith(IMAGE_PREFIX):
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise StoreError(f"step 0: image key {key!r} must be uint8 HxWx3, got {arr.dtype} {arr.shape}")
        return {"shape": list(arr.shape), "dtype": "|u1", "kind": "image"}
    return {"shape": list(arr.shape), "dtype": arr.dtype.str, "kind": "lowdim"}


class EpisodeWriter:
    """Appends control steps of one episode; ``commit`` makes it visible, ``discard`` drops it."""

    flush_steps = FLUSH_STEPS  # buffered steps are written out past the committed end this often

    def __init__(self, store: EpisodeStore, meta: EpisodeMeta) -> None:
        self._store = store
        self.meta = meta
        self._start_row = store.data_end
        self._n = 0
        self._flushed = 0
        self._blocks: dict[str, np.ndarray] = {}  # preallocated rows: one copy per value, no np.stack
        self._capacity = 0
        self._stamp_bufs: dict[str, list[float]] = {}
        self._stream_bufs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._stream_written: dict[str, int] = {}
        self._buffered_bytes = 0
        self._first_stamp = math.nan
        self._last_stamp = -math.inf
        self.start_time = time.time()  # wall clock at the first step; merge/import may set it
        self._keys: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._stamped: list[str] = []
        self._open = True

    def __len__(self) -> int:
        return self._n

    # ---------------------------------------------------------------- append
    def append(self, data: Mapping[str, Any], stamps: Mapping[str, float]) -> None:
        """Add one control step; bad input raises StoreError naming the key and step, storing nothing."""
        self._check_open()
        step = self._n
        if step == 0:
            self._establish_schema(data, stamps)
            self._keys, self._stamped = self._store.keys, self._store.stamp_keys
        keys = self._keys
        missing = sorted(set(keys) - set(data))
        extra = sorted(set(data) - set(keys))
        if missing or extra:
            raise StoreError(f"step {step}: missing key(s) {missing} / unexpected key(s) {extra} "
                             f"(the store's keys are {sorted(keys)})")
        values = {}
        for key, (shape, dtype) in keys.items():
            values[key] = self._convert(key, data[key], shape, dtype, step)
        stamp_values = self._check_stamps(stamps, step)
        # everything is valid: only now touch the buffers
        if not self._blocks:
            step_bytes = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in keys.values())
            self._capacity = max(1, min(self.flush_steps, FLUSH_BYTES // max(step_bytes, 1)))
            self._blocks = {k: np.empty((self._capacity, *shape), dtype) for k, (shape, dtype) in keys.items()}
        slot = self._n - self._flushed
        for key, v in values.items():
            self._blocks[key][slot] = v  # the copy callers need (they may reuse their buffers)
        for key, t in stamp_values.items():
            self._stamp_bufs.setdefault(key, []).append(t)
        if step == 0:
            self._first_stamp = stamp_values["step"]
            self.start_time = time.time()
        self._last_stamp = stamp_values["step"]
        self._n += 1
        if self._n - self._flushed >= self._capacity or self._buffered_bytes >= FLUSH_BYTES:
            self._flush()

    def append_stream(self, name: str, values: Any, stamps: Any) -> None:
        """Add samples of a high-rate stream (e.g. 500 Hz joints): values (n, *shape), stamps (n,)."""
        self._check_open()
        v = np.asarray(values)
        t = np.asarray(stamps, dtype=np.float64).reshape(-1)
        if v.ndim == 0 or v.shape[0] != t.shape[0]:
            raise StoreError(f"stream {name!r}: {t.shape[0]} stamps for values of shape {v.shape} "
                             f"(need values (n, ...) with one stamp per sample)")
        if not np.all(np.isfinite(t)):
            raise StoreError(f"stream {name!r}: non-finite stamps")
        if v.dtype.kind not in "biuf":
            raise StoreError(f"stream {name!r}: unsupported dtype {v.dtype}")
        spec = self._store.streams.get(name)
        if spec is None:
            self._store._create_stream(name, v.shape[1:], v.dtype)
            spec = self._store.streams[name]
        shape, dtype = spec
        if v.shape[1:] != shape or not np.can_cast(v.dtype, dtype, "same_kind"):
            raise StoreError(f"stream {name!r}: samples {v.dtype} {v.shape[1:]} do not match the store's "
                             f"{dtype} {shape}")
        vals, sts = self._stream_bufs.setdefault(name, ([], []))
        vals.append(np.array(v, dtype=dtype))
        sts.append(t.copy())
        self._buffered_bytes += v.nbytes

    # ---------------------------------------------------------------- commit / discard
    def commit(self, success: bool = False, before_index: Callable[[int], None] | None = None) -> int:
        """Write what is buffered, then the episode index (the atomic commit point); returns the index."""
        self._check_open()
        if self._n == 0:
            raise StoreError("commit: the episode has no steps (discard it instead)")
        self._flush()
        if before_index is not None:
            before_index(self._start_row)
        store = self._store
        index = copy.deepcopy(store._index)
        streams = {}
        for name in self._stream_written:
            a = int(index["stream_ends"].get(name, 0))
            streams[name] = [a, a + self._stream_written[name]]
            index["stream_ends"][name] = a + self._stream_written[name]
        index["episodes"].append({
            "start": self._start_row, "end": self._start_row + self._n, "success": bool(success),
            "meta": self.meta.to_dict(), "start_time": self.start_time,
            "duration": float(self._last_stamp - self._first_stamp), "uid": uuid.uuid4().hex,
            "streams": streams,
        })
        index["data_end"] = self._start_row + self._n
        store._write_index(index)
        self._close()
        return len(index["episodes"]) - 1

    def discard(self) -> None:
        """Drop the episode; rows already written past the committed end are trimmed."""
        if not self._open:
            return
        try:
            self._store._trim_to(self._store.data_end)
        finally:
            self._close()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._open:
            self.discard()

    # ---------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("this episode writer is closed (committed or discarded)")

    def _close(self) -> None:
        self._open = False
        self._blocks.clear()
        self._stream_bufs.clear()
        self._store._writer = None
        self._store._release_lock()

    def _establish_schema(self, data: Mapping[str, Any], stamps: Mapping[str, float]) -> None:
        """The store's first episode fixes keys/shapes/dtypes; later ones must match them.

        Until a row is committed the arrays are (re)created at every first step, so a first episode
        that was discarded, or a writer killed while creating the arrays, leaves nothing to trip over."""
        store = self._store
        if store.keys and store.data_end > 0:
            return
        keys = {k: _infer_spec(k, v) for k, v in data.items()}
        stamped = ["step"] + [k for k in keys if k not in STEP_STAMPED]
        stamped += [k for k in STEP_STAMPED if k in keys and k in stamps]
        store._create_arrays({"keys": keys, "stamps": stamped})

    def _convert(self, key: str, value: Any, shape: tuple[int, ...], dtype: np.dtype, step: int) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise StoreError(f"step {step}: key {key!r} has dtype {arr.dtype}; the store holds {dtype}")
        if key.startswith(IMAGE_PREFIX) and arr.dtype != np.uint8:
            raise StoreError(f"step {step}: image key {key!r} has dtype {arr.dtype}; images must be uint8")
        if arr.dtype != dtype and not np.can_cast(arr.dtype, dtype, "same_kind"):
            raise StoreError(f"step {step}: key {key!r} has dtype {arr.dtype}; the store holds {dtype}")
        if arr.shape != shape:
            raise StoreError(f"step {step}: key {key!r} has shape {arr.shape}; the store holds {shape}")
        return arr

    def _check_stamps(self, stamps: Mapping[str, float], step: int) -> dict[str, float]:
        stamped = self._stamped
        unknown = sorted(set(stamps) - set(self._keys) - {"step"})
        if unknown:
            raise StoreError(f"step {step}: stamps for unknown stream(s) {unknown}")
        if "step" not in stamps:
            raise StoreError(f"step {step}: stamps['step'] (the control tick time) is required")
        out = {}
        for key in stamped:
            if key in stamps:
                t = stamps[key]
            elif key in STEP_STAMPED:
                t = stamps["step"]
            else:
                raise StoreError(f"step {step}: missing capture stamp for stream {key!r}")
            try:
                t = float(t)
            except (TypeError, ValueError) as exc:
                raise StoreError(f"step {step}: stamp for {key!r} is not a number: {t!r}") from exc
            if not math.isfinite(t):
                raise StoreError(f"step {step}: stamp for {key!r} is not finite: {t}")
            out[key] = t
        if out["step"] < self._last_stamp:
            raise StoreError(f"step {step}: stamps['step'] went backwards ({out['step']} < {self._last_stamp})")
        return out

    def _flush(self) -> None:
        """Write buffered rows past the committed end (invisible until commit), all arrays concurrently."""
        store = self._store
        a, b = self._start_row + self._flushed, self._start_row + self._n
        jobs: list[tuple[str, int, np.ndarray]] = []
        if b > a:
            jobs += [(f"data/{key}", a, block[:b - a]) for key, block in self._blocks.items()]
            jobs += [(f"stamps/{key}", a, np.asarray(ts, dtype=np.float64)) for key, ts in self._stamp_bufs.items()]
        written = {}
        for name, (vals, sts) in self._stream_bufs.items():
            if vals:
                start = int(store._index["stream_ends"].get(name, 0)) + self._stream_written.get(name, 0)
                block, ts = np.concatenate(vals), np.concatenate(sts)
                jobs += [(f"streams/{name}/values", start, block), (f"streams/{name}/stamps", start, ts)]
                written[name] = len(block)
        if jobs:
            arrays = store.open_arrays([name for name, _, _ in jobs])
            sync(_gather([_write_rows(arrays[name].async_array, first, block) for name, first, block in jobs]))
        self._stamp_bufs = {k: [] for k in self._stamp_bufs}
        for name, n in written.items():
            self._stream_written[name] = self._stream_written.get(name, 0) + n
            self._stream_bufs[name][0].clear()
            self._stream_bufs[name][1].clear()
        self._flushed = self._n
        self._buffered_bytes = 0


async def _gather(coros: list[Any]) -> list[Any]:
    return await asyncio.gather(*coros)


async def _write_rows(arr: Any, first: int, block: np.ndarray) -> None:
    end = first + len(block)
    if arr.shape[0] < end:
        await arr.resize((end, *arr.shape[1:]))
    await arr.setitem(slice(first, end), block)
