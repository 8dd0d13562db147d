"""`memkv bench`: put/get throughput per value size and thread count, batched
exists, and the raw loopback socket limit measured in the same run; every
figure is printed as a ratio of that limit. With peers (bench_peers), other
stores run the same put/get loop beside MemKV in the same run. Everything
the bench writes is deleted before it ends, so `--servers` leaves a real
cluster as it found it."""

from __future__ import annotations

import json
import os
import statistics
import socket
import tempfile
import threading
import time

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .client import Client
from .config import ClientConfig, NodeConfig, format_size, load_client_config, parse_size
from .errors import ConfigError
from .node import MemKVNode

TARGET_RATIO = 0.9  # 4 MiB put of new keys and get against the raw socket, one client thread
TARGET_REPEATS = 3
NEW_KEYS_BYTES = 1 << 30  # each new-key round writes this much under keys never used before


def raw_loopback_gbps(seconds: float, chunk: int = 4 << 20, working_set: int | None = None,
                      sink_span: int | None = None) -> float:
    """One TCP stream over loopback: sendall of `chunk`-sized pieces of a
    `working_set`-byte buffer into recv_into of an equal buffer (or, with
    `sink_span`, of a pre-faulted buffer that large). Give it the working set
    of the workload it is the limit for: 4 MiB values cycle in cache, 64 MiB
    batches stream from memory, and a store taking 1 GiB of new keys writes
    1 GiB of memory that is not in cache."""
    working_set = max(working_set or chunk, chunk)
    span = max(sink_span or working_set, chunk)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    total = [0]

    def sink() -> None:
        conn, _ = ls.accept()
        sink = bytearray(span)
        np.frombuffer(sink, dtype=np.uint8)[::4096] = 1  # pre-faulted, as the node's DRAM tier is
        buf = memoryview(sink)
        pos = 0
        while True:
            n = conn.recv_into(buf[pos:pos + chunk])
            if not n:
                break
            total[0] += n
            pos = (pos + n) % span
            if span - pos < chunk:
                pos = 0
        conn.close()

    t = threading.Thread(target=sink)
    t.start()
    s = socket.create_connection(ls.getsockname())
    data = memoryview(np.random.default_rng(0).integers(0, 256, working_set, dtype=np.uint8).tobytes())
    pieces = [data[o:o + chunk] for o in range(0, working_set - chunk + 1, chunk)]
    for p in pieces[:8]:  # warm up
        s.sendall(p)
    start_total = total[0]
    t0 = time.perf_counter()
    sent = 0
    i = 0
    while time.perf_counter() - t0 < seconds or sent < 64 * chunk:
        s.sendall(pieces[i % len(pieces)])
        sent += chunk
        i += 1
    s.shutdown(socket.SHUT_WR)
    t.join()
    dt = time.perf_counter() - t0
    s.close()
    ls.close()
    return (total[0] - start_total) / dt / 1e9


