"""Restarts, crashes, corruption and eviction: acknowledged data survives a
clean restart; after SIGKILL every read is the exact bytes or a miss; usage
stays under the configured capacities."""

from __future__ import annotations

import glob
import os
import threading
import time

import numpy as np

from nixl_memkv import ConnectionFailed


def value_for(key: str, size: int) -> bytes:
    seed = int.from_bytes(key.encode()[-8:].rjust(8, b"\0"), "little")
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def test_clean_restart_keeps_acknowledged_data(node, client_for):
    c = client_for([node])
    keys = [f"keep/{i}" for i in range(40)]
    c.batch_put(keys, [value_for(k, 300_000) for k in keys])
    c.put("small", b"tiny")
    assert node.restart().status()["keys"] == 41
    # A clean stop leaves an index snapshot, so the restart opens no record.
    assert "index snapshot from the last clean shutdown: 41 records" in node.log()
    c2 = client_for([node])
    assert c2.batch_get(keys) == [value_for(k, 300_000) for k in keys]
    assert c2.get("small") == b"tiny"
    # The first client's pooled connections went stale; it reconnects by itself.
    assert c.get("small") == b"tiny"


def test_fsync_always_survives_sigkill(make_node, client_for):
    n = make_node("--fsync", "always", "--dram-capacity", "256MiB", "--disk-capacity", "512MiB")
    c = client_for([n])
    keys = [f"durable/{i}" for i in range(20)]
    for k in keys:
        c.put(k, value_for(k, 100_000))
    n.kill()
    n.start()
    assert client_for([n]).batch_get(keys) == [value_for(k, 100_000) for k in keys]
    assert "index snapshot" not in n.log()  # after a crash the index is rebuilt from the records


