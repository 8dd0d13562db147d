"""Dead and hung nodes: errors within the configured timeout, never a hang;
the rest of the cluster keeps serving."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from nixl_memkv import ConnectionFailed
from nixl_memkv.errors import BatchError


def test_node_killed_mid_batch_errors_quickly(make_node, client_for):
    a = make_node("--dram-capacity", "512MiB", "--disk-capacity", "0", name="a")
    b = make_node("--dram-capacity", "512MiB", "--disk-capacity", "0", name="b")
    c = client_for([a, b], op_timeout_ms=5000)
    keys = [f"mb/{i}" for i in range(400)]
    vals = [bytes(1 << 20)] * len(keys)
    err: list[BaseException] = []

    def run():
        try:
            for _ in range(20):
                c.batch_put(keys, vals)
        except BaseException as e:
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    b.kill()
    killed = time.monotonic()
    t.join(30)
    assert not t.is_alive(), "batch hung after a node died"
    # Within the 5 s op timeout (plus slack for a loaded 2-core machine), not after 30 s.
    assert time.monotonic() - killed < 5 + 3
    assert err and isinstance(err[0], BatchError)
    assert "unavailable" in " ".join(err[0].failed.values())
    # Keys on the live node still work; those on the dead one read as errors or misses.
    live = [k for k in keys if c.server_for(k) == a.address]
    assert all(c.batch_exists(live))
    with pytest.raises(ConnectionFailed):
        c.batch_get(keys)
    got = c.batch_get(keys, allow_partial=True)
    assert all((v is not None) == (c.server_for(k) == a.address) for k, v in zip(keys, got))


def test_hung_node_times_out(make_node, client_for):
    n = make_node("--dram-capacity", "64MiB", "--disk-capacity", "0")
    c = client_for([n], op_timeout_ms=1500)
    c.put("k", b"v")
    n.pause()
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailed, match="timed out"):
            c.get("k")
        assert time.monotonic() - t0 < 6
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailed):
            c.batch_get(["k", "k2"])
        assert time.monotonic() - t0 < 6
    finally:
        os.kill(n.proc.pid, signal.SIGCONT)
    assert c.get("k") == b"v"  # recovers once the node runs again


def test_hung_node_costs_one_op_timeout_not_two(make_node, client_for):
    """A pooled connection that times out is not retried on a fresh one: a
    stale connection (node restarted) fails at once, so a timeout means the
    node is hung or cut off, and the retry's connect would succeed (the
    kernel accepts for a paused process) only to wait out the handshake too."""
    n = make_node("--dram-capacity", "64MiB", "--disk-capacity", "0")
    c = client_for([n], op_timeout_ms=2000)
    c.put("k", b"v")  # leaves a pooled connection
    n.pause()
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionFailed, match="timed out"):
            c.get("k")
        took = time.monotonic() - t0
    finally:
        n.resume()
    # One 2 s op timeout plus slack; retried, it took 2 s + the handshake's 2 s.
    assert 1.8 <= took < 3.2, took
    assert c.get("k") == b"v"


def test_unreachable_node_fails_fast(client_for):
    from conftest import free_port
    c = client_for([f"127.0.0.1:{free_port()}"], connect_timeout_ms=1000)
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailed, match="cannot connect"):
        c.get("x")
    assert time.monotonic() - t0 < 5


def test_sigterm_finishes_in_flight_and_flushes(make_node, client_for):
    n = make_node("--dram-capacity", "512MiB", "--disk-capacity", "1GiB", "--fsync-interval-ms", "60000")
    c = client_for([n])
    keys = [f"term/{i}" for i in range(64)]
    c.batch_put(keys, [bytes([i]) * (1 << 20) for i in range(64)])
    assert n.stop() == 0  # clean exit code
    assert "stopped cleanly" in n.log()
    n.start()
    assert client_for([n]).batch_get(keys) == [bytes([i]) * (1 << 20) for i in range(64)]


def test_close_while_calls_are_in_flight_and_calls_after_close(make_node, client_for):
    """close() must not free the client beneath a call running without the
    GIL, and a call after close() is a clear error, not a crash."""
    # A small DRAM tier: pre-faulting the default one (a quarter of RAM) in
    # the background can hold a fresh node's first reply past this test's
    # short op timeout on a 2-core machine (the likely cause of one CI failure).
    n = make_node("--dram-capacity", "256MiB")
    c = client_for([n], op_timeout_ms=1500)
    c.put("warm", b"x")
    n.pause()
    outcome = []

    def writer():
        try:
            c.batch_put_segments(["a", "b"], [[(0, b"1" * 4096, None)], [(0, b"2" * 4096, None)]])
            outcome.append("stored")
        except Exception as exc:  # noqa: BLE001 - the type is what the test checks
            outcome.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.3)
    c.close()  # the writer is still waiting on the paused node
    t.join(10)
    n.resume()
    assert len(outcome) == 1 and isinstance(outcome[0], (BatchError, ConnectionFailed)), outcome
    with pytest.raises(ConnectionFailed, match="client is closed"):
        c.batch_sizes(["a"], allow_partial=True)
    with pytest.raises(ConnectionFailed, match="client is closed"):
        c.put("k", b"v")


def test_stop_cuts_an_upload_stalled_mid_value(make_node):
    """SIGTERM lets ops in progress finish, but one whose client stopped
    sending mid-value is cut after a short grace, not after the I/O timeout
    (60 s by default: longer than systemd waits)."""
    import struct

    from nixl_memkv._client import _RawSession

    n = make_node("--dram-capacity", "64MiB", "--disk-capacity", "0")
    r = _RawSession(n.host, n.port, bytes.fromhex(n.auth_key), 10000)
    size = 1 << 20
    meta = struct.pack("<H", 5) + b"stall" + struct.pack("<QI", size, 0)
    r.send_raw(r.encode_sealed(0x01, meta, [b"\0" * size])[:300_000])  # a put, 30% of its value
    time.sleep(0.5)  # a worker is in the op, waiting for the rest
    t0 = time.monotonic()
    rc = n.stop()
    took = time.monotonic() - t0
    log = n.log()
    assert rc == 0 and took < 15, (rc, took, log[-2000:])
    assert "stopping: 1 connection(s) still mid-op after 5 s were cut" in log and "stopped cleanly" in log
