"""The stores `memkv bench --peers` measures beside MemKV, each started by
the bench on 127.0.0.1 (free ports) and stopped after it: Redis or Valkey
(the Debian server binary, driven with redis-py), LMCache's `lm://` server
(`python -m lmcache.v1.server`, driven with LMCache's own wire messages) and
Mooncake Store over its TCP transport (`mooncake_master` plus a process
holding the store's memory, driven with Mooncake's Python client). None of
them is a MemKV dependency: a peer that is not installed is reported with
the command that installs it."""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

from .errors import ConfigError
from .ports import free_port

PEERS = ("redis", "lm", "mooncake")
HOW_TO_INSTALL = {
    "redis": "apt-get install redis-server (or valkey-server); pip install redis",
    "lm": "pip install lmcache==0.5.6",
    "mooncake": "pip install mooncake-transfer-engine-non-cuda",
}


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _redis_binary() -> str | None:
    return shutil.which("valkey-server") or shutil.which("redis-server")


def missing(name: str) -> str | None:
    """Why `name` cannot run here (with the fix), or None when it can."""
    if name == "redis":
        ok = _redis_binary() and importlib.util.find_spec("redis")
    elif name == "lm":
        ok = importlib.util.find_spec("lmcache")
    elif name == "mooncake":
        ok = importlib.util.find_spec("mooncake") and _mooncake_master()
    else:
        raise ConfigError(f"--peers: unknown peer {name!r}; choose from {', '.join(PEERS)}, all, auto or none")
    return None if ok else f"not installed ({HOW_TO_INSTALL[name]})"