def test_sigkill_during_writes_exact_bytes_or_miss(make_node, client_for):
    n = make_node("--fsync", "interval", "--fsync-interval-ms", "200", "--dram-capacity", "256MiB",
                  "--disk-capacity", "1GiB")
    c = client_for([n], op_timeout_ms=5000)
    acked: list[str] = []
    attempted: list[str] = []
    stop = threading.Event()
    checkpoint = threading.Event()  # the writer pauses here until the node has synced
    resume = threading.Event()

    def size_of(i: int) -> int:
        return 64 * 1024 + (i % 7) * 4099

    def writer():
        i = 0
        while not stop.is_set():
            if i == 200:
                checkpoint.set()
                resume.wait(60)
            k = f"crash/{i}"
            attempted.append(k)
            try:
                c.put(k, value_for(k, size_of(i)))
                acked.append(k)
            except ConnectionFailed:
                return
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    assert checkpoint.wait(60)
    # Everything acknowledged so far is written back and then synced (the
    # node syncs every 200 ms): these writes must all survive the crash.
    deadline = time.monotonic() + 60
    while n.status()["dirty_bytes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2 * 3)
    durable = list(acked)
    assert len(durable) == 200
    resume.set()
    time.sleep(1.0)
    n.kill()  # SIGKILL mid-load
    stop.set()
    t.join(30)
    assert not t.is_alive() and len(acked) > len(durable) + 20
    n.start()
    c2 = client_for([n])
    got = dict(zip(attempted, c2.batch_get(attempted)))
    for k in attempted:  # never a wrong byte
        if got[k] is not None:
            assert got[k] == value_for(k, size_of(int(k.split("/")[1]))), f"wrong bytes for {k}"
    lost = [k for k in durable if got[k] is None]
    assert not lost, f"{len(lost)} writes acknowledged before the last completed sync were lost: {lost[:5]}"


def test_corrupt_shard_reads_as_miss_never_wrong_bytes(node, client_for):
    c = client_for([node])
    c.put("victim", value_for("victim", 200_000))
    c.put("bystander", b"fine")
    node.stop()
    files = [f for f in glob.glob(os.path.join(node.data_dir, "shards", "*", "*")) if os.path.getsize(f) > 200_000]
    assert len(files) == 1
    with open(files[0], "r+b") as f:  # flip one byte of the value, past the 4 KiB header
        f.seek(4096 + 12345)
        b = f.read(1)
        f.seek(4096 + 12345)
        f.write(bytes([b[0] ^ 0x40]))
    node.start()
    c2 = client_for([node])
    assert c2.get("victim") is None
    assert c2.get("bystander") == b"fine"
    assert node.status()["corrupt_records"] == 1
    assert c2.get("victim") is None and not c2.exists("victim")


def test_damaged_index_snapshot_falls_back_to_a_scan(node, client_for):
    c = client_for([node])
    c.batch_put([f"s/{i}" for i in range(20)], [bytes([i]) * 5000 for i in range(20)])
    node.stop()
    snap = os.path.join(node.data_dir, "shards", "index.snapshot")
    with open(snap, "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xff")
    node.start()
    assert client_for([node]).batch_get([f"s/{i}" for i in range(20)]) == [bytes([i]) * 5000 for i in range(20)]
    assert not os.path.exists(snap)


def test_torn_write_leftovers_are_ignored(node, client_for):
    c = client_for([node], op_timeout_ms=3000)
    c.put("real", b"data")
    time.sleep(1.5)  # past the sync interval
    node.kill()  # a crash: no index snapshot, the records are scanned
    leftover = os.path.join(node.data_dir, "shards", "00", ".tmp-deadbeef-1")
    with open(leftover, "wb") as f:
        f.write(b"partial record")
    junk = os.path.join(node.data_dir, "shards", "01", "0" * 32)
    with open(junk, "wb") as f:
        f.write(b"not a record")
    node.start()
    assert not os.path.exists(leftover) and not os.path.exists(junk)
    assert client_for([node]).get("real") == b"data"


def test_eviction_keeps_usage_under_capacity(make_node, client_for):
    dram, disk = 32 << 20, 64 << 20
    n = make_node("--dram-capacity", "32MiB", "--disk-capacity", "64MiB")
    c = client_for([n])
    peak = {"dram": 0, "disk": 0}
    for i in range(160):  # 160 MiB through a 32 MiB DRAM tier and 64 MiB of shards
        c.put(f"ev/{i}", value_for(f"ev/{i}", 1 << 20))
        if i % 10 == 0:
            s = n.status()["tiers"]
            peak["dram"] = max(peak["dram"], s["dram"]["bytes_used"])
            peak["disk"] = max(peak["disk"], s["disk"]["bytes_used"])
    time.sleep(0.5)
    st = n.status()
    assert peak["dram"] <= dram and peak["disk"] <= disk
    assert st["tiers"]["dram"]["bytes_used"] <= dram and st["tiers"]["disk"]["bytes_used"] <= disk
    assert st["evictions"]["dram"] > 0 and st["evictions"]["disk"] > 0
    got = c.batch_get([f"ev/{i}" for i in range(160)])
    assert got[0] is None  # the oldest went first
    assert got[-1] == value_for("ev/159", 1 << 20)
    assert all(v is None or v == value_for(f"ev/{i}", 1 << 20) for i, v in enumerate(got))
    # What is on disk never exceeds the shard capacity either.
    on_disk = sum(os.path.getsize(f) for f in glob.glob(os.path.join(n.data_dir, "shards", "*", "*")))
    assert on_disk <= disk


def test_dram_only_node_evicts_lru(make_node, client_for):
    n = make_node("--dram-capacity", "16MiB", "--disk-capacity", "0")
    c = client_for([n])
    for i in range(40):
        c.put(f"d/{i}", bytes(1 << 20))
        if i >= 2:
            c.get("d/0")  # keep d/0 hot
    assert c.exists("d/0") and not c.exists("d/1") and c.exists("d/39")
    assert n.status()["tiers"]["dram"]["bytes_used"] <= 16 << 20


def test_deleted_keys_stay_deleted_after_a_crash(make_node, client_for):
    """Deletes racing the write-back of the same keys: after a crash and a
    full rescan, no deleted key may come back."""
    n = make_node("--dram-capacity", "512MiB", "--disk-capacity", "2GiB", "--fsync-interval-ms", "100")
    c = client_for([n])
    keys = [f"gone/{i}" for i in range(24)]
    for k in keys:
        c.put(k, value_for(k, 8 << 20))
        c.remove(k)  # often while the flusher is still writing it
    c.put("kept", b"x")
    time.sleep(1.5)  # every queued write and removal has run, and been synced
    n.kill()
    n.start()
    c2 = client_for([n])
    assert c2.batch_exists(keys) == [False] * len(keys)
    assert c2.get("kept") == b"x"


def test_small_records_are_charged_whole_pages(make_node, client_for):
    """Disk capacity counts what the filesystem allocates, not just the bytes."""
    n = make_node("--dram-capacity", "64MiB", "--disk-capacity", "16MiB", "--fsync-interval-ms", "100")
    c = client_for([n])
    keys = [f"small/{i}" for i in range(5000)]
    for i in range(0, len(keys), 1000):
        c.batch_put(keys[i:i + 1000], [b"v" * 100] * 1000)
    time.sleep(1.5)
    n.stop()
    allocated = sum(os.stat(f).st_blocks * 512 for f in glob.glob(os.path.join(n.data_dir, "shards", "*", "*")))
    assert allocated <= 16 << 20
