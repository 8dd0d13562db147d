"""Asynchronous, bounded chunk writer: takes puts off the request path.

Submitters hand over chunks (a header plus a raw span of memory they keep
alive until `release` is called); one writer thread coalesces queued batches
into large gathered batch puts. Before writing, one batched exists per batch
skips chunks the cluster already holds at the same size (re-stores of shared
prefixes cost a few bytes, not a value). The queue is bounded in bytes: a full
queue blocks the submitter (back-pressure) for up to `block_timeout_s`, then
drops the batch, logged and counted. Errors never reach the submitter's
thread; they are logged and counted. `close()` drains what was accepted.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional

from nixl_memkv.client import Client
from nixl_memkv.errors import MemKVError

from .chunk_io import PutItem, write_chunks

log = logging.getLogger("memkv-client")

# One writer round: at most this much is gathered into one batch put.
_ROUND_BYTES = 256 << 20
_ROUND_ITEMS = 4096


def _release(item: PutItem) -> None:
    try:
        item.release()
    except Exception:  # noqa: BLE001 - a host allocator error must not stop the writer
        log.exception("memkv: releasing a written chunk's buffer failed")


@dataclass
class _Batch:
    items: list[PutItem]
    on_done: Optional[Callable[[PutItem, bool], None]]
    future: Future = field(default_factory=Future)


@dataclass
class PutStats:
    stored: int = 0
    stored_bytes: int = 0
    already_present: int = 0
    failed: int = 0
    dropped: int = 0
    cancelled: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class PutQueue:
    def __init__(self, client: Client, *, max_bytes: int, block_timeout_s: float, asynchronous: bool = True):
        self._client = client
        self._max_bytes = max_bytes
        self._block_timeout_s = block_timeout_s
        self._async = asynchronous
        self._cv = threading.Condition()
        self._queue: collections.deque[_Batch] = collections.deque()
        self._queued_bytes = 0
        self._pending: dict[bytes, PutItem] = {}   # accepted, not yet finished
        self._closed = False
        self.stats = PutStats()
        self._thread: threading.Thread | None = None
        if asynchronous:
            self._thread = threading.Thread(target=self._run, name="memkv-put-writer", daemon=True)
            self._thread.start()

    # -- submitter side ---------------------------------------------------------------
    def submit(self, items: list[PutItem], on_done: Optional[Callable[[PutItem, bool], None]] = None
               ) -> Optional[Future]:
        """Accepts chunks for writing; returns a Future resolved (to the
        number stored) when they are written, or None when nothing was
        accepted. Items already queued under the same key are released at
        once (duplicates)."""
        fresh, seen = [], set()
        with self._cv:
            for it in items:
                if it.key in self._pending or it.key in seen:
                    it.release()
                else:
                    seen.add(it.key)
                    fresh.append(it)
            if not fresh:
                return None
            if self._closed:
                for it in fresh:
                    _release(it)
                raise MemKVError("put queue is closed")
            need = sum(it.size for it in fresh)
            if self._async:
                deadline = time.monotonic() + self._block_timeout_s
                while self._queued_bytes and self._queued_bytes + need > self._max_bytes:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed:
                        self.stats.dropped += len(fresh)
                        log.error("memkv put queue full (%d bytes queued, limit %d) for %.1f s: dropped %d chunks; "
                                  "raise memkv.put_queue_mb or check the cluster's write rate",
                                  self._queued_bytes, self._max_bytes, self._block_timeout_s, len(fresh))
                        for it in fresh:
                            it.release()
                        return None
                    self._cv.wait(left)
            for it in fresh:
                self._pending[it.key] = it
            batch = _Batch(fresh, on_done)
            if self._async:
                self._queue.append(batch)
                self._queued_bytes += need
                self._cv.notify_all()
        if not self._async:
            self._write([batch])
        return batch.future

    def pending(self, key: bytes) -> Optional[PutItem]:
        with self._cv:
            return self._pending.get(key)

    def copy_pending(self, key: bytes, dst: int, length: int) -> bool:
        """Copies a still-queued chunk's payload to `dst`. Runs under the
        queue's lock: the writer unlists an item under it before releasing
        its buffer, so the source cannot be freed mid-copy."""
        with self._cv:
            it = self._pending.get(key)
            if it is None or it.cancelled or it.length != length:
                return False
            ctypes.memmove(dst, it.ptr, length)
            return True

    def is_pending(self, key: bytes) -> bool:
        with self._cv:
            return key in self._pending

    def cancel(self, key: bytes) -> bool:
        """A remove() of a key still queued: it will not be written."""
        with self._cv:
            it = self._pending.get(key)
            if it is not None:
                it.cancelled = True
            return it is not None

    def drain(self, timeout_s: float | None = None) -> bool:
        """Waits until everything accepted so far is written (or failed)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout_s: float = 60.0) -> None:
        """Writes what was accepted (up to timeout_s), then stops the writer.
        Chunks still queued after that are released unwritten (counted as
        dropped); a round already with the cluster finishes or times out."""
        if not self.drain(timeout_s):
            log.error("memkv put queue: %d chunks still unwritten after %.0f s at close", len(self._pending),
                      timeout_s)
        with self._cv:
            self._closed = True
            left, self._queue = list(self._queue), collections.deque()
            for b in left:
                for it in b.items:
                    if self._pending.get(it.key) is it:
                        del self._pending[it.key]
                    self.stats.dropped += 1
            self._cv.notify_all()
        for b in left:
            for it in b.items:
                _release(it)
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- writer side ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                round_, nbytes, nitems = [], 0, 0
                while self._queue and (not round_ or (nbytes < _ROUND_BYTES and nitems < _ROUND_ITEMS)):
                    b = self._queue.popleft()
                    round_.append(b)
                    nbytes += sum(it.size for it in b.items)
                    nitems += len(b.items)
            try:
                self._write(round_)
            finally:
                with self._cv:
                    self._queued_bytes -= nbytes
                    self._cv.notify_all()

    def _write(self, batches: list[_Batch]) -> None:
        items = [it for b in batches for it in b.items]
        live = [it for it in items if not it.cancelled]
        ok: dict[int, bool] = {id(it): False for it in items}
        try:
            if live:
                outcome = write_chunks(self._client, live)
                self.stats.stored += outcome.written
                self.stats.stored_bytes += outcome.bytes_written
                self.stats.already_present += outcome.already_present
                for it, stored in zip(live, outcome.stored):
                    ok[id(it)] = stored
                # A remove() that came while the write was in flight may have
                # reached the node first: apply it again, after the write.
                late = [it.key for it in live if it.cancelled and ok[id(it)]]
                if late:
                    self._client.batch_remove(late)
        except MemKVError as exc:
            log.error("memkv put of %d chunks failed: %s", len(live), exc)
        except Exception:  # noqa: BLE001 - the writer thread must survive anything
            log.exception("memkv put of %d chunks failed unexpectedly", len(live))
        finally:
            for it in items:
                if it.cancelled:
                    self.stats.cancelled += 1
                elif not ok[id(it)]:
                    self.stats.failed += 1
            with self._cv:  # unlist before release: copy_pending must never see a freed buffer
                for it in items:
                    if self._pending.get(it.key) is it:
                        del self._pending[it.key]
                self._cv.notify_all()
            for b in batches:
                stored = 0
                for it in b.items:
                    done = ok[id(it)] and not it.cancelled
                    stored += done
                    try:  # neither a host callback nor a release may stop the writer
                        if b.on_done is not None:
                            b.on_done(it, done)
                    except Exception:  # noqa: BLE001
                        log.exception("memkv put completion callback failed")
                    finally:
                        _release(it)
                if not b.future.done():  # a host may have cancelled it
                    b.future.set_result(stored)
