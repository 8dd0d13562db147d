"""Atheris target: the node's admin HTTP port (nixl_memkv/admin.py). The
request line and headers are parsed by the standard library's http.server;
what is ours is the path routing and the status/metrics rendering, so the
fuzzer's bytes are served as one connection by the real handler class of a
real AdminServer (bound to 127.0.0.1, never started), with a node status
of the shape the node reports. Every request must be answered with an
HTTP/1.x status line (or the connection closed), never an exception.

Run through scripts/fuzz.sh (libFuzzer flags pass through)."""

import importlib.util
import pathlib
import socket
import sys

import atheris


def _load(name: str, relpath: str):
    """The module from this checkout, by path: it needs no native build."""
    path = pathlib.Path(__file__).resolve().parents[2] / relpath
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Coverage of the request parsing (http.server) and the rendering
# (prometheus_client) as they are imported, and of admin.py's functions,
# the handler class nested in AdminServer.__init__ included.
with atheris.instrument_imports(include=["http.server", "prometheus_client"]):
    import http.server  # noqa: F401
    import prometheus_client  # noqa: F401
_admin = _load("memkv_fuzzed_admin", "nixl_memkv/admin.py")
for _f in (_admin.AdminServer.__init__, _admin._NodeCollector.collect, _admin._tenant_metrics,
           _admin.AdminAccess.scope, _admin._tenant_view):
    atheris.instrument_func(_f)
AdminServer = _admin.AdminServer

_TENANT = {"ops": 3, "bytes_in": 10, "bytes_out": 20, "hits": 1, "misses": 2, "over_quota": 0, "keys": 1,
           "dram_bytes_used": 5, "disk_bytes_used": 0, "dram_quota_bytes": 0, "disk_quota_bytes": 0,
           "evictions_dram": 0, "evictions_disk": 0}
_STATUS = {
    "serving": True, "uptime_s": 12.5, "keys": 2, "dirty_bytes": 0,
    "tiers": {"dram": {"bytes_used": 100, "capacity_bytes": 1 << 30},
              "disk": {"bytes_used": 0, "capacity_bytes": 0}},
    "ops": {"put": 4, "get": 5}, "op_errors": {"put": 0, "get": 1},
    "bytes_in": 1, "bytes_out": 2, "hits": 3, "misses": 4,
    "evictions": {"dram": 0, "disk": 0, "dropped": 0}, "connections": 1, "auth_failures": 0, "protocol_errors": 0,
    "rejected_connections": 0, "stalled_connections": 0, "worker_threads": 2,
    "checksum_failures": 0, "corrupt_records": 0, "flush_errors": 0,
    "rdma": {"connections_total": 0, "bytes_in": 0, "bytes_out": 0, "node_checksummed_values": 0},
    "s3": {"port": 9902, "requests": 3, "errors": 1, "bytes_in": 10, "bytes_out": 20, "connections_total": 1},
    "tenants": {"team-a": _TENANT},
}

# The default access mode; requests come from loopback, so /v1/status is
# served, and any bearer token an input sends is checked against these keys.
_access = _admin.AdminAccess("local", b"\x11" * 32, lambda: {"team-a": b"\x22" * 32})
_server = AdminServer("127.0.0.1", 0, lambda: _STATUS, lambda: True, _access)
_httpd = _server._httpd  # the real ThreadingHTTPServer and its handler class


def _asks_for_http09(data: bytes) -> bool:
    """A request line naming HTTP/0.9 is answered in kind (no status line),
    as http.server does; its version parse, as http.server reads it."""
    words = data.split(b"\n", 1)[0].decode("latin-1").rstrip("\r\n").split()
    if len(words) < 3 or not words[-1].startswith("HTTP/"):
        return False
    parts = words[-1][5:].split(".")
    return len(parts) == 2 and all(p.isdigit() for p in parts) and (int(parts[0]), int(parts[1])) == (0, 9)


def test_one_input(data: bytes) -> None:
    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(data[:60000])
        theirs.shutdown(socket.SHUT_WR)
        ours.settimeout(2)
        _httpd.finish_request(ours, ("127.0.0.1", 1))
        ours.shutdown(socket.SHUT_WR)
        reply = b""
        theirs.settimeout(2)
        while chunk := theirs.recv(65536):
            reply += chunk
    finally:
        ours.close()
        theirs.close()
    if reply and not reply.startswith(b"HTTP/1.") and not _asks_for_http09(data):
        raise AssertionError(f"admin reply does not start with a status line: {reply[:60]!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
