"""The native client and the node over real RDMA verbs (soft-RoCE rxe0):
round trips of every size and buffer type, registered and not, batches
over three nodes, scatter reads, the bytes crossing rxe0, staging under
contention, and a node killed mid-batch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import HOST_B, path_mtu, port_counter

from nixl_memkv.errors import BatchError, ConnectionFailed

SIZES = [0, 1, 4095, 4096, 65536, (1 << 20) + 3, 4 << 20, 16 << 20]


def payload(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_round_trips_every_size_and_buffer_type(cluster3, make_client):
    # 8 MiB of staging in 4 MiB slots: values up to 4 MiB are staged, larger
    # ones registered for the request. No registration cache: a buffer that
    # happens to reuse a freed one's address would count as seen twice and be
    # registered (zero-copy), which this test is not about.
    c = make_client(cluster3, staging_size_mb=8, staging_slot_mb=4, registration_cache_mb=0)
    assert c._native.transport == "rdma"
    for i, n in enumerate(SIZES):
        v = payload(n, i)
        for kind, value in (("bytes", v.tobytes()), ("bytearray", bytearray(v.tobytes())), ("numpy", v)):
            key = f"rt/{n}/{kind}"
            c.put(key, value)
            assert c.get(key) == v.tobytes(), (n, kind)
            out = bytearray(n + 7)
            assert c.get_into(key, out) == n
            assert bytes(out[:n]) == v.tobytes()
            arr = np.zeros(n, dtype=np.uint8)
            assert c.get_into(key, arr) == n and np.array_equal(arr, v)
    s = c._native.rdma_stats()
    assert s["staged_bytes"] > 0 and s["temp_registered_bytes"] >= 2 * (16 << 20)
    assert s["zero_copy_bytes"] == 0  # nothing was registered yet


def test_torch_tensors_and_multi_part_writes(cluster3, make_client):
    import torch

    c = make_client(cluster3)
    t = torch.randn(3, 1 << 18)  # 3 MiB of float32
    c.put("torch/t", t)
    out = torch.zeros_like(t)
    assert c.get_into("torch/t", out) == t.numel() * 4 and torch.equal(out, t)
    # Three parts over different connections, in any order; visible only when complete.
    v = payload(5 << 20, 3)
    parts = [(2 << 20, v[2 << 20: 4 << 20]), (0, v[: 2 << 20]), (4 << 20, v[4 << 20:])]
    done = [c.put_part("parts/a", 77, v.nbytes, off, p) for off, p in parts]
    assert done == [False, False, True]
    assert c.get("parts/a") == v.tobytes()


def test_registered_buffers_are_zero_copy(cluster3, make_client):
    c = make_client(cluster3)
    pool = np.zeros(8 << 20, dtype=np.uint8)  # stands in for LMCache's / sglang's host pool
    c.register_memory(pool)
    pool[: 4 << 20] = payload(4 << 20, 1)
    before = c._native.rdma_stats()
    c.put("reg/a", pool[: 4 << 20])
    pool[4 << 20:] = 0
    assert c.get_into("reg/a", pool[4 << 20:]) == 4 << 20
    assert np.array_equal(pool[4 << 20:], pool[: 4 << 20])
    after = c._native.rdma_stats()
    assert after["zero_copy_bytes"] - before["zero_copy_bytes"] == 2 * (4 << 20)
    assert after["staged_bytes"] == before["staged_bytes"]
    assert after["registered_bytes"] == 8 << 20
    assert c.unregister_memory(pool)
    c.put("reg/b", pool[:4096])  # staged again once unregistered
    assert c._native.rdma_stats()["staged_bytes"] == after["staged_bytes"] + 4096


def test_batches_over_three_nodes_cross_rxe0(cluster3, make_client):
    c = make_client(cluster3)
    keys = [f"batch/{i}" for i in range(48)]
    vals = [payload(256 << 10, 100 + i) for i in range(48)]
    total = sum(v.nbytes for v in vals)
    sent0 = port_counter("sent_pkts")
    before = [n.status()["rdma"] for n in cluster3]
    c.batch_put(keys, vals)
    outs = [np.zeros(256 << 10, dtype=np.uint8) for _ in keys]
    assert c.batch_get_into(keys, outs) == [256 << 10] * 48
    assert all(np.array_equal(a, b) for a, b in zip(vals, outs))
    after = [n.status()["rdma"] for n in cluster3]
    # Every node took part, and together they moved exactly the payload by RDMA.
    moved_in = [a["bytes_in"] - b["bytes_in"] for a, b in zip(after, before)]
    moved_out = [a["bytes_out"] - b["bytes_out"] for a, b in zip(after, before)]
    assert all(m > 0 for m in moved_in) and sum(moved_in) == total and sum(moved_out) == total
    # The bytes really crossed rxe0: at least one packet per MTU of payload, each way.
    assert (port_counter("sent_pkts") - sent0) * path_mtu() >= 2 * total


def test_scatter_reads_with_gaps_and_partial_ranges(cluster3, make_client):
    c = make_client(cluster3, staging_size_mb=4, staging_slot_mb=1)
    v = payload(3 << 20, 7)
    c.put("scatter/a", v)
    a = np.zeros(4096, dtype=np.uint8)
    b = np.zeros(65536, dtype=np.uint8)
    big = np.zeros(2 << 20, dtype=np.uint8)
    # Small gapped range: staged; large gapped range: streamed inline over TCP.
    r = c.batch_get_segments(["scatter/a", "scatter/a"],
                             [[(100, a, 4096), (10000, b, 65536)], [(0, a[:16], 16), ((1 << 20), big, 2 << 20)]])
    assert r == [3 << 20, 3 << 20]
    assert np.array_equal(b, v[10000:10000 + 65536])
    assert np.array_equal(big, v[1 << 20: 3 << 20]) and np.array_equal(a[:16], v[:16])
    assert c._native.rdma_stats()["inline_frames"] >= 1


def test_many_threads_share_few_staging_slots(cluster3, make_client):
    c = make_client(cluster3, staging_size_mb=2, staging_slot_mb=1)  # two slots for eight threads
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(6):
                v = payload(700 << 10, t * 100 + i)
                c.put(f"stage/{t}/{i}", v)
                out = np.zeros(v.nbytes, dtype=np.uint8)
                assert c.get_into(f"stage/{t}/{i}", out) == v.nbytes and np.array_equal(out, v)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert c._native.rdma_stats()["staging_waits"] > 0


def test_node_killed_mid_batch_fails_in_time_then_serves_again(nodes, make_client):
    n = nodes.start(host=HOST_B, name="victim")
    c = make_client([n], op_timeout_ms=4000)
    keys = [f"kill/{i}" for i in range(64)]
    vals = [payload(1 << 20, i) for i in range(64)]
    err: list[BaseException] = []

    def run() -> None:
        try:
            c.batch_put(keys, vals)
        except BaseException as e:  # noqa: BLE001
            err.append(e)

    t = threading.Thread(target=run)
    t0 = time.monotonic()
    t.start()
    time.sleep(1.0)
    n.kill()
    t.join(60)
    assert not t.is_alive(), "batch hung after the node died"
    assert time.monotonic() - t0 < 30
    assert err and isinstance(err[0], BatchError), err
    n.start()
    # The pool's connections (and queue pairs) are rebuilt: the node serves again over RDMA.
    v = payload(2 << 20, 99)
    c.put("kill/after", v)
    assert c.get("kill/after") == v.tobytes()
    assert n.status()["rdma"]["connections_total"] >= 1
    with pytest.raises(ConnectionFailed):
        n.kill()
        c.get("kill/after")


def test_reused_buffers_are_registered_on_second_use_within_the_bound(cluster3, make_client):
    c = make_client(cluster3, registration_cache_mb=2)
    a = payload(1 << 20, 11)
    s0 = c._native.rdma_stats()
    c.put("cache/a", a)                     # first use: staged
    s1 = c._native.rdma_stats()
    assert s1["staged_bytes"] - s0["staged_bytes"] == a.nbytes and s1["zero_copy_bytes"] == s0["zero_copy_bytes"]
    c.put("cache/a", a)                     # second use: registered, zero-copy
    out = np.zeros_like(a)
    c.get_into("cache/a", out)              # a new buffer: staged
    c.get_into("cache/a", out)              # its second use: zero-copy
    s2 = c._native.rdma_stats()
    assert s2["zero_copy_bytes"] - s1["zero_copy_bytes"] == 2 * a.nbytes
    assert np.array_equal(out, a)
    assert c._native.registration_cache_stats()["registrations"] == 2
    # More reused buffers than the 2 MiB bound: the oldest are deregistered.
    others = [payload(1 << 20, 20 + i) for i in range(4)]
    for _ in range(2):
        for i, b in enumerate(others):
            c.put(f"cache/o{i}", b)
    st = c._native.registration_cache_stats()
    assert st["cached_bytes"] <= 2 << 20 and st["evictions"] >= 4
    assert c._native.rdma_stats()["registered_bytes"] == st["cached_bytes"]
    assert [c.get(f"cache/o{i}") for i in range(4)] == [b.tobytes() for b in others]
    # bytearrays are never held (that would stop their owner resizing them)
    ba = bytearray(a.tobytes())
    c.put("cache/ba", ba)
    c.put("cache/ba", ba)
    ba.extend(b"x")  # still resizable
