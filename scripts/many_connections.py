#!/usr/bin/env python3
"""Many connections: a node holding thousands of idle and slow clients must
keep serving the active ones quickly, in bounded memory and threads.

Starts a node on 127.0.0.1, times an active client's small ops (a 100-byte put
of a new key and its get), then opens --connections connections of five kinds
and times the same ops again while they are all held:

  idle          authenticated sessions that send nothing (pooled clients at rest)
  silent        TCP connections that never start the handshake
  half-hello    clients that send part of their handshake message, then stall
  half-frame    authenticated sessions that send part of a frame header, then stall
  slow-upload   authenticated sessions that send a put's header and part of its
                1 MiB value, then stall (each holds a worker thread)

It then waits --io-timeout-ms and checks that every stalled kind was dropped
while the idle sessions stayed and still answer. Prints a table and a summary
line (--json: the figures as JSON). The limit is 10 ms per small op at p99.

    python3 scripts/many_connections.py                 # 10,000 connections
    python3 scripts/many_connections.py --connections 2000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from node_harness import NodeProc  # noqa: E402

from nixl_memkv import Client  # noqa: E402
from nixl_memkv._client import _RawSession  # noqa: E402
from nixl_memkv.auth import generate_auth_key  # noqa: E402

LIMIT_MS = 10.0
PING, PUT = 0x06, 0x01
# Opened in this order: the ones with a deadline last, so that all are held together.
SHARES = {"idle": 0.5, "slow-upload": 0.02, "half-frame": 0.18, "half-hello": 0.15, "silent": 0.15}


def proc_figures(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    return {"rss_kib": out["VmRSS"], "threads": out["Threads"]}


def time_small_ops(client: Client, n: int, tag: str) -> dict:
    """Latency of n put+get pairs of new 100-byte keys, in ms per op."""
    lat = []
    value = b"v" * 100
    for i in range(n):
        key = f"lat/{tag}/{i}"
        t = time.perf_counter()
        client.put(key, value)
        t2 = time.perf_counter()
        got = client.get(key)
        t3 = time.perf_counter()
        if got != value:
            raise AssertionError(f"{key}: read back {got!r:.40}")
        lat += [(t2 - t) * 1e3, (t3 - t2) * 1e3]
    lat.sort()
    return {"ops": len(lat), "p50_ms": statistics.median(lat), "p99_ms": lat[int(len(lat) * 0.99) - 1],
            "max_ms": lat[-1]}


def put_head(session: _RawSession, size: int) -> bytes:
    meta = struct.pack("<H", 4) + b"slow" + struct.pack("<QI", size, 0)
    return session.encode_sealed(PUT, meta, [b"\0" * size])


class Crowd:
    """The held connections, by kind."""

    def __init__(self, host: str, port: int, key: bytes):
        self.host, self.port, self.key = host, port, key
        self.sockets: list[socket.socket] = []
        self.sessions: dict[str, list[_RawSession]] = {"idle": [], "half-frame": [], "slow-upload": []}

    def open(self, kind: str, n: int) -> None:
        for _ in range(n):
            if kind in ("silent", "half-hello"):
                s = socket.create_connection((self.host, self.port), timeout=10)
                if kind == "half-hello":
                    s.sendall(b"MKVH" + b"\1\0\1\0" + b"\0" * 12)  # 20 of its 64 bytes
                self.sockets.append(s)
                continue
            r = _RawSession(self.host, self.port, self.key, 10000)
            if kind == "half-frame":
                r.send_raw(r.encode(PING, b"")[:40])
            elif kind == "slow-upload":
                r.send_raw(put_head(r, 1 << 20)[:300_000])
            self.sessions[kind].append(r)

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()
        for v in self.sessions.values():
            v.clear()


def run(args) -> dict:
    need = args.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"--connections {args.connections} needs {need} file descriptors; `ulimit -Hn` is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    counts = {k: int(args.connections * share) for k, share in SHARES.items()}
    counts["idle"] += args.connections - sum(counts.values())
    key_hex = generate_auth_key()
    with tempfile.TemporaryDirectory(prefix="memkv-conns-") as tmp:
        node = NodeProc(os.path.join(tmp, "data"), key_hex, "--dram-capacity", "256MiB", "--disk-capacity", "0",
                        "--max-connections", str(args.connections + 100), "--io-timeout-ms", str(args.io_timeout_ms))
        crowd = Crowd(node.host, node.port, bytes.fromhex(key_hex))
        client = None
        try:
            node.start()
            client = Client(servers=[node.address], auth_key=key_hex, transport="tcp", op_timeout_ms=10000)
            time_small_ops(client, 50, "warm")
            before = {**proc_figures(node.proc.pid), **time_small_ops(client, args.ops, "before")}
            t = time.monotonic()
            for kind, n in counts.items():
                crowd.open(kind, n)
            open_s = time.monotonic() - t
            time.sleep(0.5)  # the node has read what the crowd sent
            st = node.status()
            held = {**proc_figures(node.proc.pid), **time_small_ops(client, args.ops, "held"),
                    "connections": st["connections"], "worker_threads": st["worker_threads"]}
            # Past the I/O timeout every stalled kind is dropped; the idle stay.
            # (A slow upload that moved some bytes in its last wait gets a second one.)
            time.sleep(2 * args.io_timeout_ms / 1000 + 2.5)
            st = node.status()
            sample = crowd.sessions["idle"][:: max(1, counts["idle"] // 200)]
            answered = 0
            for r in sample:
                r.send_raw(r.encode(PING, b""))
                answered += r.recv_status() == 0
            after = {"connections": st["connections"], "stalled_connections": st["stalled_connections"],
                     "idle_pinged": answered, "idle_sampled": len(sample),
                     **proc_figures(node.proc.pid), **time_small_ops(client, args.ops, "after")}
        finally:
            if client:
                client.close()
            crowd.close()
            node.stop()
    per_conn = (held["rss_kib"] - before["rss_kib"]) / max(1, args.connections)
    return {"connections": args.connections, "kinds": counts, "open_s": round(open_s, 2), "before": before,
            "held": held, "after": after, "rss_per_connection_kib": round(per_conn, 2), "limit_ms": LIMIT_MS,
            "p99_ratio_to_limit": round(held["p99_ms"] / LIMIT_MS, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--ops", type=int, default=1000, help="put+get pairs timed in each phase")
    ap.add_argument("--io-timeout-ms", type=int, default=5000, help="the node's --io-timeout-ms")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    r = run(args)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{'phase':<8} {'conns':>7} {'threads':>7} {'RSS MiB':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for phase in ("before", "held", "after"):
        f = r[phase]
        conns = f.get("connections", 1)
        print(f"{phase:<8} {conns:>7} {f['threads']:>7} {f['rss_kib'] / 1024:>8.1f} {f['p50_ms']:>7.3f} "
              f"{f['p99_ms']:>7.3f} {f['max_ms']:>7.2f}")
    print(f"kinds: {r['kinds']}; opened in {r['open_s']} s; "
          f"dropped after the I/O timeout: {r['after']['stalled_connections']}; "
          f"idle sessions answering afterwards: {r['after']['idle_pinged']}/{r['after']['idle_sampled']}")
    print(f"connections={r['connections']} p99={r['held']['p99_ms']:.3f}ms limit={LIMIT_MS}ms "
          f"ratio={r['p99_ratio_to_limit']} rss_per_connection={r['rss_per_connection_kib']}KiB "
          f"threads={r['held']['threads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
