"""The node's HTTP admin port: /v1/health, /v1/status (JSON) and /metrics
(Prometheus text via prometheus-client, read from the native counters at
scrape time).

Who may read /v1/status (`admin_auth`): health checks and Prometheus need no
credentials, so /v1/health and /metrics are open. /v1/status names tenants
and their usage, so in the default mode `local` a request from another host
must carry the cluster key, or a tenant's key (which shows that tenant only),
as `Authorization: Bearer <64 hex>`; requests from the node's own host
(loopback) need none. `key` asks every request for a key, `none` asks none."""

from __future__ import annotations

import hmac
import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CollectorRegistry, generate_latest, CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _NodeCollector:
    def __init__(self, status: Callable[[], dict]):
        self._status = status

    def collect(self):
        s = self._status()
        g = GaugeMetricFamily
        c = CounterMetricFamily
        yield g("memkv_up", "1 while the node serves", value=1 if s["serving"] else 0)
        yield g("memkv_uptime_seconds", "Seconds since the node started", value=s["uptime_s"])
        yield g("memkv_keys", "Objects stored", value=s["keys"])
        used = g("memkv_bytes_used", "Bytes used per tier", labels=["tier"])
        cap = g("memkv_capacity_bytes", "Configured capacity per tier", labels=["tier"])
        for tier in ("dram", "disk"):
            used.add_metric([tier], s["tiers"][tier]["bytes_used"])
            cap.add_metric([tier], s["tiers"][tier]["capacity_bytes"])
        yield used
        yield cap
        yield g("memkv_dirty_bytes", "Acknowledged bytes not yet written to shards", value=s["dirty_bytes"])
        ops = c("memkv_ops", "Operations served", labels=["op"])
        errs = c("memkv_op_errors", "Operations answered with an error status", labels=["op"])
        for op, n in s["ops"].items():
            ops.add_metric([op], n)
            errs.add_metric([op], s["op_errors"][op])
        yield ops
        yield errs
        yield c("memkv_bytes_received", "Value bytes received", value=s["bytes_in"])
        yield c("memkv_bytes_sent", "Value bytes sent", value=s["bytes_out"])
        yield c("memkv_hits", "Reads that found their object", value=s["hits"])
        yield c("memkv_misses", "Reads that found nothing", value=s["misses"])
        ev = c("memkv_evictions", "Objects evicted per tier", labels=["tier"])
        ev.add_metric(["dram"], s["evictions"]["dram"])
        ev.add_metric(["disk"], s["evictions"]["disk"])
        yield ev
        yield c("memkv_evictions_dropped", "Objects forgotten by an eviction (no copy left on any tier)",
                value=s["evictions"]["dropped"])
        yield g("memkv_connections", "Open client connections", value=s["connections"])
        yield c("memkv_rejected_connections", "Connections refused at the connection limit (--max-connections)",
                value=s["rejected_connections"])
        yield c("memkv_stalled_connections", "Connections dropped for a partial message that stopped arriving",
                value=s["stalled_connections"])
        yield g("memkv_worker_threads", "Threads serving the data port", value=s["worker_threads"])
        yield c("memkv_auth_failures", "Connections rejected by authentication", value=s["auth_failures"])
        yield c("memkv_protocol_errors", "Connections closed for a protocol violation", value=s["protocol_errors"])
        yield c("memkv_checksum_failures", "Values rejected for a checksum mismatch in transit",
                value=s["checksum_failures"])
        yield c("memkv_corrupt_records", "Shard records that failed verification (served as misses)",
                value=s["corrupt_records"])
        yield c("memkv_flush_errors", "Shard writes that failed", value=s["flush_errors"])
        yield c("memkv_rdma_connections", "Connections that set up an RDMA queue pair",
                value=s["rdma"]["connections_total"])
        rdma = c("memkv_rdma_bytes", "Value bytes moved by RDMA (in: READ from clients, out: WRITE to clients)",
                 labels=["direction"])
        rdma.add_metric(["in"], s["rdma"]["bytes_in"])
        rdma.add_metric(["out"], s["rdma"]["bytes_out"])
        yield rdma
        yield c("memkv_rdma_node_checksummed_values",
                "GPUDirect puts from GPU memory, checksummed by the node as they landed",
                value=s["rdma"]["node_checksummed_values"])
        s3 = s["s3"]
        if s3["port"] is not None:  # a node without the S3 door has no such series
            yield c("memkv_s3_requests", "Requests the S3 door answered", value=s3["requests"])
            yield c("memkv_s3_errors", "S3 requests answered with an error response", value=s3["errors"])
            s3b = c("memkv_s3_bytes", "Object bytes through the S3 door", labels=["direction"])
            s3b.add_metric(["in"], s3["bytes_in"])
            s3b.add_metric(["out"], s3["bytes_out"])
            yield s3b
            yield c("memkv_s3_connections", "Connections the S3 door accepted", value=s3["connections_total"])
        yield from _tenant_metrics(s.get("tenants") or {})


