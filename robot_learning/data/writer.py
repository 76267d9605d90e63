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
    CONTROL_SOURCES,
    FLUSH_BYTES,
    FLUSH_STEPS,
    IMAGE_PREFIX,
    STEP_SCHEMA,
    STEP_STAMPED,
    EpisodeMeta,
    StoreError,
)

if TYPE_CHECKING:
    from robot_learning.data.store import EpisodeStore


def _infer_spec(key: str, value: Any, where: str) -> dict[str, Any]:
    """Schema entry for ``key`` from its first value; Python floats become float32, STEP_SCHEMA keys
    get the schema's dtype and one value per step whatever the first value is."""
    if key in STEP_SCHEMA:
        shape = np.shape(value)
        if shape != ():
            raise StoreError(f"{where}: key {key!r} is a step-schema key: one {np.dtype(STEP_SCHEMA[key])} value "
                             f"per step, got shape {shape}")
        return {"shape": [], "dtype": np.dtype(STEP_SCHEMA[key]).str, "kind": "lowdim"}
    if isinstance(value, bool):
        arr = np.asarray(value, dtype=bool)
    elif isinstance(value, float):
        arr = np.asarray(value, dtype=np.float32)
    else:
        arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise StoreError(f"{where}: key {key!r} has unsupported dtype {arr.dtype} (need bool/int/float arrays)")
    if key.startswith(IMAGE_PREFIX):
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
            raise StoreError(f"{where}: image key {key!r} must be uint8 HxWx3, got {arr.dtype} {arr.shape}")
        return {"shape": list(arr.shape), "dtype": "|u1", "kind": "image"}
    return {"shape": list(arr.shape), "dtype": arr.dtype.str, "kind": "lowdim"}


def exact_cast(value: Any, dtype: np.dtype) -> tuple[np.ndarray | None, str]:
    """``value`` as ``dtype`` when no information is lost, else (None, why).

    The allowed casts, written out because numpy's own rules allow lossy ones (``same_kind`` turns
    int64 2**40+5 into int32 5, float64 1e40 into float32 inf; ``safe`` lets int64 2**53+1 into float64):

    - typed values (numpy arrays and scalars): ``np.can_cast(src, dst, "safe")``, and for int -> float
      every value must round-trip (float64 holds integers exactly only up to 2**53);
    - untyped values (Python bool/int/float and lists of them, which carry no width): ints must be in
      the target's range (int targets) or round-trip (float targets); floats go to float targets only,
      rounded to the target's precision, but never overflowing to inf or underflowing to 0 / a
      subnormal (relative error above the target's epsilon); bools go to bool/int/float.
    """
    typed = isinstance(value, (np.ndarray, np.generic))
    arr = np.asarray(value)
    src, kind = arr.dtype, dtype.kind
    if src.kind not in "biuf":
        return None, f"has dtype {src}"
    if src == dtype:
        return arr, ""
    if typed and not np.can_cast(src, dtype, "safe"):
        return None, f"has dtype {src}, which {dtype} cannot hold without loss"
    if not typed and src.kind in "iu" and kind in "iu":
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            bad = arr.min() if arr.min() < info.min else arr.max()
            return None, f"value {int(bad)} is out of the range of {dtype} [{info.min}, {info.max}]"
    elif not typed and src.kind == "f" and kind != "f":
        return None, f"is a float; the store holds {dtype}"
    elif not typed and src.kind in "iu" and kind == "b":
        return None, f"is an int; the store holds {dtype}"
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is what the checks below detect
        out = arr.astype(dtype)
    if src.kind in "iu" and kind == "f":
        finite = np.isfinite(out)
        with np.errstate(over="ignore", invalid="ignore"):  # a float past src's range compares unequal below
            back = np.where(finite, out, 0).astype(src)
        if not finite.all() or not np.array_equal(back, arr):
            i = int(np.flatnonzero((~finite) | (back != arr))[0])
            return None, f"integer {arr.reshape(-1)[i]} is not exactly representable in {dtype}"
    elif not typed and src.kind == "f" and kind == "f":
        x = arr.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(out.astype(np.float64) - x)
            bad = np.isfinite(x) & ((~np.isfinite(out)) | (err > np.finfo(dtype).eps * np.abs(x)))
        if bad.any():
            v = float(x.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])])
            with np.errstate(over="ignore", under="ignore"):
                became = float(dtype.type(v))
            return None, f"value {v!r} does not fit {dtype} (it would become {became!r})"
    return out, ""


