"""`nixl_memkv.Client`: the Python face of the native client.

Keys are str (UTF-8) or bytes, 1..512 bytes. Values and read buffers are any
buffer-protocol object (bytes, bytearray, memoryview, numpy arrays) or CPU
torch tensors; reads land directly in the caller's buffer. Batch calls are
grouped per node and pipelined over the connection pool, with the GIL
released throughout.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

from . import _client
from .config import ClientConfig, load_client_config, split_server
from .errors import BatchError, ChecksumError, ConnectionFailed, MemKVError
from .transport import log_rails, native_transport_mode, select_transport, usable_rails

log = logging.getLogger("memkv-client")

_STATUS_TEXT = {
    1: "not found", 2: "bad request", 4: "value too large for the node", 5: "checksum mismatch in transit",
    6: "node out of space", 7: "node internal error", 10: "node shutting down", 11: "invalid key",
    13: "value larger than the tenant's quota",
    _client.STATUS_UNAVAILABLE: "node unavailable",
}


def _status_text(code: int) -> str:
    return _STATUS_TEXT.get(code, f"status {code}")


class Client:
    """A connection to a MemKV cluster (thread-safe; share one per process)."""

    def __init__(self, servers: Sequence[str] | str | None = None, auth_key: str | bytes | None = None, *,
                 config: ClientConfig | None = None, transport: str | None = None, **overrides: Any):
        if config is None:
            given = dict(overrides)
            if servers is not None:
                given["servers"] = servers
            if auth_key is not None:
                given["auth_key"] = auth_key
            config = load_client_config(given, overrides_source="Client argument")
        if config.auth_key is None:
            from .errors import ConfigError
            raise ConfigError("no auth key: set MEMKV_AUTH_KEY (64 hex characters; generate one with `memkv keygen`)")
        self.config = config
        # A plugin that already chose (and logged) the transport passes it in.
        self.transport = transport or select_transport(config)
        nodes = []
        for name in config.servers:
            host, port = split_server(name)
            nodes.append((name, host, port))
        self._native = _client.NativeClient(
            nodes, config.auth_key, config.num_connections, config.connect_timeout_ms, config.op_timeout_ms,
            native_transport_mode(config, self.transport), usable_rails(config, self.transport),
            config.staging_size_mb << 20, config.staging_slot_mb << 20, config.registration_cache_mb << 20,
            config.tenant)
        self._ns = config.namespace.encode() if config.namespace else b""
        self._registered: dict[int, Any] = {}
        log_rails(config, self._native.rail_device)

    @classmethod
    def from_env(cls, **overrides: Any) -> "Client":
        """Builds a client from the config chain (MEMKV_CONFIG, MEMKV_* env), plus overrides."""
        return cls(config=load_client_config(overrides or None))

    # -- keys -------------------------------------------------------------------------
    def _key(self, key: str | bytes) -> bytes:
        if isinstance(key, str):
            key = key.encode("utf-8")
        elif not isinstance(key, bytes):
            key = bytes(key)
        return self._ns + key if self._ns else key

    def _keys(self, keys: Iterable[str | bytes]) -> list[bytes]:
        return [self._key(k) for k in keys]

    def server_for(self, key: str | bytes) -> str:
        """The node that holds `key` (its configured host:port)."""
        return self.config.servers[self._native.route(self._key(key))]

    # -- single-key ops ---------------------------------------------------------------
    def put(self, key: str | bytes, value: Any) -> None:
        self._native.put(self._key(key), value)

    def get(self, key: str | bytes) -> bytes | None:
        return self._native.get(self._key(key))

    def get_into(self, key: str | bytes, buffer: Any) -> int | None:
        """Reads into `buffer`; returns the value's size, or None on a miss."""
        return self._native.get_into(self._key(key), buffer)

    def exists(self, key: str | bytes) -> bool:
        return self._native.exists(self._key(key)) is not None

    def size(self, key: str | bytes) -> int | None:
        return self._native.exists(self._key(key))

    def stat(self, key: str | bytes) -> dict | None:
        return self._native.stat(self._key(key))

    def remove(self, key: str | bytes) -> bool:
        return self._native.remove(self._key(key))

    def ping(self) -> dict[str, str]:
        """Node id of every configured node (raises if one is unreachable)."""
        return {name: self._native.ping(i) for i, name in enumerate(self.config.servers)}

    # -- RDMA registrations --------------------------------------------------------------
    def register_memory(self, buffer: Any, length: int | None = None) -> bool:
        """Registers a long-lived buffer (a host KV pool, say) with the RDMA
        rails, so every transfer from or to memory inside it is zero-copy
        instead of going through staging. A buffer object is kept alive
        until unregister_memory; memory given as (address, length) must stay
        valid that long. Returns False (and does nothing) over TCP."""
        if isinstance(buffer, int):
            if not length or not buffer:
                raise ValueError("memory given by address needs a non-null address and a length")
            if not self._native.register_memory(buffer, length):
                return False
            self._registered[buffer] = None
            return True
        r = self._native.register_buffer(buffer)
        if r is None:
            return False
        self._registered[r[0]] = r[1]
        return True

    def unregister_memory(self, buffer: Any) -> bool:
        addr = buffer if isinstance(buffer, int) else self._native.buffer_address(buffer)
        if addr not in self._registered:
            return False
        del self._registered[addr]
        return self._native.unregister_memory(addr)

    # -- multi-part writes --------------------------------------------------------------
    def put_part(self, key: str | bytes, upload_id: int, total: int, offset: int, data: Any) -> bool:
        """Writes `data` at `offset` of an object of `total` bytes. The object
        becomes visible when every byte has arrived; returns True for the part
        that completed it."""
        return self._native.put_part(self._key(key), upload_id, total, offset, data)

    def abort_part(self, key: str | bytes, upload_id: int) -> None:
        self._native.abort_part(self._key(key), upload_id)

    # -- batches ------------------------------------------------------------------------
    def batch_put(self, keys: Sequence[str | bytes], values: Sequence[Any]) -> None:
        """Stores every pair; raises BatchError naming the keys that failed."""
        status, errors = self._native.batch_put(self._keys(keys), list(values))
        self._finish_writes("batch_put", keys, status, errors)

    def batch_put_segments(self, keys: Sequence[str | bytes], segments: Sequence[Sequence[tuple]]) -> None:
        """Gather writes: each value is the concatenation of its segments,
        `(offset, target, length)` sorted by offset and tiling [0, total).
        A target is a buffer object (length None = all of it) or a raw
        address that stays valid for the call. Raises BatchError like
        batch_put."""
        status, errors = self._native.batch_put_segments(self._keys(keys), [list(s) for s in segments])
        self._finish_writes("batch_put_segments", keys, status, errors)

    def batch_put_missing(self, keys: Sequence[str | bytes], segments: Sequence[Sequence[tuple]],
                          sizes: Sequence[int]) -> tuple[list[bool], list[bool]]:
        """Stores each value the cluster does not already hold at its size
        (`sizes[i]` bytes): one batched exists, then one gathered batch put
        of the rest, so replicas re-storing shared data send a few bytes,
        not the values. Returns (held, sent) per key: held when the cluster
        has it now, sent when this call wrote it. Failed writes are logged;
        raises only when the cluster could not be asked at all."""
        held = [have == want for have, want in zip(self.batch_sizes(keys, allow_partial=True), sizes)]
        sent = [False] * len(keys)
        todo = [i for i, h in enumerate(held) if not h]
        if not todo:
            return held, sent
        failed: dict = {}
        try:
            self.batch_put_segments([keys[i] for i in todo], [segments[i] for i in todo])
        except BatchError as exc:
            failed = exc.failed
            log.error("%s", exc)
        for i in todo:
            if keys[i] not in failed:
                held[i] = sent[i] = True
        return held, sent

    def batch_get_segments(self, keys: Sequence[str | bytes], segments: Sequence[Sequence[tuple]], *,
                           allow_partial: bool = False) -> list[int | None]:
        """Scatter reads: object bytes [offset, offset + length) of each
        segment land at its target; only the span the segments cover is
        fetched. Returns each object's full size (None on a miss), so a
        caller can tell a short object from a complete read."""
        results, errors = self._native.batch_get_segments(self._keys(keys), [list(s) for s in segments])
        return self._finish_reads(keys, results, errors, allow_partial)

    def _finish_writes(self, op: str, keys, status, errors) -> None:
        failed = {keys[i]: _status_text(s) for i, s in enumerate(status) if s != 0}
        if failed:
            detail = "; ".join(errors) if errors else ", ".join(sorted(set(failed.values())))
            raise BatchError(f"{op}: {len(failed)} of {len(keys)} values not stored ({detail})", failed)

    def batch_get_into(self, keys: Sequence[str | bytes], buffers: Sequence[Any], *,
                       allow_partial: bool = False) -> list[int | None]:
        """Reads each value into its buffer; a size per key, None on a miss.

        A node that cannot be reached raises ConnectionFailed, unless
        allow_partial, where its keys read as misses (and are logged)."""
        results, errors = self._native.batch_get_into(self._keys(keys), list(buffers))
        return self._finish_reads(keys, results, errors, allow_partial)

    def batch_get(self, keys: Sequence[str | bytes], *, allow_partial: bool = False) -> list[bytes | None]:
        sizes = self.batch_sizes(keys, allow_partial=allow_partial)
        bufs = [bytearray(s or 0) for s in sizes]
        got = self.batch_get_into(keys, bufs, allow_partial=allow_partial)
        return [bytes(b[:n]) if n is not None else None for b, n in zip(bufs, got)]

    def batch_sizes(self, keys: Sequence[str | bytes], *, allow_partial: bool = False) -> list[int | None]:
        """Size of each value, None when absent: one batched exists per node."""
        results, errors = self._native.batch_exists(self._keys(keys))
        return self._finish_reads(keys, results, errors, allow_partial)

    def batch_exists(self, keys: Sequence[str | bytes], *, allow_partial: bool = False) -> list[bool]:
        return [s is not None for s in self.batch_sizes(keys, allow_partial=allow_partial)]

    def batch_remove(self, keys: Sequence[str | bytes]) -> list[bool]:
        status, errors = self._native.batch_remove(self._keys(keys))
        if errors:
            raise ConnectionFailed("batch_remove: " + "; ".join(errors))
        return [s == 0 for s in status]

    def _finish_reads(self, keys, results, errors, allow_partial):
        out: list[int | None] = []
        unavailable = 0
        for key, r in zip(keys, results):
            if r >= 0:
                out.append(r)
                continue
            if r == _client.ITEM_CHECKSUM:
                log.warning("value for key %r failed its checksum in transit; treated as a miss", key)
            elif r == _client.ITEM_TOO_SMALL:
                raise MemKVError(f"buffer for key {key!r} is smaller than the stored value")
            elif r == _client.ITEM_UNAVAILABLE:
                unavailable += 1
            elif r == _client.ITEM_ERROR:
                log.warning("node returned an error for key %r; treated as a miss", key)
            out.append(None)
        if errors:
            message = f"{unavailable} of {len(keys)} keys on unreachable nodes: " + "; ".join(errors)
            if not allow_partial:
                raise ConnectionFailed(message)
            log.error("%s (reading them as misses)", message)
        return out

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        self._native.close()
        self._registered.clear()  # the native side deregistered them

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Client", "ChecksumError"]
