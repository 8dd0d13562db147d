"""`MemKVL2Adapter`: MemKV as the L2 tier of LMCache's multi-process server.

One LMCache MP server per host serves many vLLM instances; with

    python -m lmcache.v1.multiprocess.server ... --l2-adapter \\
      '{"type":"plugin","module_path":"memkv_lmcache.mp_adapter",
        "class_name":"MemKVL2Adapter","adapter_params":{"servers":"a:9900,b:9900"}}'

every host's server shares one MemKV cluster, and a restarted server finds
what was stored before. adapter_params are MemKV client settings
(servers, auth_key, license, transport, num_connections, namespace, ...)
overriding the MEMKV_* chain, plus `io_threads` (lookups and loads in
flight at once, default 2).

LMCache's contract (l2_adapters/base.py): submit_* return a task id at once;
the work runs on our threads; each result is published under a lock and only
then signalled on that kind's eventfd; query/pop hand a result out once. The
MP server owns every MemoryObj: stores read from them until the task is
reported, loads fill objects it already shaped, so a chunk's stored header
is checked against the destination's layout before its bytes count.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from lmcache.lmcache_native import Bitmap
from lmcache.v1.distributed.internal_api import L2StoreResult
from lmcache.v1.distributed.l2_adapters.base import L2AdapterInterface, L2TaskId
from lmcache.v1.platform import create_event_notifier

from nixl_memkv.client import Client
from nixl_memkv.errors import ConfigError, MemKVError
from nixl_memkv.keys import fit_key
from nixl_memkv.plugin_startup import register_host_pool, split_plugin_options, start_plugin

from .chunk_header import HeaderError
from .chunk_io import item_for, layout_of, read_chunks, write_chunks

log = logging.getLogger("memkv-client")


def object_key_string(key) -> str:
    """LMCache's own stable form of an ObjectKey (the one its remote adapters
    use): identical in every process and across restarts."""
    text = f"{key.model_name}@{key.kv_rank:08x}@{key.object_group_id:x}@{key.chunk_hash.hex()}"
    return f"{text}@{key.cache_salt}" if key.cache_salt else text


def _io_threads(label: str, value: Any) -> int:
    try:
        n = int(value)
        if not 1 <= n <= 32:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{label}={value!r} is not valid: expected an integer from 1 to 32") from None
    return n


class MemKVL2Adapter(L2AdapterInterface):
    def __init__(self, params: Optional[dict] = None, l1_memory_desc: Any = None):
        super().__init__(max_capacity_bytes=0)  # the cluster runs its own LRU
        overrides, options = split_plugin_options(dict(params or {}), {"io_threads": _io_threads},
                                                  source="adapter_params")
        started = start_plugin(overrides, source="adapter_params")
        self._client = Client(config=started.config, transport=started.transport)
        self._namespace = started.config.namespace
        self._lock = threading.Lock()
        self._next_id: L2TaskId = 0
        self._stores_done: dict[L2TaskId, L2StoreResult] = {}
        self._lookups_done: dict[L2TaskId, Bitmap] = {}
        self._loads_done: dict[L2TaskId, Bitmap] = {}
        self._store_efd = create_event_notifier()
        self._lookup_efd = create_event_notifier()
        self._load_efd = create_event_notifier()
        # Stores run in order on one thread (each is one large gathered
        # batch); lookups and loads on their own so a big store never
        # delays a prefetch.
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="memkv-l2-store")
        self._io_pool = ThreadPoolExecutor(options.get("io_threads", 2), thread_name_prefix="memkv-l2-io")
        self._locks: collections.Counter = collections.Counter()
        self.counters: collections.Counter = collections.Counter()
        self._healthy = True
        self._closed = False
        # The MP server's L1 arena is where every load lands and every store
        # comes from: with RDMA, register its stable part once.
        if l1_memory_desc is not None and getattr(l1_memory_desc, "ptr", 0):
            size = getattr(l1_memory_desc, "stable_registration_size", None) or l1_memory_desc.size
            if size:
                register_host_pool(self._client, l1_memory_desc.ptr, "LMCache L1 arena", length=size)
        log.info("MemKVL2Adapter ready (servers=%s, rdma=%s)", list(started.config.servers), started.rdma)

    # -- event fds --------------------------------------------------------------------
    def get_store_event_fd(self) -> int:
        return self._store_efd.fileno()

    def get_lookup_and_lock_event_fd(self) -> int:
        return self._lookup_efd.fileno()

    def get_load_event_fd(self) -> int:
        return self._load_efd.fileno()

    # -- plumbing ---------------------------------------------------------------------
    def _count(self, name: str, n: int) -> None:
        with self._lock:
            self.counters[name] += n

    def _key(self, key) -> bytes:
        return fit_key(object_key_string(key), self._namespace)

    def _submit(self, pool: ThreadPoolExecutor, work: Callable[[], Any], done: dict, notifier, failed: Callable[[], Any]
                ) -> L2TaskId:
        with self._lock:
            task_id = self._next_id
            self._next_id += 1

        def run() -> None:
            try:
                result = work()
                self._healthy = True
            except Exception as exc:  # noqa: BLE001 - every task must complete, or a request hangs
                if isinstance(exc, MemKVError):
                    log.error("memkv L2 task failed: %s", exc)
                else:
                    log.exception("memkv L2 task failed unexpectedly")
                self._healthy = False
                result = failed()
            with self._lock:  # publish first, then signal: a wake-up must find its result
                done[task_id] = result
            notifier.notify()

        pool.submit(run)
        return task_id

    # -- store ------------------------------------------------------------------------
    def submit_store_task(self, keys: list, objects: list) -> L2TaskId:
        def work() -> L2StoreResult:
            items, stored_keys, sizes = [], [], []
            for key, obj in zip(keys, objects, strict=True):
                try:
                    items.append(item_for(self._key(key), obj))
                except HeaderError as exc:
                    log.error("memkv L2: not storing %s: %s", object_key_string(key)[:120], exc)
                    return L2StoreResult(False, 0)
            outcome = write_chunks(self._client, items)
            for key, it, sent in zip(keys, items, outcome.sent):
                if sent:  # usage accounting counts each stored byte once
                    stored_keys.append(key)
                    sizes.append(it.size)
            self._count("stored", outcome.written)
            self._count("already_present", outcome.already_present)
            self._count("store_failed", len(items) - sum(outcome.stored))
            if stored_keys:
                self._notify_keys_stored(stored_keys, sizes)
            return L2StoreResult(all(outcome.stored), outcome.bytes_written)

        return self._submit(self._store_pool, work, self._stores_done, self._store_efd,
                            lambda: L2StoreResult(False, 0))

    def pop_completed_store_tasks(self) -> dict:
        with self._lock:
            done, self._stores_done = self._stores_done, {}
        return done

    # -- lookup and lock --------------------------------------------------------------
    def submit_lookup_and_lock_task(self, keys: list, group_layout_descs: Optional[dict] = None) -> L2TaskId:
        def work() -> Bitmap:
            sizes = self._client.batch_sizes([self._key(k) for k in keys], allow_partial=True)
            found = Bitmap(len(keys))
            with self._lock:
                for i, (key, size) in enumerate(zip(keys, sizes)):
                    if size is not None:
                        found.set(i)
                        # MemKV has no per-client retention: the lock is a
                        # count the unlock must balance; the cluster's LRU
                        # may still evict, and a load then reports a miss.
                        self._locks[key] += 1
            self._count("lookup_hits", found.popcount())
            self._count("lookup_misses", len(keys) - found.popcount())
            return found

        return self._submit(self._io_pool, work, self._lookups_done, self._lookup_efd, lambda: Bitmap(len(keys)))

    def query_lookup_and_lock_result(self, task_id: L2TaskId) -> Optional[Bitmap]:
        with self._lock:
            return self._lookups_done.pop(task_id, None)

    def submit_unlock(self, keys: list) -> None:
        # Never fails (the caller never retries): a local count only.
        with self._lock:
            for key in keys:
                if self._locks[key] > 1:
                    self._locks[key] -= 1
                else:
                    self._locks.pop(key, None)

    # -- load -------------------------------------------------------------------------
    def submit_load_task(self, keys: list, objects: list) -> L2TaskId:
        def work() -> Bitmap:
            results = read_chunks(self._client, [self._key(k) for k in keys], [layout_of(o) for o in objects],
                                  [o.data_ptr for o in objects])
            loaded = Bitmap(len(keys))
            hits = []
            for i, (key, ok) in enumerate(zip(keys, results)):
                if ok:
                    loaded.set(i)
                    hits.append(key)
                elif ok is False:
                    log.warning("memkv L2: %s holds a different layout than requested; treated as a miss",
                                object_key_string(key)[:120])
            self._count("loaded", len(hits))
            self._count("load_misses", len(keys) - len(hits))
            if hits:
                self._notify_keys_accessed(hits)
            return loaded

        return self._submit(self._io_pool, work, self._loads_done, self._load_efd, lambda: Bitmap(len(keys)))

    def query_load_result(self, task_id: L2TaskId) -> Optional[Bitmap]:
        with self._lock:
            return self._loads_done.pop(task_id, None)

    # -- management -------------------------------------------------------------------
    def delete(self, keys: list) -> None:
        try:
            wire = [self._key(k) for k in keys]
            sizes = self._client.batch_sizes(wire, allow_partial=True)
            removed = self._client.batch_remove(wire)
        except MemKVError as exc:
            log.error("memkv L2: deleting %d keys failed: %s", len(keys), exc)
            return
        gone = [(k, s) for k, s, r in zip(keys, sizes, removed) if r and s is not None]
        if gone:
            self._notify_keys_deleted([k for k, _ in gone], [s for _, s in gone])

    def report_status(self) -> dict:
        with self._lock:
            locked, counters = len(self._locks), dict(self.counters)
        return {"is_healthy": self._healthy, "servers": list(self._client.config.servers), "locked_keys": locked,
                **counters}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store_pool.shutdown(wait=True)
        self._io_pool.shutdown(wait=True)
        self._client.close()
        for notifier in (self._store_efd, self._lookup_efd, self._load_efd):
            notifier.close()
        log.info("MemKVL2Adapter closed (%s)", ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())))