def parse_peers(text: str, embedded: bool) -> tuple[list[str], dict[str, str]]:
    """--peers: a list, `all`, `auto` (every installed peer, with the embedded
    node only) or `none`. Returns the peers to run and, for the others asked
    for (or known, with auto), why they cannot."""
    text = text.strip().lower()
    if text == "none" or (text == "auto" and not embedded):
        return [], {}
    names = list(PEERS) if text in ("auto", "all") else [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--peers {text!r}: expected a list of {', '.join(PEERS)}, or all, auto or none")
    run, skipped = [], {}
    for n in dict.fromkeys(names):
        why = missing(n)
        if why:
            skipped[n] = why
        else:
            run.append(n)
    return run, skipped


class RedisPeer:
    """A redis-server (or valkey-server) of its own: no persistence, one connection."""

    def __init__(self, max_bytes: int):
        import redis

        binary = _redis_binary()
        port = free_port(span=1)
        self._procs = [subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--protected-mode", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            wait_port(port, self._procs[0], os.path.basename(binary))
            self._r = redis.Redis(host="127.0.0.1", port=port)
            info = self._r.info("server")
        except BaseException:
            _stop(self._procs)
            raise
        server = "Valkey" if "valkey_version" in info else "Redis"
        self.title = f"{server} {info.get('valkey_version') or info.get('redis_version')}"
        self.name = "redis"

    def buffers(self, value: np.ndarray, out: np.ndarray) -> None:
        pass

    def put(self, key: str, value: np.ndarray) -> None:
        self._r.set(key, memoryview(value))

    def flush(self) -> None:  # every SET is acknowledged
        pass

    def get_into(self, key: str, out: np.ndarray) -> int:
        data = self._r.get(key)  # redis-py returns a new bytes object: its copy is part of a get
        if data is None:
            return -1
        out[:len(data)] = np.frombuffer(data, dtype=np.uint8)
        return len(data)

    def remove(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1024):
            self._r.delete(*keys[i:i + 1024])

    def close(self) -> None:
        try:
            self._r.close()
        finally:
            _stop(self._procs)


class LMServerPeer:
    """LMCache's `lm://` server (python -m lmcache.v1.server HOST PORT cpu),
    spoken to with LMCache's own protocol messages, as its lm:// connector
    does. A PUT is not acknowledged: flush() waits for a HEALTH reply, which
    the server sends only after the puts before it."""

    def __init__(self, max_bytes: int):
        import torch
        from lmcache.utils import CacheEngineKey
        from lmcache.v1.memory_management import MemoryFormat
        from lmcache.v1.protocol import ClientCommand, ClientMetaMessage, ServerMetaMessage, ServerReturnCode

        self._key_type, self._fmt, self._u8 = CacheEngineKey, MemoryFormat.BINARY, torch.uint8
        self._cmd, self._msg, self._reply, self._ok = ClientCommand, ClientMetaMessage, ServerMetaMessage, \
            ServerReturnCode.SUCCESS
        port = free_port(span=1)
        env = dict(os.environ, LMCACHE_TRACK_USAGE="false")
        self._procs = [subprocess.Popen([sys.executable, "-m", "lmcache.v1.server", "127.0.0.1", str(port), "cpu"],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            wait_port(port, self._procs[0], "LMCache's lm:// server", timeout=120)
            self._sock = socket.create_connection(("127.0.0.1", port))
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            _stop(self._procs)
            raise
        from importlib.metadata import version
        self.title = f"LMCache {version('lmcache')} lm:// server"
        self.name = "lm"
        self._hashes: dict[str, int] = {}

    def _meta(self, command, key: str, length: int) -> bytes:
        h = self._hashes.setdefault(key, len(self._hashes) + 1)
        k = self._key_type("memkv-bench", 1, 0, h, self._u8)
        return self._msg(command, k, length, self._fmt, self._u8, (length, 0, 0, 0)).serialize()

    def _recv_exact(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if not n:
                raise RuntimeError("LMCache's lm:// server closed the connection")
            got += n

    def _reply_meta(self):
        buf = bytearray(self._reply.packlength())
        self._recv_exact(memoryview(buf))
        return self._reply.deserialize(bytes(buf))

    def buffers(self, value: np.ndarray, out: np.ndarray) -> None:
        pass

    def put(self, key: str, value: np.ndarray) -> None:
        self._sock.sendall(self._meta(self._cmd.PUT, key, value.nbytes))
        self._sock.sendall(memoryview(value))

    def flush(self) -> None:
        self._sock.sendall(self._meta(self._cmd.HEALTH, "health", 0))
        if self._reply_meta().code != self._ok:
            raise RuntimeError("LMCache's lm:// server failed its health check")

    def get_into(self, key: str, out: np.ndarray) -> int:
        self._sock.sendall(self._meta(self._cmd.GET, key, 0))
        meta = self._reply_meta()
        if meta.code != self._ok:
            return -1
        self._recv_exact(memoryview(out)[:meta.length])
        return meta.length

    def remove(self, keys: list[str]) -> None:
        pass  # the lm:// protocol has no delete; stopping the server frees everything

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            _stop(self._procs)


def _mooncake_master() -> str | None:
    spec = importlib.util.find_spec("mooncake")
    for d in (spec.submodule_search_locations or []) if spec else []:
        p = os.path.join(d, "mooncake_master")
        if os.access(p, os.X_OK):
            return p
    return None


_MOONCAKE_HOLDER = """
import sys, time
import mooncake.store as ms
store = ms.MooncakeDistributedStore()
rc = store.setup("127.0.0.1", sys.argv[1], int(sys.argv[2]), 16 << 20, "tcp", "", sys.argv[3])
print("ready" if rc == 0 else f"setup failed: {rc}", flush=True)
sys.stdin.read()  # until the bench closes our stdin
store.close()
"""


class MooncakePeer:
    """Mooncake Store on its TCP transport: a master (with its HTTP metadata
    server) and one process contributing the store's memory; this client
    contributes none, so every put and get crosses a socket, as with the
    other stores. Mooncake's transfer engine picks a non-loopback interface
    and listens on all of them (it has no option to bind loopback only, and
    does not start where lo is the only interface)."""

    def __init__(self, max_bytes: int):
        import mooncake.store as ms

        rpc, meta, metrics = free_port(span=1), free_port(span=1), free_port(span=1)
        master = _mooncake_master()
        self._procs = [subprocess.Popen(
            [master, f"--rpc_port={rpc}", "--rpc_address=127.0.0.1", "--enable_http_metadata_server=true",
             "--http_metadata_server_host=127.0.0.1", f"--http_metadata_server_port={meta}",
             "--metrics_host=127.0.0.1", f"--metrics_port={metrics}",  # else a fixed :9003 on every interface
             "--default_kv_lease_ttl=1000"],  # ms a key stays leased after a get (default 5 s)
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        meta_url, master_addr = f"http://127.0.0.1:{meta}/metadata", f"127.0.0.1:{rpc}"
        try:
            wait_port(rpc, self._procs[0], "mooncake_master")
            segment = max(256 << 20, max_bytes + max_bytes // 4)
            holder = subprocess.Popen([sys.executable, "-c", _MOONCAKE_HOLDER, meta_url, str(segment), master_addr],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True)
            self._procs.append(holder)
            ready, _, _ = select.select([holder.stdout], [], [], 120)
            line = holder.stdout.readline().strip() if ready else "no answer within 120 s"
            if line != "ready":
                raise RuntimeError(f"Mooncake's store process did not start: {line or 'it exited'}")
            self._store = ms.MooncakeDistributedStore()
            rc = self._store.setup("127.0.0.1", meta_url, 0, 64 << 20, "tcp", "", master_addr)
            if rc != 0:
                raise RuntimeError(f"Mooncake client setup failed: {rc}")
        except BaseException:
            self._close_procs()
            raise
        from importlib.metadata import version
        self.title = f"Mooncake Store {version('mooncake-transfer-engine-non-cuda')} (TCP)"
        self.name = "mooncake"
        self._registered: list[int] = []

    def buffers(self, value: np.ndarray, out: np.ndarray) -> None:
        """Registers the bench's two buffers (puts and gets use slices of them)."""
        for a in (value, out):
            if self._store.register_buffer(a.ctypes.data, a.nbytes) != 0:
                raise RuntimeError("Mooncake could not register a buffer")
            self._registered.append(a.ctypes.data)

    def put(self, key: str, value: np.ndarray) -> None:
        rc = self._store.put_from(key, value.ctypes.data, value.nbytes)
        if rc != 0:
            raise RuntimeError(f"Mooncake put of {value.nbytes} bytes failed: {rc}")

    def flush(self) -> None:  # every put_from returns once stored
        pass

    def get_into(self, key: str, out: np.ndarray) -> int:
        return self._store.get_into(key, out.ctypes.data, out.nbytes)

    def remove(self, keys: list[str]) -> None:
        deadline = time.monotonic() + 5
        while keys and time.monotonic() < deadline:  # a key read moments ago is leased for a few ms
            keys = [k for k, rc in zip(keys, self._store.batch_remove(keys)) if rc != 0]
            if keys:
                time.sleep(0.05)

    def _close_procs(self) -> None:
        if len(self._procs) > 1 and self._procs[1].stdin:
            self._procs[1].stdin.close()  # the holder closes its store and exits
            try:
                self._procs[1].wait(10)
            except subprocess.TimeoutExpired:
                pass
        _stop(self._procs)

    def close(self) -> None:
        try:
            for addr in self._registered:
                self._store.unregister_buffer(addr)
            self._store.close()
        finally:
            self._close_procs()


def quiet_logs() -> None:
    """Mooncake and LMCache log INFO lines to stderr, through the bench's
    tables: errors and warnings only, unless the user set a level. Before
    either is imported (LMCache's own imports can load Mooncake)."""
    os.environ.setdefault("MC_LOG_LEVEL", "ERROR")
    os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")


def start_peer(name: str, max_bytes: int):
    """Starts peer `name` able to hold `max_bytes` of values at once."""
    return {"redis": RedisPeer, "lm": LMServerPeer, "mooncake": MooncakePeer}[name](max_bytes)