class EpisodeWriter:
    """Appends control steps of one episode; ``commit`` makes it visible, ``discard`` drops it."""

    flush_steps = FLUSH_STEPS  # buffered steps are written out past the committed end this often

    def __init__(self, store: EpisodeStore, meta: EpisodeMeta) -> None:
        self._store = store
        self.meta = meta
        self.index = len(store)  # the episode's index once committed (named in every error)
        self._start_row = store.data_end
        self._n = 0
        self._flushed = 0
        self._blocks: dict[str, np.ndarray] = {}  # preallocated rows: one copy per value, no np.stack
        self._capacity = 0
        self._stamp_bufs: dict[str, list[float]] = {}
        self._stream_bufs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._stream_written: dict[str, int] = {}
        self._stream_last: dict[str, float] = {}  # newest stamp of each high-rate stream in this episode
        self._created_streams: list[str] = []  # streams this episode created (removed again on discard)
        self._buffered_bytes = 0
        self._first_stamp = math.nan
        self._last: dict[str, float] = {}  # newest stamp of each per-step stream in this episode
        self._done_at: int | None = None
        self.start_time = time.time()  # wall clock at the first step; merge/import may set it
        self._keys: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._stamped: list[str] = []
        self._allowed = store.allow_nonfinite
        self._open = True

    def __len__(self) -> int:
        return self._n

    def _where(self, step: int) -> str:
        return f"episode {self.index}, step {step}"

    # ---------------------------------------------------------------- append
    def append(self, data: Mapping[str, Any], stamps: Mapping[str, float]) -> None:
        """Add one control step; bad input raises StoreError naming the key, episode and step, storing nothing."""
        self._check_open()
        step = self._n
        where = self._where(step)
        if step == 0:
            self._establish_schema(data, stamps)
            self._keys, self._stamped = self._store.keys, self._store.stamp_keys
        keys = self._keys
        missing = sorted(set(keys) - set(data))
        extra = sorted(set(data) - set(keys))
        if missing or extra:
            raise StoreError(f"{where}: missing key(s) {missing} / unexpected key(s) {extra} "
                             f"(the store's keys are {sorted(keys)})")
        if self._done_at is not None:
            raise StoreError(f"{where}: the episode already ended (done=True at step {self._done_at}); "
                             "'done' may be true on the last step only")
        values = {}
        for key, (shape, dtype) in keys.items():
            values[key] = self._convert(key, data[key], shape, dtype, where)
        self._check_step_schema(values, where)
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
        self._last.update(stamp_values)
        if "done" in values and bool(values["done"]):
            self._done_at = step
        self._n += 1
        if self._n - self._flushed >= self._capacity or self._buffered_bytes >= FLUSH_BYTES:
            self._flush()

    def append_stream(self, name: str, values: Any, stamps: Any) -> None:
        """Add samples of a high-rate stream (e.g. 500 Hz joints): values (n, *shape), stamps (n,) in order."""
        self._check_open()
        where = f"episode {self.index}, stream {name!r}"
        v = np.asarray(values)
        t = np.asarray(stamps, dtype=np.float64).reshape(-1)
        if v.ndim == 0 or v.shape[0] != t.shape[0]:
            raise StoreError(f"{where}: {t.shape[0]} stamps for values of shape {v.shape} "
                             f"(need values (n, ...) with one stamp per sample)")
        if not np.all(np.isfinite(t)):
            raise StoreError(f"{where}: non-finite stamp at sample {int(np.flatnonzero(~np.isfinite(t))[0])}")
        back = np.flatnonzero(np.diff(np.concatenate([[self._stream_last.get(name, -math.inf)], t])) < 0)
        if len(back):
            i = int(back[0])
            prev = float(t[i - 1] if i else self._stream_last[name])
            raise StoreError(f"{where}: stamps go backwards at sample {i} ({float(t[i])!r} < {prev!r})")
        if v.dtype.kind not in "biuf":
            raise StoreError(f"{where}: unsupported dtype {v.dtype}")
        store = self._store
        spec = store.streams.get(name)
        committed = int(store._index["stream_ends"].get(name, 0))
        if spec is None or (not committed and name not in self._created_streams and spec != (v.shape[1:], v.dtype)):
            # no committed sample fixes this stream yet (a discarded episode or a killed writer may have
            # created it): its shape and dtype are this episode's
            store._create_stream(name, v.shape[1:], v.dtype)
            self._created_streams.append(name)
            spec = store.streams[name]
        shape, dtype = spec
        if v.shape[1:] != shape:
            raise StoreError(f"{where}: samples {v.dtype} {v.shape[1:]} do not match the store's {dtype} {shape}")
        out, why = exact_cast(v, dtype)
        if out is None:
            raise StoreError(f"{where}: samples {why} (the store holds {dtype} {shape})")
        if out.dtype.kind == "f" and name not in self._allowed and not np.isfinite(out).all():
            i = int(np.flatnonzero(~np.isfinite(out).reshape(len(out), -1).all(axis=1))[0])
            raise StoreError(f"{where}: sample {i} holds NaN/inf; {_NONFINITE_HINT.format(key=name)}")
        vals, sts = self._stream_bufs.setdefault(name, ([], []))
        vals.append(np.array(out, dtype=dtype))
        sts.append(t.copy())
        if len(t):
            self._stream_last[name] = float(t[-1])
        self._buffered_bytes += v.nbytes

    # ---------------------------------------------------------------- commit / discard
    def commit(self, success: bool = False, before_index: Callable[[int], None] | None = None) -> int:
        """Write what is buffered, then the episode index (the atomic commit point); returns the index."""
        self._check_open()
        if self._n == 0:
            raise StoreError(f"episode {self.index}: commit: the episode has no steps (discard it instead)")
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
            "duration": float(self._last["step"] - self._first_stamp), "uid": uuid.uuid4().hex,
            "streams": streams,
        })
        index["data_end"] = self._start_row + self._n
        store._write_index(index)
        self._close()
        return len(index["episodes"]) - 1

    def discard(self) -> None:
        """Drop the episode; rows already written past the committed end are trimmed, and streams it
        created (nothing committed in them) are removed, so they fix no shape for later episodes."""
        if not self._open:
            return
        try:
            self._store._trim_to(self._store.data_end)
            uncommitted = [n for n in self._created_streams if not self._store._index["stream_ends"].get(n)]
            if uncommitted:
                self._store._drop_streams(uncommitted)
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

    def _establish_schema(self, data: Mapping[str, Any], stamps: Mapping[str, float]) -> None:
        """The store's first episode fixes keys/shapes/dtypes; later ones must match them.

        Until a row is committed the arrays are (re)created at every first step, so a first episode
        that was discarded, or a writer killed while creating the arrays, leaves nothing to trip over."""
        store = self._store
        if store.keys and store.data_end > 0:
            return
        keys = {k: _infer_spec(k, v, self._where(0)) for k, v in data.items()}
        stamped = ["step"] + [k for k in keys if k not in STEP_STAMPED]
        stamped += [k for k in STEP_STAMPED if k in keys and k in stamps]
        store._create_arrays({"keys": keys, "stamps": stamped})

    def _convert(self, key: str, value: Any, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
        if key.startswith(IMAGE_PREFIX) and np.asarray(value).dtype != np.uint8:
            raise StoreError(f"{where}: image key {key!r} has dtype {np.asarray(value).dtype}; images must be uint8")
        arr, why = exact_cast(value, dtype)
        if arr is None:
            raise StoreError(f"{where}: key {key!r} {why}; the store holds {dtype}")
        if arr.shape != shape:
            raise StoreError(f"{where}: key {key!r} has shape {arr.shape}; the store holds {shape}")
        if dtype.kind == "f" and key not in self._allowed and not np.isfinite(arr).all():
            at = "" if arr.ndim == 0 else f" at index {tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])}"
            raise StoreError(f"{where}: key {key!r} holds NaN/inf{at}; {_NONFINITE_HINT.format(key=key)}")
        return arr

    def _check_step_schema(self, values: Mapping[str, np.ndarray], where: str) -> None:
        """control_source must be a valid code, terminal only where done (``done``'s place is checked in append)."""
        code = values.get("control_source")
        if code is not None and code.shape == () and int(code) >= len(CONTROL_SOURCES):
            raise StoreError(f"{where}: control_source {int(code)} is not a valid code "
                             f"(0..{len(CONTROL_SOURCES) - 1}: {', '.join(CONTROL_SOURCES)})")
        terminal, done = values.get("terminal"), values.get("done")
        if terminal is not None and done is not None and terminal.shape == done.shape == ():
            if bool(terminal) and not bool(done):
                raise StoreError(f"{where}: terminal=True but done=False (a terminal state ends the episode)")

    def _check_stamps(self, stamps: Mapping[str, float], step: int) -> dict[str, float]:
        where = self._where(step)
        unknown = sorted(set(stamps) - set(self._keys) - {"step"})
        if unknown:
            raise StoreError(f"{where}: stamps for unknown stream(s) {unknown}")
        if "step" not in stamps:
            raise StoreError(f"{where}: stamps['step'] (the control tick time) is required")
        out = {}
        for key in self._stamped:
            if key in stamps:
                t = stamps[key]
            elif key in STEP_STAMPED:
                t = stamps["step"]
            else:
                raise StoreError(f"{where}: missing capture stamp for stream {key!r}")
            try:
                t = float(t)
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{where}: stamp for {key!r} is not a number: {t!r}") from exc
            if not math.isfinite(t):
                raise StoreError(f"{where}: stamp for {key!r} is not finite: {t}")
            prev = self._last.get(key, -math.inf)
            if t < prev:  # equal is fine: the same frame can be the nearest one for two steps
                name = "stamps['step']" if key == "step" else f"the capture stamp of {key!r}"
                raise StoreError(f"{where}: {name} went backwards ({t!r} < {prev!r} at the previous step)")
            out[key] = t
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


_NONFINITE_HINT = ("the store refuses non-finite values (create it with "
                   "EpisodeStore.open(..., allow_nonfinite=({key!r},)) if this stream legitimately holds NaN)")


async def _gather(coros: list[Any]) -> list[Any]:
    """Run every coroutine to its end, then raise the first failure: a failure must not leave the
    others pending (asyncio then logs "Task was destroyed but it is pending" for each of them)."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


async def _write_rows(arr: Any, first: int, block: np.ndarray) -> None:
    end = first + len(block)
    if arr.shape[0] < end:
        await arr.resize((end, *arr.shape[1:]))
    await arr.setitem(slice(first, end), block)
