"""Moving LMCache chunks to and from MemKV, shared by the storage plugin
(backend.py) and the multi-process server's L2 adapter (mp_adapter.py).

A stored chunk is [chunk header | payload]. Writes gather the two straight
from the header bytes and LMCache's buffer; reads scatter them back into a
header buffer and the destination object in one batched request, and a read
counts only when the whole value arrived and its header is the one expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from nixl_memkv.client import Client

from .chunk_header import ChunkLayout

@dataclass
class PutItem:
    key: bytes            # the MemKV key (already shaped)
    header: bytes         # stored at offset 0
    ptr: int              # payload address, valid until release()
    length: int           # payload bytes, stored at offset len(header)
    release: Callable[[], None] = field(default=lambda: None)
    cancelled: bool = False

    @property
    def size(self) -> int:
        return len(self.header) + self.length


def layout_of(obj) -> ChunkLayout:
    """The layout of an LMCache MemoryObj, as stored in its header."""
    meta = obj.metadata
    shapes = meta.shapes if meta.shapes is not None else [meta.shape]
    dtypes = meta.dtypes if meta.dtypes is not None else [meta.dtype]
    return ChunkLayout(fmt=obj.get_memory_format().name,
                       dtypes=tuple(str(d).removeprefix("torch.") for d in dtypes),
                       shapes=tuple(tuple(int(x) for x in s) for s in shapes),
                       payload_len=obj.get_size())


def item_for(key: bytes, obj, release: Callable[[], None] = lambda: None) -> PutItem:
    layout = layout_of(obj)
    return PutItem(key, layout.encode(), obj.data_ptr, layout.payload_len, release)


@dataclass
class WriteOutcome:
    stored: list[bool]        # per item: the cluster holds it now
    sent: list[bool]          # per item: written by this call (not already there)
    written: int = 0          # items actually sent
    already_present: int = 0  # skipped: the cluster had them at the same size
    bytes_written: int = 0


def write_chunks(client: Client, items: Sequence[PutItem]) -> WriteOutcome:
    """Gathers each chunk's header and payload into one batched write of the
    chunks the cluster does not hold yet (Client.batch_put_missing). Raises
    only when the cluster could not be asked at all."""
    segments = [[(0, it.header, None), (len(it.header), it.ptr, it.length)] if it.length else
                [(0, it.header, None)] for it in items]
    held, sent = client.batch_put_missing([it.key for it in items], segments, [it.size for it in items])
    return WriteOutcome(held, sent, written=sum(sent),
                        already_present=sum(h and not s for h, s in zip(held, sent)),
                        bytes_written=sum(it.size for it, s in zip(items, sent) if s))


def read_chunks(client: Client, keys: Sequence[bytes], layouts: Sequence[ChunkLayout], ptrs: Sequence[int]
                ) -> list[Optional[bool]]:
    """Reads each chunk's payload to its address. Per key: True (read and
    verified), False (present but not this layout: the bytes at the address
    are not to be used), None (missing or unreachable)."""
    headers = [layout.encode() for layout in layouts]
    back = [bytearray(len(h)) for h in headers]
    segments = [[(0, b, None), (len(h), p, layout.payload_len)] if layout.payload_len else [(0, b, None)]
                for h, b, p, layout in zip(headers, back, ptrs, layouts)]
    sizes = client.batch_get_segments(list(keys), segments, allow_partial=True)
    out: list[Optional[bool]] = []
    for h, b, layout, size in zip(headers, back, layouts, sizes):
        if size is None:
            out.append(None)
        else:
            out.append(size == len(h) + layout.payload_len and b == h)
    return out
