"""Image codecs for the episode store: a JPEG array->bytes codec registered with zarr 3.

zarr 3 has no image codec and numcodecs ships none either, so this is a small ``ArrayBytesCodec``
(the public zarr 3 codec interface) around OpenCV's JPEG encoder. It is registered under the name
``robot_learning.jpeg`` when this module is imported; the store imports it, so any process that
opens a store through ``robot_learning.data.store`` can decode it.

A chunk holds whole frames (``(k, H, W, 3)`` uint8, RGB). Frames are stacked vertically into one
``(k*H, W, 3)`` picture, so a chunk is one JPEG file whatever ``k`` is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

JPEG_CODEC_NAME = "robot_learning.jpeg"


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Lossy JPEG for uint8 RGB frames; ``quality`` in 1..100."""

    is_fixed_size = False
    quality: int = 90

    def __init__(self, *, quality: int = 90) -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        """Build from the codec entry of an array's zarr.json."""
        _, config = parse_named_configuration(data, JPEG_CODEC_NAME, require_configuration=False)
        return cls(**(config or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        """The codec entry written to an array's zarr.json."""
        return {"name": JPEG_CODEC_NAME, "configuration": {"quality": self.quality}}

    def validate(self, *, shape: tuple[int, ...], dtype: object, chunk_grid: object) -> None:
        """Only uint8 (..., H, W, 3) arrays can be stored as JPEG."""
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"JPEG codec needs (T, H, W, 3) arrays, got shape {shape}")

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        # OpenCV releases the GIL: chunks of one write are encoded in parallel on a multi-core machine
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        frames = np.ascontiguousarray(chunk_array.as_numpy_array(), dtype=np.uint8)
        k, h, w, c = frames.shape
        # RGB -> BGR (OpenCV's order) with cvtColor: a numpy [..., ::-1] copy costs 40x more
        picture = cv2.cvtColor(frames.reshape(k * h, w, c), cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("OpenCV failed to JPEG-encode a chunk")
        return chunk_spec.prototype.buffer.from_bytes(encoded.tobytes())

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        raw = np.frombuffer(chunk_bytes.to_bytes(), dtype=np.uint8)
        picture = cv2.imdecode(raw, cv2.IMREAD_COLOR)
        if picture is None:
            raise ValueError("corrupt JPEG chunk")
        frames = cv2.cvtColor(picture, cv2.COLOR_BGR2RGB, dst=picture).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(frames)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        """JPEG output size is data-dependent."""
        raise NotImplementedError("JPEG has no fixed encoded size")


register_codec(JPEG_CODEC_NAME, JpegCodec)
