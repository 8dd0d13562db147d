"""`MemKVHiCacheStorage`: sglang's HiCache storage tier on a MemKV cluster.

sglang loads it with
  --hicache-storage-backend dynamic --hicache-storage-backend-extra-config
  '{"backend_name":"memkv","module_path":"memkv_sglang.backend",
    "class_name":"MemKVHiCacheStorage","interface_v1":1}'

A page's path: the HiCache controller hands page hashes and host-pool
indices -> the host pool's get_page_buffer_meta gives each page's segments
(K and V, or one per layer) -> one gathered batch put / scattered batch get
per call moves every page straight between the host pool and the cluster,
one MemKV object per page. Without `interface_v1` the controller's older
path hands flat page tensors instead; they are read and written in place.

Keys are `<page hash>_<suffix>_<format>`. The suffix keeps replicas apart:
model, then `tp_rank`/`tp_size` (MLA drops TP: its pages do not depend on
the TP shape), then `pp<rank>_<size>` when pp_size > 1 (and `cp<rank>_<size>`
under context parallelism). The format tag names how the host pool lays a
page out (layout, dtype, geometry, transfer path), so two deployments whose
bytes would not be interchangeable never read each other's pages.

Options: the MemKV config chain, overridden by extra_config keys named like
the client settings (`servers`, `auth_key`, `license`, ...), optionally
written `memkv.<name>`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

from nixl_memkv.client import Client
from nixl_memkv.config import client_setting_names
from nixl_memkv.errors import MemKVError
from nixl_memkv.keys import fit_key
from nixl_memkv.plugin_startup import register_host_pool, start_plugin

log = logging.getLogger("memkv-client")

PREFIX = "memkv."
TRACKED_PAGES = 1 << 18  # pages clear() can remove
# sglang's own keys in the same extra_config dict.
SGLANG_KEYS = frozenset({"backend_name", "module_path", "class_name", "interface_v1", "tp_lcm_size",
                         "prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token",
                         "hicache_storage_pass_prefix_keys", "file_storage_path"})


def client_overrides(extra: dict) -> dict[str, Any]:
    names = client_setting_names()
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if key.startswith(PREFIX):
            out[key[len(PREFIX):]] = value  # unknown names fail in the config loader, by name
        elif key in names:
            out[key] = value
    return out


def key_suffix(cfg: HiCacheStorageConfig) -> str:
    parts = [str(cfg.model_name or "model").replace("/", "-")]
    if not cfg.is_mla_model:
        parts += [str(cfg.tp_rank), str(cfg.tp_size)]
    if cfg.pp_size > 1:
        parts.append(f"pp{cfg.pp_rank}_{cfg.pp_size}")
    if getattr(cfg, "attn_cp_size", 1) > 1:
        parts.append(f"cp{cfg.attn_cp_rank}_{cfg.attn_cp_size}")
    return "_".join(parts)


# Host-pool layouts whose zero-copy segments, concatenated, are byte for byte
# the flat page (checked against sglang 0.5.23's pools): replicas on either
# transfer path share these pages. Any other layout keys the path too.
SAME_BYTES_ON_BOTH_PATHS = {("MHA", "page_first"), ("MHA", "page_first_direct"), ("MHA", "page_head"),
                            ("MLA", "layer_first"), ("MLA", "page_first"), ("MLA", "page_first_direct")}


def page_format(pool, zero_copy: bool) -> tuple[str, str]:
    """(tag, description) of how `pool` lays out one page's bytes."""
    kind = "MLA" if hasattr(pool, "kv_lora_rank") else "MHA"
    layout = str(getattr(pool, "layout", "?"))
    fields = [type(pool).__name__, layout, str(getattr(pool, "dtype", "?")),
              f"layers={getattr(pool, 'layer_num', '?')}", f"page={pool.page_size}",
              f"bytes={pool.get_size_per_token() * pool.page_size}"]
    if (kind, layout) not in SAME_BYTES_ON_BOTH_PATHS:
        # e.g. MHA layer_first: the zero-copy segments interleave K and V per
        # layer, a flat page holds all of K, then all of V.
        fields.append("v1" if zero_copy else "flat")
    for name in ("head_num", "head_dim", "kv_lora_rank", "qk_rope_head_dim"):
        if hasattr(pool, name):
            fields.append(f"{name}={getattr(pool, name)}")
    text = ",".join(fields)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest(), text


