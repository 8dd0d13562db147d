"""`MemKVStorageBackend`: LMCache's storage plugin for a MemKV cluster.

LMCache loads it from its YAML (`storage_plugins: memkv` with
`storage_plugin.memkv.module_path: memkv_lmcache.backend` and
`class_name: MemKVStorageBackend`). A chunk's path:

  store:    LMCache hands a MemoryObj -> we take a reference and queue it
            (PutQueue) -> the writer gathers [header | payload] straight
            from LMCache's CPU buffer into one batched put per round.
  lookup:   batched_contains -> one batched exists per node -> the length of
            the leading run of keys present.
  retrieve: batched_get_blocking -> headers are known (from this process's
            own puts/reads) or probed with one ranged batch read -> objects
            are allocated from LMCache's CPU pool -> one batched scatter read
            lands each payload directly in its object; the stored header is
            read back alongside and must match.

Every chunk carries its shapes/dtypes/format on the wire (chunk_header), so
a fresh process rehydrates what an earlier one stored.

Options come from the MemKV config chain; LMCache's `extra_config` keys
`memkv.<name>` override it (`memkv.servers`, `memkv.auth_key`, ...), plus
this plugin's own: `memkv.async_put` (default true), `memkv.put_queue_mb`
(default 1024) and `memkv.put_queue_timeout_s` (default 10).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Sequence

import torch
from lmcache.v1.memory_management import MemoryFormat, MemoryObj
from lmcache.v1.storage_backend.abstract_backend import StoragePluginInterface

from nixl_memkv.client import Client
from nixl_memkv.errors import ConfigError, MemKVError
from nixl_memkv.keys import fit_key
from nixl_memkv.plugin_startup import register_host_pool, split_plugin_options, start_plugin

from . import chunk_header
from .chunk_header import ChunkLayout, HeaderError
from .chunk_io import PutItem, layout_of, read_chunks
from .put_queue import PutQueue

log = logging.getLogger("memkv-client")

EXTRA_CONFIG_PREFIX = "memkv."
_LAYOUT_CACHE_ENTRIES = 1 << 18
# A blocking retrieve waits this long for room in LMCache's CPU pool (stores
# in flight free it); LMCache's own busy loop would wait forever.
ALLOC_WAIT_S = 5.0


def _positive_int(label: str, value: Any) -> int:
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{label}={value!r} is not valid: expected a positive integer") from None
    return n


def _positive_float(label: str, value: Any) -> float:
    try:
        x = float(value)
        if not x > 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{label}={value!r} is not valid: expected a positive number of seconds") from None
    return x


def _bool(label: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{label}={value!r} is not valid: expected true or false")


PLUGIN_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "async_put": _bool,
    "put_queue_mb": _positive_int,
    "put_queue_timeout_s": _positive_float,
}


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise HeaderError(f"chunk header names an unknown dtype {name!r}")
    return dtype


class MemKVStorageBackend(StoragePluginInterface):
    def __init__(self, config=None, dst_device: str = "cpu", metadata=None, local_cpu_backend=None, loop=None):
        super().__init__(dst_device=dst_device, config=config, metadata=metadata,
                         local_cpu_backend=local_cpu_backend, loop=loop)
        extra = dict(getattr(config, "extra_config", None) or {})
        overrides, options = split_plugin_options(extra, PLUGIN_OPTIONS, source="extra_config",
                                                  prefix=EXTRA_CONFIG_PREFIX)
        started = start_plugin(overrides, source="extra_config memkv.")
        self._client = Client(config=started.config, transport=started.transport)
        self._namespace = started.config.namespace
        self._queue = PutQueue(self._client, max_bytes=options.get("put_queue_mb", 1024) << 20,
                               block_timeout_s=options.get("put_queue_timeout_s", 10.0),
                               asynchronous=options.get("async_put", True))
        # Per-key layouts this process has written or read: a warm read is one
        # round trip. Layout objects are interned (one per distinct shape).
        self._layouts: collections.OrderedDict[bytes, ChunkLayout] = collections.OrderedDict()
        self._interned: dict[ChunkLayout, ChunkLayout] = {}
        self._lock = threading.Lock()
        # Pins do nothing on MemKV; they are counted only so unpin() answers
        # truthfully, and bounded: LMCache's async lookups pin without unpinning.
        self._pins: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="memkv-load")
        self._closed = False
        self.counters = collections.Counter()
        # LMCache's CPU pool is one long-lived tensor: with RDMA, register it
        # once so every chunk moves zero-copy.
        pool = getattr(getattr(local_cpu_backend, "memory_allocator", None), "buffer", None)
        if pool is not None and getattr(pool, "numel", lambda: 0)() > 0:
            register_host_pool(self._client, pool, "LMCache CPU pool")
        log.info("MemKVStorageBackend ready (servers=%s, rdma=%s, dst_device=%s)", list(started.config.servers),
                 started.rdma, dst_device)

    def __str__(self) -> str:
        return "MemKVStorageBackend"

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:  # lookups, loads and stores run on several threads
            self.counters[name] += n

    # -- keys and layouts -------------------------------------------------------------
    def _key(self, key) -> bytes:
        return fit_key(key.to_string(), self._namespace)

    def _remember(self, key: bytes, layout: ChunkLayout) -> None:
        with self._lock:
            layout = self._interned.setdefault(layout, layout)
            self._layouts[key] = layout
            self._layouts.move_to_end(key)
            if len(self._layouts) > _LAYOUT_CACHE_ENTRIES:
                self._layouts.popitem(last=False)

    def _known_layout(self, key: bytes) -> Optional[ChunkLayout]:
        with self._lock:
            return self._layouts.get(key)

    def _forget(self, key: bytes) -> None:
        with self._lock:
            self._layouts.pop(key, None)

    # -- lookups ----------------------------------------------------------------------
    def contains(self, key, pin: bool = False) -> bool:
        return self.batched_contains([key], pin) == 1

    def batched_contains(self, keys: List, pin: bool = False) -> int:
        """Length of the leading run of keys stored (or being stored)."""
        wire = [self._key(k) for k in keys]
        lead = 0
        while lead < len(wire) and self._queue.is_pending(wire[lead]):
            lead += 1
        hits = lead
        if lead < len(wire):
            try:
                sizes = self._client.batch_sizes(wire[lead:], allow_partial=True)
            except MemKVError as exc:
                log.error("memkv lookup of %d keys failed (%s); reporting misses", len(wire) - lead, exc)
                self._count("lookup_errors", 1)
                sizes = []
            for size in sizes:
                if size is None:
                    break
                hits += 1
        if pin:
            with self._lock:
                for k in wire[:hits]:
                    self._pins[k] = self._pins.get(k, 0) + 1
                    self._pins.move_to_end(k)
                while len(self._pins) > _LAYOUT_CACHE_ENTRIES:
                    self._pins.popitem(last=False)
        return hits

    async def batched_async_contains(self, lookup_id: str, keys: List, pin: bool = False) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._loader, self.batched_contains, keys, pin)

    def exists_in_put_tasks(self, key) -> bool:
        return self._queue.is_pending(self._key(key))

    # -- stores -----------------------------------------------------------------------
    def batched_submit_put_task(self, keys: Sequence, objs: List[MemoryObj], transfer_spec: Any = None,
                                on_complete_callback: Optional[Callable] = None) -> Optional[List[Future]]:
        """Queues the chunks and returns at once. Never raises into LMCache's
        store path (that would skip its own reference releases)."""
        if len(keys) != len(objs):
            log.error("memkv: put of %d keys with %d objects ignored", len(keys), len(objs))
            return None
        items, by_wire = [], {}
        for key, obj in zip(keys, objs):
            wire = self._key(key)
            try:
                layout = layout_of(obj)
                header = layout.encode()
            except HeaderError as exc:
                log.error("memkv: not storing chunk %s: %s", key.to_string()[:120], exc)
                self._count("put_skipped", 1)
                continue
            obj.ref_count_up()  # LMCache releases its reference when we return
            items.append(PutItem(wire, header, obj.data_ptr, layout.payload_len, release=obj.ref_count_down))
            by_wire[wire] = key
            self._remember(wire, layout)
        if not items:
            return None

        def done(item: PutItem, stored: bool) -> None:
            if stored and on_complete_callback is not None:
                on_complete_callback(by_wire[item.key])

        try:
            future = self._queue.submit(items, done)  # releases every item it does not accept
        except MemKVError as exc:
            log.error("memkv: %d chunks not stored: %s", len(items), exc)
            return None
        return [future] if future is not None else None

    # -- retrieves --------------------------------------------------------------------
    def get_blocking(self, key) -> Optional[MemoryObj]:
        return self.batched_get_blocking([key])[0]

    def get_non_blocking(self, key, location: Optional[str] = None) -> Optional[Future]:
        return self._loader.submit(lambda: self._get_many([key], wait_s=0.0)[0])

    async def batched_get_non_blocking(self, lookup_id: str, keys: list, transfer_spec: Any = None
                                       ) -> list[MemoryObj]:
        objs = await asyncio.get_running_loop().run_in_executor(
            self._loader, lambda: self._get_many(keys, wait_s=0.0))
        # Prefix semantics: the leading run of hits is the answer.
        out: list[MemoryObj] = []
        for obj in objs:
            if obj is None:
                break
            out.append(obj)
        for obj in objs[len(out):]:
            if obj is not None:
                obj.ref_count_down()
        return out

    def batched_get_blocking(self, keys: List) -> List[Optional[MemoryObj]]:
        return self._get_many(keys, wait_s=ALLOC_WAIT_S)

    def _get_many(self, keys: List, *, wait_s: float) -> List[Optional[MemoryObj]]:
        """Reads a batch; a list of objects (each with one reference for the
        caller) or None per key. Only the first allocation may wait for room
        in LMCache's CPU pool (up to wait_s): waiting while holding part of a
        batch could deadlock against other retrieves, so once one allocation
        fails the rest of the batch is a miss."""
        if self.local_cpu_backend is None:
            raise MemKVError("MemKVStorageBackend cannot retrieve without LMCache's local CPU backend "
                             "(scheduler role); only lookups are available here")
        wire = [self._key(k) for k in keys]
        out: List[Optional[MemoryObj]] = [None] * len(keys)
        objs: dict[int, MemoryObj] = {}
        try:
            layouts: list[Optional[ChunkLayout]] = [None] * len(keys)
            cold = []
            for i, w in enumerate(wire):
                item = self._queue.pending(w)
                if item is not None and not item.cancelled:
                    out[i] = self._copy_pending(w, item, wait_s if not any(out) else 0.0)
                    if out[i] is not None:
                        continue
                layouts[i] = self._known_layout(w)
                if layouts[i] is None:
                    cold.append(i)
            if cold:
                self._probe_layouts([wire[i] for i in cold], cold, layouts)
            for i in range(len(keys)):
                if out[i] is not None or layouts[i] is None:
                    continue
                obj = self._allocate(layouts[i], wait_s if not objs and not any(out) else 0.0)
                if obj is None:
                    log.warning("memkv: LMCache's CPU pool has no room for chunk %d of %d; the rest of the batch "
                                "is a miss", i + 1, len(keys))
                    self._count("alloc_failures", 1)
                    break
                objs[i] = obj
            if objs:
                self._read_payloads(wire, layouts, objs, out)
        except Exception:
            # Nothing allocated here may outlive a failed call.
            held = {id(o): o for o in [*objs.values(), *out] if o is not None}
            for obj in held.values():
                obj.ref_count_down()
            log.exception("memkv: retrieving %d chunks failed; reporting misses", len(keys))
            self._count("get_errors", 1)
            return [None] * len(keys)
        hits = sum(o is not None for o in out)
        self._count("get_hits", hits)
        self._count("get_misses", len(keys) - hits)
        return out

    def _probe_layouts(self, keys: list[bytes], index: list[int], layouts: list) -> None:
        """Cold keys: one ranged batch read of the header span."""
        bufs = [bytearray(chunk_header.MAX_HEADER_LEN) for _ in keys]
        try:
            sizes = self._client.batch_get_segments(keys, [[(0, b, None)] for b in bufs], allow_partial=True)
        except MemKVError as exc:
            log.error("memkv: reading %d chunk headers failed (%s); treating them as misses", len(keys), exc)
            self._count("get_errors", 1)
            return
        for i, key, buf, size in zip(index, keys, bufs, sizes):
            if size is None:
                continue
            try:
                layout = chunk_header.decode(buf[:min(size, len(buf))])
                if chunk_header.header_len_of(buf) + layout.payload_len != size:
                    raise HeaderError(f"stored value is {size} bytes but its header describes "
                                      f"{chunk_header.header_len_of(buf) + layout.payload_len}")
            except HeaderError as exc:
                log.warning("memkv: key %r does not hold a readable LMCache chunk (%s); treated as a miss", key, exc)
                self._count("bad_chunks", 1)
                continue
            layouts[i] = layout
            self._remember(key, layout)

    def _read_payloads(self, wire: list[bytes], layouts: list, objs: dict[int, MemoryObj], out: list) -> None:
        order = sorted(objs)
        try:
            results = read_chunks(self._client, [wire[i] for i in order], [layouts[i] for i in order],
                                  [objs[i].data_ptr for i in order])
        except MemKVError as exc:
            log.error("memkv: reading %d chunks failed (%s); treating them as misses", len(order), exc)
            self._count("get_errors", 1)
            results = [None] * len(order)
        for i, ok in zip(order, results):
            if ok:
                out[i] = objs[i]
                self._count("get_bytes", layouts[i].payload_len)
                continue
            if ok is False:
                # Another writer stored a different layout under this key:
                # drop what we knew; the next read probes afresh.
                log.warning("memkv: chunk %r changed layout since it was last seen; treated as a miss", wire[i])
                self._forget(wire[i])
            objs[i].ref_count_down()

    def _allocate(self, layout: ChunkLayout, wait_s: float) -> Optional[MemoryObj]:
        """An object of the chunk's layout from LMCache's CPU pool, or None
        (no room within wait_s, or a layout that cannot be rebuilt here)."""
        try:
            shapes = [torch.Size(s) for s in layout.shapes]
            dtypes = [_torch_dtype(d) for d in layout.dtypes]
            fmt = MemoryFormat[layout.fmt]
            capacity = sum(sh.numel() * dt.itemsize for sh, dt in zip(shapes, dtypes))
            if layout.payload_len > capacity:
                raise HeaderError(f"payload of {layout.payload_len} bytes exceeds its shapes ({capacity} bytes)")
        except (HeaderError, KeyError) as exc:
            log.warning("memkv: a chunk cannot be rebuilt here (%s); treated as a miss", exc)
            self._count("bad_chunks", 1)
            return None
        one = len(shapes) == 1
        deadline = time.monotonic() + wait_s
        while True:
            # Never LMCache's own busy loop: it has no time limit.
            obj = self.local_cpu_backend.allocate(shapes[0] if one else shapes, dtypes[0] if one else dtypes, fmt,
                                                  busy_loop=False)
            if obj is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if obj is not None and obj.get_size() != layout.payload_len:
            obj.set_used_size(layout.payload_len)
        return obj

    def _copy_pending(self, key: bytes, item: PutItem, wait_s: float) -> Optional[MemoryObj]:
        """A chunk still in the put queue is served from its source buffer
        (None if it was written meanwhile: then it is read from MemKV)."""
        obj = self._allocate(chunk_header.decode(item.header), wait_s)
        if obj is not None and not self._queue.copy_pending(key, obj.data_ptr, item.length):
            obj.ref_count_down()
            obj = None
        return obj

    # -- pins, removal ----------------------------------------------------------------
    def pin(self, key) -> bool:
        """Records a pin and reports whether the chunk is stored. MemKV keeps
        no per-client retention: a pin cannot stop the cluster's own LRU
        eviction; it only lets LMCache track what it asked to keep."""
        return self.batched_contains([key], pin=True) == 1

    def unpin(self, key) -> bool:
        wire = self._key(key)
        with self._lock:
            count = self._pins.get(wire, 0)
            if count <= 0:
                return False
            if count == 1:
                del self._pins[wire]
            else:
                self._pins[wire] = count - 1
            return True

    def remove(self, key, force: bool = True) -> bool:
        return self.batched_remove([key], force) == 1

    def batched_remove(self, keys: list, force: bool = True) -> int:
        wire = [self._key(k) for k in keys]
        cancelled = [self._queue.cancel(w) for w in wire]
        for w in wire:
            self._forget(w)
        try:
            removed = self._client.batch_remove(wire)
        except MemKVError as exc:
            log.error("memkv: removing %d chunks failed: %s", len(wire), exc)
            return sum(cancelled)
        return sum(r or c for r, c in zip(removed, cancelled))

    # -- lifetime ---------------------------------------------------------------------
    def get_allocator_backend(self):
        return self.local_cpu_backend

    def drain(self, timeout_s: float | None = None) -> bool:
        """Waits until every accepted put is written (tests, benchmarks, shutdown)."""
        return self._queue.drain(timeout_s)

    def stats(self) -> dict[str, int]:
        with self._lock:
            out = dict(self.counters)
        out.update({f"put_{k}": v for k, v in self._queue.stats.as_dict().items()})
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.close()
        self._loader.shutdown(wait=True)
        self._client.close()
        log.info("MemKVStorageBackend closed (%s)", ", ".join(f"{k}={v}" for k, v in sorted(self.stats().items())))
