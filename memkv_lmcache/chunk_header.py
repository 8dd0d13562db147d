"""The header stored in front of every LMCache chunk in MemKV.

It carries what a fresh process needs to rebuild the MemoryObj without any
state from the writer (shapes, dtypes, memory format, payload length), so a
restarted vLLM/LMCache rehydrates from MemKV. Layout, little-endian:

    magic "MKLC" | u8 version | u8 ngroups | u16 header_len | u64 payload_len
    | u8 len + memory-format name
    | per group: u8 len + dtype name, u8 ndim, ndim x u64 dims
    | zero padding to header_len (a multiple of 64, at most MAX_HEADER_LEN)

The payload (the MemoryObj's bytes) follows at offset header_len. Names
rather than enum numbers keep the format stable across LMCache releases.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"MKLC"
VERSION = 1
MAX_HEADER_LEN = 4096  # a cold read fetches this much first
_FIXED = struct.Struct("<4sBBHQ")


class HeaderError(ValueError):
    pass


@dataclass(frozen=True)
class ChunkLayout:
    fmt: str                              # MemoryFormat name, e.g. "KV_2LTD"
    dtypes: tuple[str, ...]               # torch dtype names, e.g. "bfloat16"
    shapes: tuple[tuple[int, ...], ...]
    payload_len: int

    def encode(self) -> bytes:
        body = bytearray(_short(self.fmt))
        for dtype, shape in zip(self.dtypes, self.shapes, strict=True):
            body += _short(dtype)
            body.append(len(shape))
            body += struct.pack(f"<{len(shape)}Q", *shape)
        header_len = -(-(_FIXED.size + len(body)) // 64) * 64
        if header_len > MAX_HEADER_LEN:
            raise HeaderError(f"chunk layout needs a {header_len}-byte header (limit {MAX_HEADER_LEN}): "
                              f"{len(self.shapes)} tensor groups is too many")
        head = _FIXED.pack(MAGIC, VERSION, len(self.shapes), header_len, self.payload_len)
        return (head + body).ljust(header_len, b"\0")


def decode(data: bytes | memoryview) -> ChunkLayout:
    """Parses a header from the start of `data` (at least its header_len)."""
    data = bytes(data)
    if len(data) < _FIXED.size:
        raise HeaderError("value is shorter than a chunk header")
    magic, version, ngroups, header_len, payload_len = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise HeaderError("value does not start with a MemKV LMCache chunk header")
    if version != VERSION:
        raise HeaderError(f"chunk header version {version} is not supported (this build reads {VERSION})")
    if header_len > len(data) or header_len % 64:
        raise HeaderError(f"chunk header length {header_len} is invalid")
    pos = _FIXED.size
    fmt, pos = _read_short(data, pos, header_len)
    dtypes, shapes = [], []
    for _ in range(ngroups):
        dtype, pos = _read_short(data, pos, header_len)
        if pos >= header_len:
            raise HeaderError("chunk header is truncated")
        ndim = data[pos]
        pos += 1
        if pos + 8 * ndim > header_len:
            raise HeaderError("chunk header is truncated")
        shapes.append(struct.unpack_from(f"<{ndim}Q", data, pos))
        pos += 8 * ndim
        dtypes.append(dtype)
    return ChunkLayout(fmt, tuple(dtypes), tuple(shapes), payload_len)


def header_len_of(data: bytes | memoryview) -> int:
    return _FIXED.unpack_from(data)[3]


def _short(text: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > 255:
        raise HeaderError(f"name {text!r} is too long for a chunk header")
    return bytes([len(raw)]) + raw


def _read_short(data: bytes, pos: int, end: int) -> tuple[str, int]:
    if pos >= end or pos + 1 + data[pos] > end:
        raise HeaderError("chunk header is truncated")
    n = data[pos]
    try:
        return data[pos + 1:pos + 1 + n].decode("ascii"), pos + 1 + n
    except UnicodeDecodeError:
        raise HeaderError("chunk header holds a non-ASCII name") from None