def disk_write_gbps(directory: str, seconds: float, chunk: int = 4 << 20, span: int = 1 << 30) -> float:
    """Sequential O_DIRECT writes into a file in `directory` (cycling over
    `span` bytes), synced at the end: the rate at which the shard tier can
    make puts durable. Buffered writes where O_DIRECT is refused."""
    import mmap
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(chunk))
    path = os.path.join(directory, ".disk-probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds or written < 16 * chunk:
            written += os.pwrite(fd, buf, written % span)
        os.fsync(fd)
        return written / (time.perf_counter() - t0) / 1e9
    finally:
        os.close(fd)
        os.unlink(path)
        buf.close()


def _run_threads(n: int, fn) -> float:
    """Runs fn(thread_index) on n threads; returns total bytes / s."""
    results = [0] * n
    errors: list[BaseException] = []

    def wrap(i):
        try:
            results[i] = fn(i)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(results) / dt


_round = [0]


def _remove_all(client: Client, keys: list[str]) -> None:
    for i in range(0, len(keys), 4096):
        client.batch_remove(keys[i:i + 4096])


def measure_new_keys(client: Client, size: int, threads: int, prefix: str,
                     new_bytes: int = NEW_KEYS_BYTES) -> float:
    """Puts of keys never written before (what offload traffic is),
    `new_bytes` in all, then deletes them so later rows start from the same
    state."""
    _round[0] += 1
    per_thread = max(4, new_bytes // size // threads)
    value = np.random.default_rng(size + 1).integers(0, 256, size, dtype=np.uint8)
    keys = [[f"{prefix}/new/{_round[0]}/{size}/{t}/{i}" for i in range(per_thread)] for t in range(threads)]

    def put(t: int) -> int:
        for k in keys[t]:
            client.put(k, value)
        return per_thread * size

    try:
        return _run_threads(threads, put) / 1e9
    finally:
        _remove_all(client, [k for ks in keys for k in ks])


def node_rss_bytes() -> int:
    """Resident memory of this process (the embedded node and the client)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(client: Client, size: int, threads: int, seconds: float, prefix: str) -> tuple[float, float]:
    """Overwrites and gets of a fixed key set (warm in the node's memory),
    deleted afterwards."""
    keys_per_thread = max(2, min(64, (64 << 20) // size))
    value = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    keys = [[f"{prefix}/{size}/{t}/{i}" for i in range(keys_per_thread)] for t in range(threads)]
    min_ops = max(8, keys_per_thread)

    def put(t: int) -> int:
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done < min_ops:
            client.put(keys[t][done % keys_per_thread], value)
            done += 1
        return done * size

    def get(t: int) -> int:
        buf = np.empty(size, dtype=np.uint8)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done < min_ops:
            if client.get_into(keys[t][done % keys_per_thread], buf) != size:
                raise RuntimeError("benchmark value went missing (is the node's DRAM tier too small?)")
            done += 1
        return done * size

    try:
        # One untimed pass so every key exists and the node's buffers are warm.
        _run_threads(threads, lambda t: sum(client.put(k, value) or size for k in keys[t]))
        return _run_threads(threads, put) / 1e9, _run_threads(threads, get) / 1e9
    finally:
        _remove_all(client, [k for ks in keys for k in ks])


def _wait_prefaulted(node: MemKVNode, timeout: float = 120.0) -> None:
    """The embedded node pre-faults its DRAM tier in the background: measure
    once that is done, as a node that has been up a while is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = node.stats()
        if s["arena_prefaulted_bytes"] >= s["arena_bytes"]:
            return
        time.sleep(0.1)


def _wait_flushed(node: MemKVNode, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while node.stats()["dirty_bytes"] and time.monotonic() < deadline:
        time.sleep(0.05)


def measure_exists(client: Client, n: int, prefix: str) -> float:
    keys = [f"{prefix}/exists/{i}" for i in range(n)]
    vals = [b"x"] * n
    try:
        for i in range(0, n, 4096):
            client.batch_put(keys[i:i + 4096], vals[i:i + 4096])
        client.batch_exists(keys)
        rounds, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0 or rounds < 3:
            if not all(client.batch_exists(keys)):
                raise RuntimeError("batched exists lost keys")
            rounds += 1
        return rounds * n / (time.perf_counter() - t0)
    finally:
        _remove_all(client, keys)


class _MemKVInPeerLoop:
    """MemKV through the peers' loop (one thread, one call per value)."""

    name, title = "memkv", "MemKV"

    def __init__(self, client: Client):
        self._c = client

    def buffers(self, value: np.ndarray, out: np.ndarray) -> None:
        pass

    def put(self, key: str, value: np.ndarray) -> None:
        self._c.put(key, value)

    def flush(self) -> None:
        pass

    def get_into(self, key: str, out: np.ndarray) -> int:
        return self._c.get_into(key, out)

    def remove(self, keys: list[str]) -> None:
        _remove_all(self._c, keys)


def measure_store(store, size: int, seconds: float, new_bytes: int, prefix: str,
                  value: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """The loop every store in the peers table runs, one client thread: puts
    of `new_bytes` of new keys (acknowledged), then gets cycling over them
    for `seconds`, the last one checked; then the keys are deleted."""
    n = max(4, new_bytes // size)
    keys = [f"{prefix}/{store.name}/{size}/{i}" for i in range(n)]
    v, o = value[:size], out[:size]
    try:
        t0 = time.perf_counter()
        for k in keys:
            store.put(k, v)
        store.flush()
        put = n * size / (time.perf_counter() - t0) / 1e9
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done < min(n, 8):
            if store.get_into(keys[done % n], o) != size:
                raise RuntimeError(f"{store.title}: a value the bench wrote went missing")
            done += 1
        get = done * size / (time.perf_counter() - t0) / 1e9
        if not np.array_equal(o, v):
            raise RuntimeError(f"{store.title}: a get returned other bytes than were put")
        return put, get
    finally:
        store.remove(keys)


def run_peers(client: Client, peers: list[str], size_list: list[int], seconds: float, new_bytes: int,
              prefix: str, progress, task) -> tuple[list[dict], dict[str, str]]:
    """MemKV and every peer through measure_store, each row paired with a
    raw-socket sample taken just before it."""
    from .bench_peers import quiet_logs, start_peer

    quiet_logs()
    rows, failed = [], {}
    big = max(size_list)
    value = np.random.default_rng(3).integers(0, 256, big, dtype=np.uint8)
    out = np.empty(big, dtype=np.uint8)
    for name in ["memkv", *peers]:
        progress.update(task, description=f"peers: starting {name}")
        try:
            store = _MemKVInPeerLoop(client) if name == "memkv" else start_peer(name, new_bytes)
        except Exception as e:  # a peer that will not start is reported, not fatal
            failed[name] = f"did not start: {e}"
            progress.advance(task, len(size_list))
            continue
        try:
            store.buffers(value, out)
            for size in size_list:
                progress.update(task, description=f"peers: {store.title}, {format_size(size)}")
                raw_now = raw_loopback_gbps(min(seconds, 1.0))
                put, get = measure_store(store, size, seconds, new_bytes, prefix, value, out)
                rows.append({"store": name, "title": store.title, "size": size, "put_new_gbps": put,
                             "get_gbps": get, "raw_gbps": raw_now, "put_new_ratio": put / raw_now,
                             "get_ratio": get / raw_now})
                progress.advance(task)
        except Exception as e:
            failed[name] = f"failed: {e}"
        finally:
            if name != "memkv":
                store.close()
    return rows, failed


def _parse_threads(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise ConfigError(f"--threads {text!r}: expected a comma-separated list of thread counts >= 1, e.g. 1,4")
    return threads


def run_bench(*, servers: str | None, sizes: str, threads: str, seconds: float, exists_keys: int,
              json_path: str | None, dram_only: bool = False, peers: str = "auto", plot_path: str | None = None,
              new_keys: str = "1GiB") -> bool:
    from .bench_peers import parse_peers

    console = Console(stderr=json_path == "-")
    if not console.is_terminal:  # logs and pipes get whole tables, not an 80-column squeeze
        console = Console(stderr=json_path == "-", width=140)
    size_list = [parse_size(s.strip(), "--sizes") for s in sizes.split(",") if s.strip()]
    if not size_list:
        raise ConfigError(f"--sizes {sizes!r}: expected a comma-separated list of sizes, e.g. 64KiB,4MiB")
    thread_list = _parse_threads(threads)
    new_bytes = parse_size(new_keys, "--new-keys")
    peer_list, peers_not_run = parse_peers(peers, embedded=not servers)
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install matplotlib") from None
    # The embedded node's DRAM tier: 4 GiB for the default 1 GiB of new keys,
    # less for short runs (the bench waits until it is pre-faulted).
    dram = min(4 << 30, max(512 << 20, 4 * new_bytes))
    # Every key the bench writes lives under this prefix, and is deleted.
    prefix = f"memkv-bench/{os.urandom(6).hex()}"
    node = None
    tmp = None
    if servers:
        cfg = load_client_config({"servers": servers}, override_labels={"servers": "--servers"})
    else:
        tmp = tempfile.TemporaryDirectory(prefix="memkv-bench-")
        key = os.urandom(32)
        node = MemKVNode(NodeConfig(data_dir=tmp.name, host="127.0.0.1", port=0, auth_key=key,
                                    dram_capacity=dram, disk_capacity=0 if dram_only else 16 << 30),
                         admin=False).start()
        cfg = ClientConfig(servers=(node.address,), auth_key=key, transport="tcp", num_connections=8)
    rows = []
    try:
        with Client(config=cfg) as client, Progress(console=console, transient=True) as progress:
            task = progress.add_task("raw loopback", total=len(size_list) * len(thread_list) + 1 +
                                     (len(size_list) * (1 + len(peer_list)) if peer_list else 0))
            if node:
                progress.update(task, description="waiting for the node to pre-fault its DRAM tier")
                _wait_prefaulted(node)
            # A VM's throughput drifts within a run: each row is paired with a
            # raw-socket sample taken just before it, and the 4 MiB x 1 target
            # row is measured TARGET_REPEATS times (median of paired ratios).
            raw_samples = []
            for size in size_list:
                for n in thread_list:
                    progress.update(task, description=f"{format_size(size)} x {n} thread(s)")
                    repeats = TARGET_REPEATS if (size, n) == (4 << 20, 1) else 1
                    pairs = []
                    for _ in range(repeats):
                        if node:  # each row starts with the write-back of earlier rows finished
                            _wait_flushed(node)
                        raw_now = raw_loopback_gbps(min(seconds, 1.0))
                        raw_samples.append(raw_now)
                        # The same stream into new_bytes of memory, not in cache: what
                        # any store must do with a working set of new keys.
                        raw_fresh = raw_loopback_gbps(min(seconds, 1.0), chunk=min(size, 4 << 20),
                                                      sink_span=new_bytes) if repeats > 1 else None
                        new = measure_new_keys(client, size, n, prefix, new_bytes)
                        if node:
                            _wait_flushed(node)
                        put, get = measure(client, size, n, seconds, prefix)
                        pairs.append((put / raw_now, get / raw_now, put, get, new, new / raw_now,
                                      new / raw_fresh if raw_fresh else None, raw_fresh))
                    put_ratio = statistics.median(p[0] for p in pairs)
                    get_ratio = statistics.median(p[1] for p in pairs)
                    rows.append({"size": size, "threads": n, "put_gbps": statistics.median(p[2] for p in pairs),
                                 "get_gbps": statistics.median(p[3] for p in pairs), "put_ratio": put_ratio,
                                 "get_ratio": get_ratio,
                                 "put_new_gbps": statistics.median(p[4] for p in pairs),
                                 "put_new_ratio": statistics.median(p[5] for p in pairs), "samples": len(pairs)})
                    if repeats > 1:
                        rows[-1]["raw_fresh_memory_gbps"] = statistics.median(p[7] for p in pairs)
                        rows[-1]["put_new_ratio_fresh_memory"] = statistics.median(p[6] for p in pairs)
                    progress.advance(task)
            raw = statistics.median(raw_samples)
            progress.update(task, description=f"batched exists of {exists_keys} keys")
            exists_rate = measure_exists(client, exists_keys, prefix)
            progress.advance(task)
            peer_rows, peers_failed = (run_peers(client, peer_list, size_list, seconds, new_bytes, prefix,
                                                 progress, task) if peer_list else ([], {}))
            peers_not_run.update(peers_failed)
            disk = disk_write_gbps(tmp.name, min(seconds, 1.0)) if node and not dram_only else None
            rss = node_rss_bytes() if node else None
            prefaulted = node.stats()["arena_prefaulted_bytes"] if node else None
    finally:
        if node:
            node.stop()
        if tmp:
            tmp.cleanup()

    key_row = next((r for r in rows if r["size"] == 4 << 20 and r["threads"] == 1), None)
    ok = key_row is None or (key_row["put_new_ratio"] >= TARGET_RATIO and key_row["get_ratio"] >= TARGET_RATIO)
    t = Table(title=f"MemKV bench (raw loopback socket: median {raw:.2f} GB/s of {len(raw_samples)} samples, "
                    f"{min(raw_samples):.2f}-{max(raw_samples):.2f})")
    for col in ("value", "threads", "put new keys GB/s", "/ raw", "overwrite GB/s", "/ raw", "get GB/s", "/ raw"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(format_size(r["size"]), str(r["threads"]), f"{r['put_new_gbps']:.2f}", f"{r['put_new_ratio']:.2f}",
                  f"{r['put_gbps']:.2f}", f"{r['put_ratio']:.2f}", f"{r['get_gbps']:.2f}", f"{r['get_ratio']:.2f}")
    console.print(t)
    console.print(f"batched exists: {exists_rate:,.0f} keys/s ({exists_keys} keys per call)")
    if disk is not None:
        console.print(f"shard disk, sequential O_DIRECT writes: {disk:.2f} GB/s (the sustained limit for durable "
                      "puts; bursts up to the DRAM capacity go faster)")
    if rss is not None:
        console.print(f"RSS of the process running the embedded node (and this client): {format_size(rss)} "
                      f"(its DRAM tier: {format_size(dram)}, {format_size(prefaulted)} of it pre-faulted)")
    if key_row:
        verdict = "[green]met[/green]" if ok else "[red]NOT met[/red]"
        console.print(f"target 4 MiB put of new keys and get >= {TARGET_RATIO}x raw socket: {verdict} "
                      f"(put of new keys {key_row['put_new_ratio']:.2f}x, get {key_row['get_ratio']:.2f}x; "
                      f"overwrite {key_row['put_ratio']:.2f}x)")
        if "raw_fresh_memory_gbps" in key_row:
            console.print(f"put of new keys against the raw socket writing {format_size(new_bytes)} of memory "
                          "not in cache "
                          f"({key_row['raw_fresh_memory_gbps']:.2f} GB/s): "
                          f"{key_row['put_new_ratio_fresh_memory']:.2f}x")
    if peer_rows or peers_not_run:
        _print_peers(console, peer_rows, peers_not_run)
    doc = {"rss_bytes": rss, "new_keys_bytes_per_round": new_bytes, "raw_loopback_gbps": raw, "raw_samples_gbps": raw_samples, "disk_write_gbps": disk, "results": rows, "batched_exists_keys_per_s": exists_rate,
           "exists_batch": exists_keys, "target_ratio": TARGET_RATIO, "target_met": ok,
           "node": "external" if servers else ("embedded, DRAM only" if dram_only else "embedded, DRAM + shards"),
           "peers": {"results": peer_rows, "not_run": peers_not_run}}
    write_json(doc, json_path)
    if plot_path:
        from .bench_plot import plot

        plot(doc, plot_path)
        console.print(f"chart: {plot_path}")
    return ok


def _print_peers(console: Console, rows: list[dict], not_run: dict[str, str]) -> None:
    t = Table(title="Peers: the same loop for every store (1 client thread, puts of new keys, then gets; "
                    "each row paired with a raw-socket sample)")
    for col in ("store", "value", "put new keys GB/s", "/ raw", "get GB/s", "/ raw"):
        t.add_column(col, justify="left" if col == "store" else "right")
    for r in rows:
        t.add_row(r["title"], format_size(r["size"]), f"{r['put_new_gbps']:.2f}", f"{r['put_new_ratio']:.2f}",
                  f"{r['get_gbps']:.2f}", f"{r['get_ratio']:.2f}")
    if rows:
        console.print(t)
    for name, why in not_run.items():
        console.print(f"peer {name}: {why}", markup=False, highlight=False)


def write_json(doc: dict, json_path: str | None) -> None:
    """The figures as JSON: to stdout for '-', to a file for a path, nowhere for None."""
    if json_path == "-":
        print(json.dumps(doc, indent=2))
    elif json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=2)
