"""A MemKV node: the native data port and store, the admin HTTP port, the
data-dir lock and node identity, and graceful shutdown. `memkv server` runs
one in the foreground; `memkv demo` and `memkv bench` embed one."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import signal
import threading
import time
import uuid

from . import __version__
from ._node import NativeNode, install_native_logging
from .config import NodeConfig, dram_capacity_warning, format_size, resolve_disk_capacity
from .errors import ConfigError, MemKVError
from .tenants import load_tenants, native_specs

log = logging.getLogger("memkv")


# Descriptors beyond the client connections: shards, the admin port, the S3
# door, logs, RDMA devices.
_SPARE_FDS = 512


def _raise_fd_limit(max_connections: int) -> None:
    """Every connection is a descriptor: lift the soft limit as far as the hard
    one allows, and say so when --max-connections cannot be reached."""
    import resource

    need = max_connections + _SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning("--max-connections %d needs about %d file descriptors, but this process may open only %d "
                    "(`ulimit -n`; LimitNOFILE= under systemd): clients past about %d connections will be refused",
                    max_connections, need, soft, max(0, soft - _SPARE_FDS))


class MemKVNode:
    def __init__(self, cfg: NodeConfig, *, admin: bool = True):
        self.cfg = cfg
        # A node that fails to start removes the data dir it made (and only that).
        self._made_data_dir = _first_missing_dir(cfg.data_dir)
        os.makedirs(cfg.data_dir, exist_ok=True)
        self._lock_fd = os.open(os.path.join(cfg.data_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ConfigError(f"data dir {cfg.data_dir} is in use by another MemKV node; give each node its own "
                              "--data-dir") from None
        try:
            self._open(cfg, admin)
        except BaseException:
            self._abandon()
            raise

    def _open(self, cfg: NodeConfig, admin: bool) -> None:
        self.node_id = cfg.node_id or self._persistent_id()
        self.disk_capacity = resolve_disk_capacity(cfg)
        self._native = NativeNode(
            host=cfg.host, port=cfg.port, auth_key=cfg.auth_key,
            node_id=hashlib.sha256(self.node_id.encode()).digest()[:16], data_dir=cfg.data_dir,
            dram_capacity=cfg.dram_capacity, disk_capacity=self.disk_capacity, fsync=cfg.fsync,
            fsync_interval_ms=cfg.fsync_interval_ms, max_connections=cfg.max_connections,
            io_timeout_ms=cfg.io_timeout_ms,
            rdma_devices=list(cfg.rdma_devices), s3_port=-1 if cfg.s3_port is None else cfg.s3_port)
        self.tenants: dict = {}
        if cfg.tenants:
            self._install_tenants(load_tenants(cfg.tenants))
        self._admin_enabled = admin
        self.admin = None
        self.started_at = 0.0
        self._serving = False
        self._stop_lock = threading.Lock()
        self._stopped = False

    def _abandon(self) -> None:
        """After a failed start: drop the native node, release the lock and
        remove the data dir if this start created it."""
        self._native = None  # its destructor closes the shard files
        self._stopped = True  # a later stop() has nothing to do
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        if self._made_data_dir:
            shutil.rmtree(self._made_data_dir, ignore_errors=True)

    def _persistent_id(self) -> str:
        path = os.path.join(self.cfg.data_dir, "node_id")
        try:
            with open(path) as f:
                node_id = f.read().strip()
            if node_id:
                return node_id
        except FileNotFoundError:
            pass
        node_id = uuid.uuid4().hex
        with open(path + ".tmp", "w") as f:
            f.write(node_id + "\n")
        os.replace(path + ".tmp", path)
        return node_id

    def _install_tenants(self, tenants: dict) -> tuple[list[str], list[str]]:
        added, revoked = self._native.set_tenants(native_specs(tenants))
        self.tenants = tenants
        return added, revoked

    def reload_tenants(self) -> bool:
        """Re-reads the tenants file (SIGHUP). A file that fails to load leaves
        the current tenants in place, and says why."""
        if not self.cfg.tenants:
            log.warning("SIGHUP: no tenants file to reload (start the node with --tenants FILE)")
            return False
        try:
            added, revoked = self._install_tenants(load_tenants(self.cfg.tenants))
        except MemKVError as e:
            log.error("tenants not reloaded, keeping the %d loaded before: %s", len(self.tenants), e)
            return False
        log.info("tenants reloaded from %s: %d tenants (added: %s; revoked: %s)", self.cfg.tenants,
                 len(self.tenants), ", ".join(added) or "none", ", ".join(revoked) or "none")
        return True

    @property
    def port(self) -> int:
        return self._native.port

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "") else self.cfg.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> "MemKVNode":
        install_native_logging()
        _raise_fd_limit(self.cfg.max_connections)
        warning = dram_capacity_warning(self.cfg)
        if warning:
            log.warning("%s", warning)
        try:
            self._native.start()
        except BaseException:
            self._abandon()
            raise
        self.started_at = time.time()
        if self._admin_enabled:
            from .admin import AdminAccess, AdminServer
            # An ephemeral data port (0, tests and embedded nodes) gets an ephemeral admin port.
            admin_port = self.cfg.admin_port if self.cfg.admin_port is not None else (
                0 if self.cfg.port == 0 else self.cfg.effective_admin_port)
            access = AdminAccess(self.cfg.admin_auth, self.cfg.auth_key,
                                 lambda: {name: t.auth_key for name, t in self.tenants.items()})
            self.admin = AdminServer(self.cfg.host, admin_port, self.status, lambda: self._serving, access)
            try:
                self.admin.start()
            except BaseException:
                self._native.stop()
                self._abandon()
                raise
        self._serving = True
        log.info("index loaded from shards in %d ms (O_DIRECT %s)", self._native.startup_ms,
                 "on" if self._native.direct_io else "off")
        log.info("MemKV node ready node_id=%s version=%s data=%s:%d admin=%s dram=%s disk=%s fsync=%s",
                 self.node_id, __version__, self.cfg.host, self.port,
                 f"{self.cfg.host}:{self.admin.port}" if self.admin else "off", format_size(self.cfg.dram_capacity),
                 format_size(self.disk_capacity), self.cfg.fsync)
        if self.cfg.tenants:
            log.info("tenants from %s: %s", self.cfg.tenants, ", ".join(sorted(self.tenants)) or "none yet")
        if self._native.s3_port is not None:
            log.info("S3 door on %s:%d (path-style, SigV4 with tenants' S3 keys)", self.cfg.host, self._native.s3_port)
            if not self.cfg.tenants:
                log.warning("the S3 door has no tenants to serve: start the node with --tenants FILE")
        return self

    def stop(self) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._serving = False
        log.info("MemKV node stopping: finishing in-flight ops and flushing to shards")
        self._native.stop()
        if self.admin:
            self.admin.stop()
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        log.info("MemKV node stopped cleanly")

    def stats(self) -> dict:
        return self._native.stats()

    def status(self) -> dict:
        s = self._native.stats()
        return {
            "node_id": self.node_id,
            "version": __version__,
            "serving": self._serving,
            "address": self.address,
            "uptime_s": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
            "keys": s["keys"],
            "bytes_used": s["dram_bytes_used"] + s["disk_bytes_used"],
            "capacity_bytes": s["dram_capacity_bytes"] + s["disk_capacity_bytes"],
            "tiers": {
                "dram": {"keys": s["dram_keys"], "bytes_used": s["dram_bytes_used"],
                         "capacity_bytes": s["dram_capacity_bytes"], "arena_bytes": s["arena_bytes"],
                         "arena_prefaulted_bytes": s["arena_prefaulted_bytes"]},
                "disk": {"keys": s["disk_keys"], "bytes_used": s["disk_bytes_used"],
                         "capacity_bytes": s["disk_capacity_bytes"]},
            },
            "dirty_bytes": s["dirty_bytes"],
            "max_value_bytes": self._native.max_value_bytes,
            "fsync": self.cfg.fsync,
            "ops": s["ops"],
            "op_errors": s["op_errors"],
            "bytes_in": s["bytes_in"], "bytes_out": s["bytes_out"], "hits": s["hits"], "misses": s["misses"],
            "evictions": {"dram": s["evictions_dram"], "disk": s["evictions_disk"],
                          "dropped": s["evictions_dropped"]},
            "connections": s["connections"], "connections_total": s["connections_total"],
            "rejected_connections": s["rejected_connections"], "stalled_connections": s["stalled_connections"],
            "worker_threads": s["worker_threads"],
            "auth_failures": s["auth_failures"], "protocol_errors": s["protocol_errors"],
            "checksum_failures": s["checksum_failures"], "corrupt_records": s["corrupt_records"],
            "flush_errors": s["flush_errors"],
            "rdma": {"devices": list(self.cfg.rdma_devices), "connections_total": s["rdma_connections"],
                     "bytes_in": s["rdma_bytes_in"], "bytes_out": s["rdma_bytes_out"],
                     "node_checksummed_values": s["rdma_node_checksummed"]},
            "s3": {"port": self._native.s3_port, "requests": s["s3_requests"], "errors": s["s3_errors"],
                   "bytes_in": s["s3_bytes_in"], "bytes_out": s["s3_bytes_out"],
                   "connections_total": s["s3_connections_total"]},
            # Every tenant this node has served or lists; "active": in the current file.
            "tenants": self._native.tenant_stats() if self.cfg.tenants else {},
        }

    def __enter__(self) -> "MemKVNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _first_missing_dir(path: str) -> str | None:
    """The outermost directory of `path` that does not exist yet (what
    makedirs would create), or None."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def run_node(cfg: NodeConfig) -> int:
    """Runs a node in the foreground until SIGTERM or SIGINT; SIGHUP reloads its tenants."""
    node = MemKVNode(cfg)
    done = threading.Event()
    reload = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload.set())
    node.start()
    try:
        while not done.wait(0.2):
            if reload.is_set():  # reloaded here, not in the handler: it loads YAML and takes locks
                reload.clear()
                node.reload_tenants()
    finally:
        node.stop()
    return 0