class MemKVHiCacheStorage(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None):
        super().__init__()
        self.storage_config = storage_config
        extra = dict(storage_config.extra_config or {})
        started = start_plugin(client_overrides(extra), source="extra_config")
        self._client = Client(config=started.config, transport=started.transport)
        self._namespace = started.config.namespace
        self._zero_copy = bool(extra.get("interface_v1"))
        self.is_writer = storage_config.is_storage_writer
        self.suffix = key_suffix(storage_config)
        self._format = ""
        self.page_bytes = 0
        self.mem_pool_host = None
        # For clear() (the cluster cannot list keys): the most recent pages
        # this process wrote, bounded so a long-running server does not grow.
        self._written: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.counters: collections.Counter = collections.Counter()
        self._window = {"prefetch_pgs": [], "backup_pgs": [], "prefetch_bandwidth": [], "backup_bandwidth": []}
        log.info("MemKVHiCacheStorage ready (servers=%s, rdma=%s, suffix=%s)", list(started.config.servers),
                 started.rdma, self.suffix)

    # -- host pool --------------------------------------------------------------------
    def register_mem_pool_host(self, mem_pool_host) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self.page_bytes = mem_pool_host.get_size_per_token() * mem_pool_host.page_size
        self._format, description = page_format(mem_pool_host, self._zero_copy)
        log.info("MemKVHiCacheStorage host pool registered: %d-byte pages, format %s (%s)", self.page_bytes,
                 self._format, description)
        register_host_pool(self._client, getattr(mem_pool_host, "kv_buffer", None), "sglang host KV pool")

    def _key(self, page_hash: str) -> bytes:
        if self.mem_pool_host is None:
            raise MemKVError("MemKVHiCacheStorage used before sglang registered its host pool")
        return fit_key(f"{page_hash}_{self.suffix}_{self._format}", self._namespace)

    # -- existence --------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        """How many leading pages the cluster holds (one batched exists per node)."""
        if not keys:
            return 0
        try:
            sizes = self._client.batch_sizes([self._key(k) for k in keys], allow_partial=True)
        except MemKVError as exc:
            log.error("memkv: existence check of %d pages failed (%s); reporting none", len(keys), exc)
            self._count_error()
            return 0
        run = 0
        for size in sizes:
            if size != self.page_bytes:
                break
            run += 1
        return run

    # -- zero-copy path (interface_v1) ---------------------------------------------------
    def _segments(self, keys: List[str], host_indices: torch.Tensor) -> list[list[tuple]]:
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        per_page = len(ptrs) // len(keys)
        if per_page * len(keys) != len(ptrs):
            raise MemKVError(f"host pool gave {len(ptrs)} segments for {len(keys)} pages")
        out = []
        for p in range(len(keys)):
            segs, offset = [], 0
            for ptr, size in zip(ptrs[p * per_page:(p + 1) * per_page], sizes[p * per_page:(p + 1) * per_page]):
                segs.append((offset, int(ptr), int(size)))
                offset += int(size)
            if offset != self.page_bytes:
                # A hit is judged by the object's size: segments must cover it all.
                raise MemKVError(f"host pool page segments cover {offset} bytes, not the {self.page_bytes}-byte "
                                 "page; this pool layout is not supported on the zero-copy path (drop interface_v1)")
            out.append(segs)
        return out

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        return self._read(keys, lambda wire: self._client.batch_get_segments(
            wire, self._segments(keys, host_indices), allow_partial=True))

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        if not keys:
            return []
        t0 = time.perf_counter()
        wire = [self._key(k) for k in keys]
        try:
            segments = self._segments(keys, host_indices)
        except MemKVError as exc:
            log.error("memkv: backing up %d pages failed: %s", len(keys), exc)
            self._count_error()
            return [False] * len(keys)
        return self._write(wire, segments, t0)

    # -- flat-page path (controller without interface_v1) -----------------------------------
    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        return self.batch_get([key], [target_location] if target_location is not None else None)[0]

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> List[Optional[torch.Tensor]]:
        if not keys:
            return []
        if target_locations is None:
            target_locations = [self.mem_pool_host.get_dummy_flat_data_page() for _ in keys]
        ok = self._read(keys, lambda wire: self._client.batch_get_into(
            wire, [t.view(torch.uint8) for t in target_locations], allow_partial=True))
        return [t if hit else None for t, hit in zip(target_locations, ok)]

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        if not keys:
            return True
        t0 = time.perf_counter()
        wire = [self._key(k) for k in keys]
        flat = [v.contiguous().view(torch.uint8) for v in values]
        return all(self._write(wire, [[(0, f, None)] for f in flat], t0))

    # -- shared write/read bookkeeping ------------------------------------------------------
    def _write(self, wire: list[bytes], segments: list, t0: float) -> List[bool]:
        """Pages the cluster already holds are not sent again (replicas
        back up the same shared prefixes); the rest go in one batch."""
        if not self.is_writer:
            return [True] * len(wire)  # MLA: one writer rank stores for all
        try:
            ok, sent = self._client.batch_put_missing(wire, segments, [self.page_bytes] * len(wire))
        except MemKVError as exc:
            log.error("memkv: backing up %d pages failed: %s", len(wire), exc)
            self._count_error()
            return [False] * len(wire)
        written = [i for i, s in enumerate(sent) if s]
        with self._lock:
            for i in written:
                self._written[wire[i]] = None
            while len(self._written) > TRACKED_PAGES:
                self._written.popitem(last=False)
            self.counters["pages_written"] += len(written)
            self.counters["pages_already_stored"] += sum(h and not w for h, w in zip(ok, sent))
            self.counters["bytes_written"] += len(written) * self.page_bytes
            self.counters["write_failures"] += len(wire) - sum(ok)
            self._window["backup_pgs"].append(len(wire))
            self._window["backup_bandwidth"].append(len(written) * self.page_bytes / 1e9 / max(
                time.perf_counter() - t0, 1e-9))
        return ok

    def _read(self, keys: List[str], read) -> List[bool]:
        """Runs one batched read; a page counts only when all of it arrived."""
        if not keys:
            return []
        t0 = time.perf_counter()
        try:
            sizes = read([self._key(k) for k in keys])
        except MemKVError as exc:
            log.error("memkv: reading %d pages failed (%s); reporting misses", len(keys), exc)
            self._count_error()
            return [False] * len(keys)
        ok = [s == self.page_bytes for s in sizes]
        self._count_reads(ok, t0)
        return ok

    def _count_error(self) -> None:
        with self._lock:
            self.counters["errors"] += 1

    def _count_reads(self, ok: List[bool], t0: float) -> None:
        hits = sum(ok)
        with self._lock:
            self.counters["hits"] += hits
            self.counters["misses"] += len(ok) - hits
            self.counters["bytes_read"] += hits * self.page_bytes
            self._window["prefetch_pgs"].append(len(ok))
            self._window["prefetch_bandwidth"].append(hits * self.page_bytes / 1e9 / max(
                time.perf_counter() - t0, 1e-9))

    # -- management -------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Totals since start: hits, misses, bytes read and written, errors."""
        with self._lock:
            return dict(self.counters)

    def get_stats(self):
        """sglang's StorageMetrics for the window since the last call, with
        the running totals attached as `.memkv`."""
        from sglang.srt.observability.metrics_collector import StorageMetrics
        metrics = StorageMetrics()
        with self._lock:
            for name, values in self._window.items():
                getattr(metrics, name).extend(values)
                values.clear()
        metrics.memkv = self.stats()
        return metrics

    def clear(self) -> None:
        """Removes the pages this process backed up (the most recent
        TRACKED_PAGES). Pages other replicas stored stay: the cluster has no
        listing to find them by; its LRU ages them out."""
        with self._lock:
            keys, self._written = list(self._written), collections.OrderedDict()
        if not keys:
            return
        try:
            removed = self._client.batch_remove(keys)
        except MemKVError as exc:
            log.error("memkv: clearing %d pages failed: %s", len(keys), exc)
            return
        log.info("MemKVHiCacheStorage cleared %d pages this process stored", sum(removed))

    def close(self) -> None:
        self._client.close()
        log.info("MemKVHiCacheStorage closed (%s)", ", ".join(f"{k}={v}" for k, v in sorted(self.stats().items())))
