"""The netns partition scenario, shared by tests/test_netns_cluster.py (CI)
and scripts/netns_cluster.py (by hand, prints the timings table).

Three nodes (A, B, C) and two clients, each in its own network namespace
on one bridge (tests/netns_harness.py). Client 0 is a plain
`nixl_memkv.Client`; client 1 also runs a NIXL agent with the MEMKV
backend and an LMCache engine with MemKVStorageBackend. Node B's link is
cut at the switch, healed, then degraded with `tc netem` and healed again;
every step asserts its outcome and records how long it took against the
bound the configured timeouts give.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from netns_harness import Network
from node_harness import NodeProc, clean_env, make_licence

from nixl_memkv.auth import generate_auth_key

HERE = os.path.dirname(os.path.abspath(__file__))

# Client timeouts: short, so a cut costs seconds, yet far above a healthy
# op on a loaded 2-core machine.
CONNECT_MS = 500
OP_MS = 1000
# Scheduling slack on a shared 2-core machine (process wake-ups, GIL).
SLACK_S = 1.0
# An op on a pooled connection the cut made stale waits out one op timeout;
# it is not retried (csrc/client/client.cpp with_connection: a timeout is
# not a stale connection), and the pool's other idle connections are closed.
STALE_BOUND_S = OP_MS / 1000 + SLACK_S
# With no connection left, an op fails when its connect times out.
FRESH_BOUND_S = CONNECT_MS / 1000 + SLACK_S
# Under packet loss an op may be slowed without failing. op_timeout_ms
# bounds each wait for bytes, not the whole op, so the bound counts waits
# (each ends short of its timeout, or the op fails): a pooled attempt that
# failed fast enough to be retried (under 90% of one), then a connect, and
# reads of hello, auth, the reply's header and meta, and its 4 KiB value in
# up to 3 TCP segments.
LOSSY_BOUND_S = (CONNECT_MS + 8 * OP_MS) / 1000 + SLACK_S
# A healthy op to A or C, also while B is cut.
NORMAL_S = 0.5
# B serves again this soon after its link comes back (ARP, a new connect).
RECOVERY_BOUND_S = 5.0

VALUE = 4096
KEYS = [f"netns-key-{i}" for i in range(48)]
NIXL_BLOCK = 256 << 10
NIXL_BLOCKS = 12
LM_CHUNKS = 6
LOSSY_GETS = 10


@dataclass
class Timing:
    phase: str
    what: str
    client: str
    seconds: float
    bound: float | None

    def row(self) -> str:
        bound = f"<= {self.bound:.2f}" if self.bound is not None else ""
        return f"{self.phase:<10} {self.what:<44} {self.client:<4} {self.seconds:>8.3f} {bound:>9}"


class ClientProc:
    """tests/netns_client.py inside a client namespace, driven over its stdin/stdout."""

    def __init__(self, name: str, prefix: list[str], env: dict, log_path: str):
        self.name = name
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([*prefix, sys.executable, os.path.join(HERE, "netns_client.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
                                     cwd=os.path.dirname(log_path), text=True, bufsize=1)
        self.log_path = log_path
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("REPLY "):
                self._replies.put(json.loads(line[6:]))
        self._replies.put(None)

    def _tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def reply(self, timeout: float) -> dict:
        try:
            r = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"client {self.name} gave no answer within {timeout:.1f} s (a hang): "
                                 f"{self._tail()}") from None
        if r is None:
            raise AssertionError(f"client {self.name} exited ({self.proc.poll()}): {self._tail()}")
        if not r.get("ok", True):
            raise AssertionError(f"client {self.name}: {r['exception']}\n{r['trace']}")
        return r

    def send(self, op: str, **kw) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, timeout: float, **kw) -> dict:
        self.send(op, **kw)
        return self.reply(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Cluster:
    """The network, three nodes and two client processes; close() removes all."""

    NODES = ("A", "B", "C")

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.net = Network()
        self.nodes: dict[str, NodeProc] = {}
        self.clients: list[ClientProc] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self.auth_key = auth_key = generate_auth_key()
        os.makedirs(os.path.join(self.workdir, "licence"), exist_ok=True)
        self.licence = make_licence(os.path.join(self.workdir, "licence"))
        for name in self.NODES:
            addr = self.net.add_host(name)
            data = os.path.join(self.workdir, name, "data")
            os.makedirs(os.path.dirname(data), exist_ok=True)
            self.nodes[name] = NodeProc(data, auth_key, "--dram-capacity", "128MiB", "--disk-capacity", "256MiB",
                                        host=addr, netns=self.net.ns(name)).start(wait=False)
        for name in ("c0", "c1"):
            self.net.add_host(name)
        self.servers = ",".join(n.address for n in self.nodes.values())
        self.by_address = {n.address: name for name, n in self.nodes.items()}
        self.timeouts = {"connect_timeout_ms": str(CONNECT_MS), "op_timeout_ms": str(OP_MS)}
        env = clean_env(MEMKV_SERVERS=self.servers, MEMKV_AUTH_KEY=auth_key, MEMKV_TRANSPORT="tcp",
                        MEMKV_NUM_CONNECTIONS="2", MEMKV_CONNECT_TIMEOUT_MS=str(CONNECT_MS),
                        MEMKV_OP_TIMEOUT_MS=str(OP_MS), MEMKV_LICENSE=self.licence[0],
                        MEMKV_LICENSE_PUBKEY=self.licence[1], PYTHONHASHSEED="0", LMCACHE_TRACK_USAGE="false",
                        VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1", PYTHONPATH=HERE)
        for name in ("c0", "c1"):  # c1 hosts NIXL and LMCache: it preloads LMCache
            self.clients.append(ClientProc(name, self.net.exec_prefix(name),
                                           {**env, "NETNS_CLIENT_PRELOAD": "1"} if name == "c1" else env,
                                           os.path.join(self.workdir, f"{name}.log")))
        for n in self.nodes.values():
            n.wait_ready()
        for c in self.clients:
            c.reply(120)  # ready

    def close(self) -> None:
        for c in self.clients:
            c.stop()
        for n in self.nodes.values():
            n.stop()
        self.net.close()


def _both(clients: list[ClientProc], timeout: float, op: str, per_client: list[dict] | None = None,
          **kw) -> list[dict]:
    """The same command on every client at once; their replies in order."""
    for i, c in enumerate(clients):
        c.send(op, **{**kw, **(per_client[i] if per_client else {})})
    return [c.reply(timeout) for c in clients]


def _slowest(r: dict) -> float:
    return max(i["s"] for i in r["items"])


def _gets_served(clients: list[ClientProc], keys: list[str], note, phase: str, what: str) -> None:
    """Every client reads every key back (a node's keys, or the others')."""
    for c, r in zip(clients, _both(clients, 30, "get", keys=keys, size=VALUE)):
        assert [i.get("result") for i in r["items"]] == ["ok"] * len(keys), r["items"]
        note(phase, what, c.name, _slowest(r), NORMAL_S)


def _gets_fail(clients: list[ClientProc], keys: list[str], wait_s: float, note, phase: str, what: str,
               bound: float) -> list[dict]:
    """Every client's get of every key fails as a connection failure (never a
    miss or wrong bytes), the slowest within `bound`."""
    rs = _both(clients, wait_s, "get", keys=keys, size=VALUE)
    for c, r in zip(clients, rs):
        for item in r["items"]:
            assert "error" in item and "ConnectionFailed" in item["error"], item
        note(phase, what, c.name, _slowest(r), bound)
    return rs


def run(workdir: str, log=print) -> list[Timing]:
    timings: list[Timing] = []

    def note(phase: str, what: str, client: str, seconds: float, bound: float | None = None) -> None:
        t = Timing(phase, what, client, seconds, bound)
        timings.append(t)
        log(t.row())
        if bound is not None:
            assert seconds <= bound, f"{phase}: {what} on {client} took {seconds:.3f} s, over its bound {bound:.2f} s"

    t0 = time.monotonic()
    cluster = Cluster(workdir)
    note("setup", "network, 3 nodes, 2 client processes up", "-", time.monotonic() - t0)
    try:
        _scenario(cluster, note, log)
    finally:
        cluster.close()
    note("total", "scenario, set-up to tear-down", "-", time.monotonic() - t0)
    return timings


def _scenario(cl: Cluster, note, log) -> None:
    net, c0, c1 = cl.net, cl.clients[0], cl.clients[1]
    clients = cl.clients
    routes = [cl.by_address[s] for s in c0.call("route", 10, keys=KEYS)["servers"]]
    assert c1.call("route", 10, keys=KEYS)["servers"] == c0.call("route", 10, keys=KEYS)["servers"]
    on = {n: [k for k, r in zip(KEYS, routes) if r == n] for n in cl.NODES}
    spread = {n: len(v) for n, v in on.items()}
    assert min(spread.values()) >= 5, f"keys do not spread over the nodes: {spread}"
    others = on["A"] + on["C"]

    # -- 1. healthy: both clients write (half each) and read everything back --------
    put = _both(clients, 30, "put", per_client=[{"keys": KEYS[0::2]}, {"keys": KEYS[1::2]}], size=VALUE)
    for c, r in zip(clients, put):
        assert all(i.get("result") == "ok" for i in r["items"]), f"{c.name} puts: {r['items']}"
    _gets_served(clients, KEYS, note, "healthy", f"get, slowest of {len(KEYS)} keys over A, B, C")

    # NIXL blocks and an LMCache prompt stored before the cut (client 1).
    hashes = list(range(0xB10C0, 0xB10C0 + NIXL_BLOCKS))
    params = {"servers": cl.servers, "auth_key": cl.auth_key, "transport": "tcp", "license": cl.licence[0],
              "license_pubkey": cl.licence[1], **cl.timeouts, "num_connections": "2"}
    t0 = time.monotonic()
    nixl_routes = [cl.by_address[s] for s in c1.call("nixl_setup", 120, hashes=hashes, block=NIXL_BLOCK,
                                                     params=params)["servers"]]
    assert "B" in nixl_routes and {"A", "C"} & set(nixl_routes), nixl_routes
    note("setup", "NIXL agent with the MEMKV backend up", "c1", time.monotonic() - t0)
    all_blocks = list(range(NIXL_BLOCKS))
    b_blocks = [i for i, r in enumerate(nixl_routes) if r == "B"]
    ac_blocks = [i for i, r in enumerate(nixl_routes) if r != "B"]
    w = c1.call("nixl_xfer", 60, direction="WRITE", idx=all_blocks)
    assert w["state"] == "DONE", w
    r = c1.call("nixl_xfer", 60, direction="READ", idx=all_blocks)
    assert r["state"] == "DONE" and r["bytes"] == "ok", r

    extra = {"memkv.servers": cl.servers, "memkv.auth_key": params["auth_key"], "memkv.license": cl.licence[0],
             "memkv.license_pubkey": cl.licence[1], "memkv.transport": "tcp",
             **{f"memkv.{k}": v for k, v in cl.timeouts.items()}}
    t0 = time.monotonic()
    lm = c1.call("lm_setup", 120, yaml_path=os.path.join(cl.workdir, "lmcache.yaml"), extra=extra,
                 chunks=LM_CHUNKS)
    chunk = lm["chunk"]
    ntokens = LM_CHUNKS * chunk
    note("setup", f"LMCache up (import wait {lm['import_wait_s']:.1f} s, engine {lm['engine_s']:.1f} s)", "c1",
         time.monotonic() - t0)
    # A prompt with a chunk on B that is not its first: its lookup stops there.
    for seed in range(1, 12):
        st = c1.call("lm_store", 60, seed=seed, ntokens=ntokens)
        lm_routes = [cl.by_address[s] for s in st["routes"]]
        if "B" in lm_routes[1:]:
            break
    else:
        raise AssertionError(f"no prompt with a chunk on B after its first: {lm_routes}")
    lm_seed, lm_first_b = seed, lm_routes.index("B")
    lm = c1.call("lm_read", 60, seed=lm_seed, ntokens=ntokens)
    assert lm["lookup"] == ntokens and lm["retrieved"] == ntokens and lm["bit_exact"], lm

    # -- 2. B's link cut at the switch -------------------------------------------------
    net.link("B", False)
    b_keys = on["B"]
    first = _both(clients, STALE_BOUND_S + 30, "get", keys=b_keys[:1], size=VALUE)
    for c, r in zip(clients, first):
        item = r["items"][0]
        assert "error" in item and "ConnectionFailed" in item["error"] and "10.88" in item["error"], item
        note("cut", "get on B, pooled connection (stale)", c.name, item["s"], STALE_BOUND_S)
    _gets_fail(clients, b_keys[1:4], FRESH_BOUND_S * 3 + 30, note, "cut", "get on B, new connection (slowest of 3)",
               FRESH_BOUND_S)
    _gets_served(clients, others, note, "cut", f"get on A/C, slowest of {len(others)} keys")
    mixed = _both(clients, STALE_BOUND_S + 30, "mixed", slow_key=b_keys[4], keys=others, size=VALUE)
    for c, r in zip(clients, mixed):
        assert "error" in r["slow"], r["slow"]
        assert {i.get("result") for i in r["others"]} == {"ok"}, r["others"]
        note("cut", f"get on A/C while one on B waits ({len(r['others'])} gets)", c.name,
             max(i["s"] for i in r["others"]), NORMAL_S)
    new_keys = [f"netns-during-cut-{i}" for i in range(12)]
    new_routes = [cl.by_address[s] for s in c0.call("route", 10, keys=new_keys)["servers"]]
    new_ac = [k for k, r in zip(new_keys, new_routes) if r != "B"]
    p = c0.call("put", 30, keys=new_ac, size=VALUE)
    assert all(i.get("result") == "ok" for i in p["items"]), p
    note("cut", "put on A/C, slowest", "c0", max(i["s"] for i in p["items"]), NORMAL_S)
    batch = _both(clients, STALE_BOUND_S + 30, "batch_get", keys=KEYS, size=VALUE)
    expect = ["miss" if r == "B" else "ok" for r in routes]
    for c, r in zip(clients, batch):
        assert r["result"] == expect, r
        # batch_get asks for sizes, then reads: two batches, each waits out one connect to B.
        note("cut", "batch_get of all 48 (B's keys: misses)", c.name, r["s"], 2 * CONNECT_MS / 1000 + SLACK_S)

    # NIXL: transfers without B's blocks go through; with them, ERR in bounded time.
    r = c1.call("nixl_xfer", 30, direction="READ", idx=ac_blocks)
    assert r["state"] == "DONE" and r["bytes"] == "ok", r
    note("cut", f"NIXL READ of {len(ac_blocks)} blocks on A/C", "c1", r["s"], NORMAL_S + 1)
    r = c1.call("nixl_xfer", STALE_BOUND_S + 30, direction="READ", idx=all_blocks)
    assert r["state"] == "ERR", r
    note("cut", "NIXL READ touching B -> ERR", "c1", r["s"], STALE_BOUND_S)
    r = c1.call("nixl_xfer", STALE_BOUND_S + 30, direction="WRITE", idx=b_blocks)
    assert r["state"] == "ERR", r
    note("cut", "NIXL WRITE of B's blocks -> ERR", "c1", r["s"], STALE_BOUND_S)
    # LMCache: the lookup stops at the first chunk on B; what it reports is bit-exact.
    lm = c1.call("lm_read", STALE_BOUND_S * 2 + 30, seed=lm_seed, ntokens=ntokens)
    assert lm["lookup"] == lm_first_b * chunk, (lm, lm_routes)
    assert lm["retrieved"] == lm["lookup"] and lm["bit_exact"], lm
    note("cut", f"LMCache lookup (hit {lm['lookup']}/{ntokens} tokens)", "c1", lm["lookup_s"], STALE_BOUND_S)
    note("cut", "LMCache retrieve of the hit prefix", "c1", lm["retrieve_s"], STALE_BOUND_S)

    before = st["stats"]
    new_seed = next(s for s in range(100, 200)
                    if cl.nodes["B"].address in c1.call("lm_routes", 30, seed=s, ntokens=ntokens)["routes"])
    st = c1.call("lm_store", STALE_BOUND_S * LM_CHUNKS + 30, seed=new_seed, ntokens=ntokens)
    on_b = [cl.by_address[s] for s in st["routes"]].count("B")
    failed, stored = (st["stats"].get(k, 0) - before.get(k, 0) for k in ("put_failed", "put_stored"))
    assert (failed, stored) == (on_b, LM_CHUNKS - on_b), (st["stats"], before, st["routes"])
    # The plugin asks which chunks are missing, then writes them: two connects to B.
    note("cut", f"LMCache store, new prompt ({on_b} of {LM_CHUNKS} chunks on B fail)", "c1", st["s"],
         2 * CONNECT_MS / 1000 + SLACK_S)

    # -- 3. heal: B rejoins, the same client processes reach it again ------------------
    _heal(cl, "link up", lambda: net.link("B", True), b_keys, note)
    r = c1.call("nixl_xfer", 60, direction="READ", idx=all_blocks)
    assert r["state"] == "DONE" and r["bytes"] == "ok", r
    note("healed", "NIXL READ of all blocks", "c1", r["s"], None)
    r = c1.call("nixl_xfer", 60, direction="WRITE", idx=b_blocks)
    assert r["state"] == "DONE", r
    lm = c1.call("lm_read", 60, seed=lm_seed, ntokens=ntokens)
    assert lm["lookup"] == ntokens and lm["retrieved"] == ntokens and lm["bit_exact"], lm
    note("healed", "LMCache lookup (full prompt)", "c1", lm["lookup_s"], None)

    # -- 4. netem on B's link: delay beyond the op timeout, then loss ------------------
    log(f"-- B's link: 2000 ms delay each way, by {net.impair('B', delay_ms=2000)}")
    # Replies would come 4 s after the request, past the 1 s op timeout: all fail.
    _gets_fail(clients, b_keys[:3], STALE_BOUND_S * 3 + 30, note, "delay 2s", "get on B (slowest of 3, all fail)",
               STALE_BOUND_S)
    _gets_served(clients, others, note, "delay 2s", "get on A/C, slowest")

    log(f"-- B's link: 40% loss each way, by {net.impair('B', loss_pct=40)}")
    lossy = _both(clients, LOSSY_BOUND_S * LOSSY_GETS + 30, "get", keys=b_keys[:LOSSY_GETS], size=VALUE)
    for c, r in zip(clients, lossy):
        results = [i.get("result", "error") for i in r["items"]]
        assert set(results) <= {"ok", "error"}, results  # never wrong bytes, never a miss
        note("loss 40%", f"get on B ({results.count('ok')} ok, {results.count('error')} failed), slowest",
             c.name, _slowest(r), LOSSY_BOUND_S)
    _gets_served(clients, others, note, "loss 40%", "get on A/C, slowest")

    _heal(cl, "netem off", lambda: net.clear_impairment("B"), b_keys, note)


def _heal(cl: Cluster, how: str, action, b_keys: list[str], note) -> None:
    """Applies `action`, then has each client poll one of B's keys until it
    reads back; then every key B held reads back from both clients."""
    action()
    t0 = time.monotonic()

    def poll(c: ClientProc) -> float:
        while True:
            r = c.call("get", STALE_BOUND_S + 30, keys=b_keys[:1], size=VALUE)
            if r["items"][0].get("result") == "ok":
                return time.monotonic() - t0
            assert "error" in r["items"][0], r  # failing, not wrong
            assert time.monotonic() - t0 < RECOVERY_BOUND_S + STALE_BOUND_S, f"{c.name} never reached B again: {r}"
            time.sleep(0.05)

    with ThreadPoolExecutor(len(cl.clients)) as ex:
        for c, s in zip(cl.clients, ex.map(poll, cl.clients)):
            note("healed", f"{how}: B serves this client again", c.name, s, RECOVERY_BOUND_S)
    _gets_served(cl.clients, b_keys, note, "healed", f"{how}: B's {len(b_keys)} keys, slowest")