def _tenant_metrics(tenants: dict):
    g, c = GaugeMetricFamily, CounterMetricFamily
    ops = c("memkv_tenant_ops", "Operations served per tenant", labels=["tenant"])
    rx = c("memkv_tenant_bytes_received", "Value bytes received per tenant", labels=["tenant"])
    tx = c("memkv_tenant_bytes_sent", "Value bytes sent per tenant", labels=["tenant"])
    hits = c("memkv_tenant_hits", "Reads that found their object, per tenant", labels=["tenant"])
    misses = c("memkv_tenant_misses", "Reads that found nothing, per tenant", labels=["tenant"])
    refused = c("memkv_tenant_over_quota", "Values refused as larger than the tenant's quota", labels=["tenant"])
    keys = g("memkv_tenant_keys", "Objects stored per tenant", labels=["tenant"])
    used = g("memkv_tenant_bytes_used", "Bytes a tenant holds per tier", labels=["tenant", "tier"])
    quota = g("memkv_tenant_quota_bytes", "A tenant's quota per tier (0: no limit)", labels=["tenant", "tier"])
    ev = c("memkv_tenant_evictions", "Objects of a tenant evicted per tier", labels=["tenant", "tier"])
    for name, t in sorted(tenants.items()):
        ops.add_metric([name], t["ops"])
        rx.add_metric([name], t["bytes_in"])
        tx.add_metric([name], t["bytes_out"])
        hits.add_metric([name], t["hits"])
        misses.add_metric([name], t["misses"])
        refused.add_metric([name], t["over_quota"])
        keys.add_metric([name], t.get("keys", 0))
        for tier in ("dram", "disk"):
            used.add_metric([name, tier], t.get(f"{tier}_bytes_used", 0))
            quota.add_metric([name, tier], t.get(f"{tier}_quota_bytes", 0))
            ev.add_metric([name, tier], t.get(f"evictions_{tier}", 0))
    yield from (ops, rx, tx, hits, misses, refused, keys, used, quota, ev)


class AdminAccess:
    """Decides what a /v1/status request may see (see the module docstring)."""

    def __init__(self, mode: str, cluster_key: bytes, tenant_keys: Callable[[], dict[str, bytes]]):
        self.mode = mode
        self._cluster_key = cluster_key
        self._tenant_keys = tenant_keys

    def scope(self, client_ip: str, authorization: str | None) -> tuple[str | None, str]:
        """("node", "") for the whole status, (tenant name, "") for one
        tenant's, or (None, why) when the request is refused."""
        token = None
        if authorization:
            kind, _, value = authorization.partition(" ")
            if kind.lower() == "bearer":
                token = value.strip()
        if token is not None:
            try:
                key = bytes.fromhex(token)
            except ValueError:
                key = b""
            if hmac.compare_digest(key, self._cluster_key):
                return "node", ""
            for name, tkey in self._tenant_keys().items():
                if hmac.compare_digest(key, tkey):
                    return name, ""
            return None, "the bearer token is neither the cluster auth key nor a tenant's key"
        if self.mode == "none" or (self.mode == "local" and _is_loopback(client_ip)):
            return "node", ""
        return None, ("/v1/status needs a key: send `Authorization: Bearer <MEMKV_AUTH_KEY>` (the cluster key, or a "
                      "tenant's key for that tenant's figures; `memkv status` sends MEMKV_AUTH_KEY), or start the "
                      "node with --admin-auth none to open it")


def _is_loopback(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if a.version == 6 and a.ipv4_mapped:
        a = a.ipv4_mapped
    return a.is_loopback


def _tenant_view(doc: dict, tenant: str) -> dict:
    """The status a tenant's key may read: the node's figures, its own tenant entry only."""
    out = dict(doc)
    out["tenants"] = {k: v for k, v in (doc.get("tenants") or {}).items() if k == tenant}
    return out


class AdminServer:
    """Serves the admin endpoints on a background thread."""

    def __init__(self, host: str, port: int, status: Callable[[], dict], healthy: Callable[[], bool],
                 access: AdminAccess):
        registry = CollectorRegistry()
        registry.register(_NodeCollector(status))

        class Handler(BaseHTTPRequestHandler):
            server_version = "memkv-admin"
            # http.server's default, HTTP/0.9, answers a malformed request
            # line with a bare HTML body and no status line (found by
            # fuzz/python/fuzz_admin.py): every reply gets one instead.
            default_request_version = "HTTP/1.0"

            def do_GET(self):  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0]
                if path == "/v1/health":
                    ok = healthy()
                    self._send(200 if ok else 503, "application/json",
                               json.dumps({"status": "ok" if ok else "stopping"}).encode())
                elif path == "/v1/status":
                    scope, why = access.scope(self.client_address[0], self.headers.get("Authorization"))
                    if scope is None:
                        self._send(401, "application/json", json.dumps({"error": why}).encode(),
                                   {"WWW-Authenticate": 'Bearer realm="memkv-admin"'})
                        return
                    doc = status()
                    self._send(200, "application/json",
                               json.dumps(doc if scope == "node" else _tenant_view(doc, scope), indent=2).encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                else:
                    self._send(404, "application/json",
                               json.dumps({"error": "not found", "endpoints": ["/v1/health", "/v1/status",
                                                                             "/metrics"]}).encode())

            def _send(self, code: int, ctype: str, body: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # scrapes are not worth a log line each
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="memkv-admin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
