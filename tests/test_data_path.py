"""Round trips, batches across nodes, multi-part writes and key limits,
against real node processes."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from nixl_memkv import BatchError, KeyTooLong, ServerError
from nixl_memkv._client import crc32c


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 65535, 65536, (1 << 20) + 3, 64 << 20])
def test_round_trip_sizes(node, client_for, size):
    c = client_for([node])
    value = payload(size, size)
    c.put(f"rt/{size}", value)
    assert c.get(f"rt/{size}") == value
    buf = np.empty(size + 17, dtype=np.uint8)
    assert c.get_into(f"rt/{size}", buf) == size
    assert buf[:size].tobytes() == value
    assert c.size(f"rt/{size}") == size
    st = c.stat(f"rt/{size}")
    assert st["size"] == size and st["crc32c"] == crc32c(value)


def test_value_and_buffer_types(node, client_for):
    c = client_for([node])
    arr = np.arange(1 << 16, dtype=np.float32)
    c.put(b"bytes-key", memoryview(arr))
    c.put("ba", bytearray(b"abc"))
    out = np.zeros_like(arr)
    assert c.get_into(b"bytes-key", out) == arr.nbytes
    assert np.array_equal(out, arr)
    ba = bytearray(8)
    assert c.get_into("ba", ba) == 3 and ba[:3] == b"abc"
    assert c.get("missing") is None and c.get_into("missing", ba) is None
    assert not c.exists("missing") and c.size("missing") is None
    with pytest.raises(TypeError, match="expected bytes"):
        c.put("x", 12345)


def test_torch_cpu_tensors(node, client_for):
    torch = pytest.importorskip("torch")
    c = client_for([node])
    t = torch.randn(64, 128, dtype=torch.bfloat16)
    c.put("tensor", t)
    out = torch.empty_like(t)
    assert c.get_into("tensor", out) == t.numel() * t.element_size()
    assert torch.equal(out, t)
    with pytest.raises(TypeError, match="contiguous"):
        c.put("t2", t.t())


def test_buffer_too_small_is_an_error_and_connection_survives(node, client_for):
    c = client_for([node], num_connections=1)
    c.put("big", payload(1000))
    with pytest.raises(Exception, match="buffer too small: the value is 1000 bytes"):
        c.get_into("big", bytearray(10))
    assert c.get("big") == payload(1000)


def test_remove_and_overwrite(node, client_for):
    c = client_for([node])
    c.put("k", b"one")
    c.put("k", b"second value")
    assert c.get("k") == b"second value"
    assert c.remove("k") is True
    assert c.remove("k") is False
    assert c.get("k") is None


def test_key_limits(node, client_for):
    c = client_for([node])
    c.put("k" * 512, b"ok")
    assert c.get("k" * 512) == b"ok"
    with pytest.raises(KeyTooLong, match="513 bytes: MemKV keys are 1 to 512 bytes"):
        c.put("k" * 513, b"x")
    with pytest.raises(KeyTooLong, match="empty"):
        c.get("")
    with pytest.raises(KeyTooLong):
        c.batch_put(["a", "b" * 600], [b"1", b"2"])


def test_batches_across_three_nodes_agree_on_routing(cluster3, client_for):
    a = client_for(cluster3)
    b = client_for(list(reversed(cluster3)))  # another client, another server order
    keys = [f"blk/{i:05d}" for i in range(300)]
    assert [a.server_for(k) for k in keys] == [b.server_for(k) for k in keys]
    vals = [payload(4096 + i, i) for i in range(len(keys))]
    a.batch_put(keys, vals)
    bufs = [bytearray(4096 + 400) for _ in keys]
    sizes = b.batch_get_into(keys, bufs)
    assert sizes == [len(v) for v in vals]
    assert all(bytes(buf[:n]) == v for buf, n, v in zip(bufs, sizes, vals))
    # Each key lives on exactly its primary node, and every node holds some.
    per_node = [n.status()["keys"] for n in cluster3]
    assert sum(per_node) == len(keys) and min(per_node) > 30
    for n in cluster3:
        solo = client_for([n])
        mine = [k for k in keys if a.server_for(k) == n.address]
        assert all(solo.batch_exists(mine))
    assert b.batch_exists(keys + ["nope"]) == [True] * len(keys) + [False]
    assert b.batch_get(keys[:3] + ["nope"]) == vals[:3] + [None]
    assert a.batch_remove(keys[:10] + ["nope"]) == [True] * 10 + [False]
    assert a.batch_sizes(keys[:11]) == [None] * 10 + [len(vals[10])]


def test_large_batch_splits_into_frames(node, client_for):
    c = client_for([node], num_connections=3)
    keys = [f"many/{i}" for i in range(10000)]
    c.batch_put(keys, [i.to_bytes(4, "little") for i in range(10000)])
    assert all(c.batch_exists(keys))
    got = c.batch_get(keys[::997])
    assert got == [i.to_bytes(4, "little") for i in range(0, 10000, 997)]


def test_concurrent_clients_threads(node, client_for):
    c = client_for([node], num_connections=4)
    errors = []

    def worker(t):
        try:
            for i in range(50):
                v = payload(100_000 + t, t * 1000 + i)
                c.put(f"t{t}/{i}", v)
                assert c.get(f"t{t}/{i}") == v
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_multipart_write_visible_only_when_complete(node, client_for):
    a = client_for([node])
    b = client_for([node])
    total = 3 * (1 << 20) + 100
    data = payload(total, 9)
    parts = [(0, 1 << 20), (2 << 20, total - (2 << 20)), (1 << 20, 1 << 20)]
    for i, (off, n) in enumerate(parts):
        assert b.get("obj") is None  # nothing visible before the last byte
        done = a.put_part("obj", 77, total, off, data[off:off + n])
        assert done == (i == len(parts) - 1)
    assert b.get("obj") == data
    # Resending a part of a finished upload starts a new upload; overlapping parts are refused.
    a.put_part("obj2", 1, 100, 0, data[:50])
    assert a.put_part("obj2", 1, 100, 0, data[:50]) is False  # exact resend: ignored
    with pytest.raises(ServerError, match="overlaps"):
        a.put_part("obj2", 1, 100, 25, data[25:75])
    a.abort_part("obj2", 1)
    assert a.put_part("obj2", 2, 100, 50, data[50:100]) is False
    assert a.put_part("obj2", 2, 100, 0, data[:50]) is True
    assert a.get("obj2") == data[:100]


def test_batch_put_reports_failed_items(make_node, client_for):
    n = make_node("--dram-capacity", "8MiB", "--disk-capacity", "0")
    c = client_for([n])
    with pytest.raises(BatchError) as e:
        c.batch_put(["small", "huge"], [b"x", bytes(16 << 20)])
    assert list(e.value.failed) == ["huge"] and "too large" in e.value.failed["huge"]
    assert c.get("small") == b"x"
    with pytest.raises(ServerError, match="accepts values up to"):
        c.put("huge", bytes(16 << 20))


def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


_IMPL_NEEDS = {"slice-by-8": set(), "sse4.2": {"sse4_2"}, "pclmulqdq": {"sse4_2", "pclmulqdq"},
               "vpclmulqdq-avx2": {"avx2", "vpclmulqdq"}}


@pytest.mark.parametrize("impl", ["slice-by-8", "sse4.2", "pclmulqdq", "vpclmulqdq-avx2", ""])
def test_crc32c_implementations_agree(impl):
    import subprocess
    import sys
    code = ("import numpy as np; from nixl_memkv._client import crc32c, crc32c_impl; "
            "d=np.random.default_rng(1).integers(0,256,1<<20,dtype=np.uint8).tobytes(); "
            "print(crc32c_impl(), crc32c(b'123456789'), [crc32c(d[o:o+n]) for o,n in "
            "[(0,0),(1,3),(3,100),(7,255),(0,256),(5,511),(0,4096),(13,100000),(0,1<<20)]])")
    env = dict(os.environ, MEMKV_CRC32C_IMPL=impl)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd="/").stdout
    name, check, rest = out.split(" ", 2)
    if impl and _IMPL_NEEDS[impl] <= _cpu_flags():
        assert name == impl  # the path asked for really ran
    assert int(check) == 0xE3069283
    ref = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, MEMKV_CRC32C_IMPL="slice-by-8"),
                         capture_output=True, text=True, check=True, cwd="/").stdout.split(" ", 2)[2]
    assert rest == ref
