"""The policy server's wire format: msgpack with numpy arrays as (dtype, shape, bytes) maps.

No pickle: an array travels as ``{"__ndarray__": True, "dtype": "<f4", "shape": [...], "data": b"..."}``
and only plain numeric / boolean dtypes are accepted on decode, so a peer can never make the
receiver construct arbitrary objects.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
ARRAY_TAG = "__ndarray__"
# bool, signed/unsigned int, float, complex: nothing that could carry Python objects.
_ALLOWED_KINDS = frozenset("biufc")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class WireError(ValueError):
    """A message that cannot be decoded; the text says what is wrong and where."""


def _encode_default(obj: Any) -> Any:
    """msgpack hook: numpy arrays and scalars to plain data."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise TypeError(f"cannot send array of dtype {obj.dtype} (only numeric/bool arrays)")
        arr = np.ascontiguousarray(obj)
        return {ARRAY_TAG: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode object of type {type(obj).__name__}")


def _decode_array(d: dict[str, Any], where: str) -> np.ndarray:
    """Rebuild one array map, validating dtype, shape and byte count."""
    try:
        dtype = np.dtype(d["dtype"])
        shape = tuple(int(s) for s in d["shape"])
        data = d["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"{where}: malformed array map ({exc})") from exc
    if dtype.kind not in _ALLOWED_KINDS:
        raise WireError(f"{where}: dtype {dtype} not allowed on the wire")
    if not isinstance(data, bytes | bytearray) or any(s < 0 for s in shape):
        raise WireError(f"{where}: array data must be bytes and shape non-negative")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise WireError(f"{where}: {len(data)} bytes for shape {shape} dtype {dtype} (expected {expected})")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _restore(obj: Any, where: str) -> Any:
    """Walk decoded msgpack data, turning tagged maps back into arrays."""
    if isinstance(obj, dict):
        if obj.get(ARRAY_TAG) is True:
            return _decode_array(obj, where)
        return {k: _restore(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def pack(message: dict[str, Any]) -> bytes:
    """Encode one message (a dict of plain data and numpy arrays) to bytes."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def unpack(payload: bytes | str) -> dict[str, Any]:
    """Decode one message; raise WireError with the reason for anything malformed."""
    if isinstance(payload, str):
        raise WireError("expected a binary msgpack frame, got a text frame")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(payload)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for corrupt input
        raise WireError(f"not a msgpack message: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise WireError("message must be a map with a string 'type' field")
    return _restore(raw, raw["type"])
