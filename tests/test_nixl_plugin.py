"""libplugin_MEMKV.so inside the real nixl_cu12 agent from PyPI, against
real MemKV nodes: KVBM's block shapes, layouts, routing, restarts, failures,
concurrency and teardown."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from nixl_helpers import (PLUGIN_DIR, KvbmBlocks, backend_params, blocks, layer_separate_descs, memkv_agent,
                          nixl_agent, nixl_agent_config, run_xfer, seq_hashes, wait)

from nixl_memkv import Client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def params(node, auth_key, licence):
    return backend_params([node], auth_key, licence)


def test_plugin_is_found_beside_builtin_backends():
    names = sorted(os.listdir(PLUGIN_DIR))
    assert "libplugin_MEMKV.so" in names and "libplugin_POSIX.so" in names and "libplugin_UCX.so" in names
    agent = nixl_agent("list", nixl_agent_config(backends=[]))
    plugins = agent.get_plugin_list()
    assert "MEMKV" in plugins and "POSIX" in plugins
    # VRAM_SEG is advertised exactly when this process has libcudart loaded
    # (no GPU here, but an earlier test may have loaded the library).
    with open("/proc/self/maps") as f:
        cudart = "libcudart.so" in f.read()
    assert set(agent.get_plugin_mem_types("MEMKV")) == {"DRAM_SEG", "OBJ_SEG"} | ({"VRAM_SEG"} if cudart else set())
    assert {"servers", "auth_key", "license", "namespace", "num_connections", "gpudirect"} <= \
        set(agent.get_plugin_params("MEMKV"))


@pytest.mark.parametrize("block_size", [2 << 20, 4 << 20])
def test_kvbm_g4_offload_onboard(params, block_size):
    agent = memkv_agent(params)
    host = blocks(16, block_size, seed=block_size)
    hashes = seq_hashes(16, seed=block_size)
    kv = KvbmBlocks(agent, host, hashes)
    assert kv.run("WRITE") == "DONE"
    original = host.copy()
    host[:] = 0  # dropped locally
    assert kv.run("READ") == "DONE"
    assert np.array_equal(host, original)
    # The plain client agrees on keys: decimal devIds, exact bytes.
    c = Client(servers=params["servers"].split(","), auth_key=params["auth_key"], transport="tcp")
    assert c.get(str(hashes[3])) == original[3].tobytes()
    c.close()
    kv.close()


def test_layer_separate_layout(params):
    """32 layers x 2 regions (K, V) per block: 64 descriptors per object, from
    per-layer buffers, written as one object each and read back."""
    layers, n_blocks, region = 32, 4, 16 * 1024
    agent = memkv_agent(params)
    k = blocks(layers, n_blocks * region, seed=1)   # one buffer per layer, blocks side by side
    v = blocks(layers, n_blocks * region, seed=2)
    out_k, out_v = np.zeros_like(k), np.zeros_like(v)
    regs = [agent.register_memory([(a.ctypes.data, a.nbytes, 0, "")], "DRAM", backends=["MEMKV"])
            for a in (k, v, out_k, out_v)]
    hashes = seq_hashes(n_blocks, seed=7)
    block_bytes = layers * 2 * region
    objs = agent.register_memory([(0, block_bytes, h, "") for h in hashes], "OBJ", backends=["MEMKV"])

    def descs(kb, vb):
        return layer_separate_descs(agent, hashes, kb, vb, region)

    for op, bufs in (("WRITE", (k, v)), ("READ", (out_k, out_v))):
        assert run_xfer(agent, op, *descs(*bufs)) == "DONE"
    assert np.array_equal(out_k, k) and np.array_equal(out_v, v)
    # A partial READ (one layer's V region of every block) fetches just that span.
    part = np.zeros((n_blocks, region), dtype=np.uint8)
    part_reg = agent.register_memory([(part.ctypes.data, part.nbytes, 0, "")], "DRAM", backends=["MEMKV"])
    layer = 5
    local = agent.get_xfer_descs([(part[b].ctypes.data, region, 0) for b in range(n_blocks)], "DRAM")
    remote = agent.get_xfer_descs([((layer * 2 + 1) * region, region, h) for h in hashes], "OBJ")
    h = agent.initialize_xfer("READ", local, remote, agent.name, backends=["MEMKV"])
    assert wait(agent, h) == "DONE"
    agent.release_xfer_handle(h)
    assert all(np.array_equal(part[b], v[layer][b * region:(b + 1) * region]) for b in range(n_blocks))
    agent.deregister_memory(part_reg, backends=["MEMKV"])
    # Stored as whole blocks: layer 0 K of block 0 opens the object.
    c = Client(servers=params["servers"].split(","), auth_key=params["auth_key"], transport="tcp")
    obj = c.get(str(hashes[0]))
    assert len(obj) == block_bytes and obj[:region] == k[0][:region].tobytes()
    c.close()
    agent.deregister_memory(objs, backends=["MEMKV"])
    for r in regs:
        agent.deregister_memory(r, backends=["MEMKV"])


def test_write_with_a_gap_is_refused(params, capfd):
    agent = memkv_agent(params)
    buf = blocks(1, 8192)
    agent.register_memory([(buf.ctypes.data, buf.nbytes, 0, "")], "DRAM", backends=["MEMKV"])
    agent.register_memory([(0, 8192, 42, "")], "OBJ", backends=["MEMKV"])
    local = agent.get_xfer_descs([(buf.ctypes.data, 4096, 0)], "DRAM")
    remote = agent.get_xfer_descs([(4096, 4096, 42)], "OBJ")
    with pytest.raises(Exception):
        agent.initialize_xfer("WRITE", local, remote, agent.name, backends=["MEMKV"])
    assert "has a gap at bytes [0, 4096)" in capfd.readouterr().err


def test_metainfo_keys_and_namespace(node, auth_key, licence):
    agent = memkv_agent(backend_params([node], auth_key, licence, namespace="tenant-a/"))
    data = blocks(2, 65536, seed=3)
    agent.register_memory([(data.ctypes.data, data.nbytes, 0, "")], "DRAM", backends=["MEMKV"])
    agent.register_memory([(0, 65536, 1, "model/x/block-1"), (0, 65536, 2, "model/x/block-2")], "OBJ",
                          backends=["MEMKV"])
    local = agent.get_xfer_descs([(data.ctypes.data, 65536, 0), (data.ctypes.data + 65536, 65536, 0)], "DRAM")
    remote = agent.get_xfer_descs([(0, 65536, 1), (0, 65536, 2)], "OBJ")
    h = agent.initialize_xfer("WRITE", local, remote, agent.name, backends=["MEMKV"])
    assert wait(agent, h) == "DONE"
    agent.release_xfer_handle(h)
    c = Client(servers=[node.address], auth_key=auth_key, transport="tcp")
    assert c.get("tenant-a/model/x/block-1") == data[0].tobytes()
    assert c.get("tenant-a/model/x/block-2") == data[1].tobytes()
    # metaInfo names the object; devId is not used, and the namespace prefixes every key.
    assert not c.exists("tenant-a/1") and not c.exists("model/x/block-1")
    c.close()


def test_blocks_spread_over_three_nodes(cluster3, auth_key, licence):
    params = backend_params(cluster3, auth_key, licence)
    agent = memkv_agent(params)
    host = blocks(48, 256 * 1024, seed=5)
    hashes = seq_hashes(48, seed=5)
    kv = KvbmBlocks(agent, host, hashes)
    assert kv.run("WRITE") == "DONE"
    counts = [n.status()["keys"] for n in cluster3]
    assert sum(counts) == 48 and min(counts) >= 5
    c = Client(servers=[n.address for n in reversed(cluster3)], auth_key=auth_key, transport="tcp")
    for h in hashes[:10]:
        node = next(n for n in cluster3 if n.address == c.server_for(str(h)))
        assert Client(servers=[node.address], auth_key=auth_key, transport="tcp").exists(str(h))
    original = host.copy()
    host[:] = 0
    assert kv.run("READ") == "DONE" and np.array_equal(host, original)
    c.close()


def test_another_process_reads_what_this_one_wrote(params, tmp_path):
    agent = memkv_agent(params)
    host = blocks(8, 1 << 20, seed=11)
    hashes = seq_hashes(8, seed=11)
    KvbmBlocks(agent, host, hashes).run("WRITE")
    expect = host.sum(axis=1).tolist()
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(f"""
        import sys, json
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from nixl_helpers import KvbmBlocks, memkv_agent
        import numpy as np
        params = json.loads(sys.argv[1])
        agent = memkv_agent(params, name="reader")
        host = np.zeros((8, 1 << 20), dtype=np.uint8)
        kv = KvbmBlocks(agent, host, {hashes!r})
        assert kv.run("READ") == "DONE"
        print(json.dumps(host.sum(axis=1).tolist()))
    """))
    import json
    out = subprocess.run([sys.executable, str(script), json.dumps(params)], capture_output=True, text=True,
                         cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expect


def test_read_after_node_restart(node, params):
    agent = memkv_agent(params)
    host = blocks(16, 1 << 20, seed=13)
    hashes = seq_hashes(16, seed=13)
    kv = KvbmBlocks(agent, host, hashes)
    assert kv.run("WRITE") == "DONE"
    original = host.copy()
    node.restart()
    host[:] = 0
    assert kv.run("READ") == "DONE"  # stale pooled connections are replaced transparently
    assert np.array_equal(host, original)


def test_read_of_missing_object_fails_naming_the_key(params, capfd):
    agent = memkv_agent(params)
    host = blocks(2, 4096)
    kv = KvbmBlocks(agent, host, [123456789, 987654321])
    assert kv.run("READ") == "ERR"
    err = capfd.readouterr().err
    assert "not found" in err and "123456789" in err


def test_node_killed_mid_transfer_errors_without_hanging(make_node, auth_key, licence):
    nodes = [make_node("--dram-capacity", "1GiB", "--disk-capacity", "0", name=f"k{i}") for i in range(2)]
    agent = memkv_agent(backend_params(nodes, auth_key, licence))
    host = blocks(64, 4 << 20, seed=17)
    kv = KvbmBlocks(agent, host, seq_hashes(64, seed=17))
    states = []

    def loop():
        for _ in range(50):
            s = kv.run("WRITE")
            states.append(s)
            if s == "ERR":
                return

    t = threading.Thread(target=loop)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    nodes[1].kill()
    t.join(60)
    assert not t.is_alive(), "transfer hung after a node died"
    assert states[-1] == "ERR" and time.monotonic() - t0 < 60


def test_query_memory(params):
    agent = memkv_agent(params)
    host = blocks(3, 8192, seed=19)
    hashes = seq_hashes(3, seed=19)
    KvbmBlocks(agent, host, hashes).run("WRITE")
    resp = agent.query_memory([(0, 8192, hashes[0], ""), (0, 8192, 5, ""), (0, 8192, hashes[2], "")], "MEMKV", "OBJ")
    assert resp[1] is None
    assert resp[0]["size"] == "8192" and resp[0]["key"] == str(hashes[0])
    assert resp[2]["size"] == "8192"


def test_prepped_transfer_reused(params):
    agent = memkv_agent(params)
    host = blocks(16, 1 << 20, seed=23)
    hashes = seq_hashes(16, seed=23)
    kv = KvbmBlocks(agent, host, hashes)
    local = agent.prep_xfer_dlist("NIXL_INIT_AGENT",
                                  [(host.ctypes.data + i * (1 << 20), 1 << 20, 0) for i in range(16)], "DRAM",
                                  backends=["MEMKV"])
    remote = agent.prep_xfer_dlist(agent.name, [(0, 1 << 20, h) for h in hashes], "OBJ", backends=["MEMKV"])
    write = agent.make_prepped_xfer("WRITE", local, list(range(16)), remote, list(range(16)), backends=["MEMKV"])
    read = agent.make_prepped_xfer("READ", local, list(range(16)), remote, list(range(16)), backends=["MEMKV"])
    for round_ in range(3):  # the same handles, posted again and again
        host[:] = round_ + 1
        assert wait(agent, write) == "DONE"
        host[:] = 0
        assert wait(agent, read) == "DONE"
        assert (host == round_ + 1).all()
    agent.release_xfer_handle(write)
    agent.release_xfer_handle(read)
    kv.close()


def test_four_threads_posting_at_once(params):
    agent = memkv_agent(params)
    errors = []

    def worker(t):
        try:
            host = blocks(8, 512 * 1024, seed=100 + t)
            kv = KvbmBlocks(agent, host, seq_hashes(8, seed=100 + t))
            for _ in range(5):
                assert kv.run("WRITE") == "DONE"
                original = host.copy()
                host[:] = 0
                assert kv.run("READ") == "DONE"
                assert np.array_equal(host, original)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


@pytest.mark.parametrize("order", ["deregister-then-teardown", "teardown-with-registrations"])
def test_teardown_orders(params, tmp_path, order):
    # In a subprocess: a teardown bug is a crash, and a crash must fail the test, not the suite.
    script = tmp_path / "teardown.py"
    script.write_text(textwrap.dedent(f"""
        import sys, json, gc
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from nixl_helpers import KvbmBlocks, memkv_agent, blocks, seq_hashes, wait
        agent = memkv_agent(json.loads(sys.argv[1]))
        host = blocks(4, 65536)
        kv = KvbmBlocks(agent, host, seq_hashes(4))
        assert kv.run("WRITE") == "DONE"
        pending = kv.xfer("READ")
        assert wait(agent, pending) == "DONE"   # left unreleased on purpose
        if {order!r} == "deregister-then-teardown":
            agent.release_xfer_handle(pending)
            kv.close()
        del kv, pending, agent
        gc.collect()
        print("clean exit")
    """))
    import json
    out = subprocess.run([sys.executable, str(script), json.dumps(params)], capture_output=True, text=True, cwd="/",
                         timeout=120)
    assert out.returncode == 0 and "clean exit" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("bad, message", [
    ({"license": ""}, "no license configured"),
    ({"license_pubkey": "00" * 32}, "tampered or not issued by a trusted key"),
    ({"num_connections": "lots"}, "num_connections"),
    ({"servers": ""}, "MEMKV_SERVERS"),
    ({"transport": "rdma", "rdma_devices": "mlx5_0"}, "none of MEMKV_RDMA_DEVICES=mlx5_0 is visible"),
    ({"workers": "0"}, "workers"),
    ({"no_such_param": "1"}, "no_such_param"),
])
def test_bad_params_or_licence_fail_backend_creation(params, bad, message, capfd, monkeypatch):
    for var in [k for k in os.environ if k.startswith("MEMKV_")]:
        monkeypatch.delenv(var)
    agent = nixl_agent(f"bad-{message[:8]}", nixl_agent_config(backends=[]))
    p = dict(params)
    p.update(bad)
    with pytest.raises(Exception):
        agent.create_backend("MEMKV", p)
    err = capfd.readouterr().err
    assert "MEMKV backend creation failed" in err and message in err, err[-2000:]
    assert "MEMKV" not in agent.backends


def test_memkv_beside_posix_in_one_agent(params, tmp_path):
    agent = nixl_agent("both", nixl_agent_config(backends=["POSIX"]))
    agent.create_backend("MEMKV", params)
    data = blocks(1, 1 << 20, seed=29)
    out = np.zeros_like(data)
    agent.register_memory([(data.ctypes.data, data.nbytes, 0, ""), ], "DRAM")
    agent.register_memory([(out.ctypes.data, out.nbytes, 0, "")], "DRAM")
    # POSIX: DRAM -> file
    fd = os.open(tmp_path / "blk", os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, data.nbytes)
    agent.register_memory([(0, data.nbytes, fd, "blk")], "FILE", backends=["POSIX"])
    h = agent.initialize_xfer("WRITE", agent.get_xfer_descs([(data.ctypes.data, data.nbytes, 0)], "DRAM"),
                              agent.get_xfer_descs([(0, data.nbytes, fd)], "FILE"), agent.name, backends=["POSIX"])
    assert wait(agent, h) == "DONE"
    agent.release_xfer_handle(h)
    # MEMKV: DRAM -> object -> DRAM
    agent.register_memory([(0, data.nbytes, 777, "")], "OBJ", backends=["MEMKV"])
    for op, buf in (("WRITE", data), ("READ", out)):
        h = agent.initialize_xfer(op, agent.get_xfer_descs([(buf.ctypes.data, buf.nbytes, 0)], "DRAM"),
                                  agent.get_xfer_descs([(0, buf.nbytes, 777)], "OBJ"), agent.name,
                                  backends=["MEMKV"])
        assert wait(agent, h) == "DONE"
        agent.release_xfer_handle(h)
    assert np.array_equal(out, data)
    with open(tmp_path / "blk", "rb") as f:
        assert f.read() == data.tobytes()
    os.close(fd)


def test_plugin_in_a_non_python_cpp_host(node, auth_key, licence, tmp_path):
    """A plain C++ program (no Python of its own) loads NIXL through
    libnixl_capi.so; the plugin starts its own embedded Python for config and
    licence, then moves blocks."""
    import shutil
    from nixl_memkv.nixl import nixl_default_plugin_dir
    libs = os.path.dirname(nixl_default_plugin_dir())
    exe = tmp_path / "memkv_capi_host"
    src = os.path.join(os.path.dirname(__file__), "capi_host", "memkv_capi_host.cpp")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    subprocess.run([cxx, "-std=c++17", "-O1", src, "-o", str(exe), f"-L{libs}", "-l:libnixl_capi.so",
                    f"-Wl,-rpath,{libs}"], check=True, capture_output=True, timeout=120)
    assert "libpython" not in subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMKV_", "PYTHON"))}
    env.update(NIXL_PLUGIN_DIR=PLUGIN_DIR, MEMKV_SERVERS=node.address, MEMKV_AUTH_KEY=auth_key,
               MEMKV_LICENSE=licence[0], MEMKV_LICENSE_PUBKEY=licence[1], MEMKV_TRANSPORT="tcp")
    out = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "capi host: write=0 read=0 equal=yes" in out.stdout
    assert "license verified" in out.stderr and "embedded Python runtime" in out.stderr


@pytest.mark.parametrize("blocks_n, block_size, staging, expect", [
    (16, 2 << 20, ("3", "1"), "DONE"),     # 32 MiB through 3 x 1 MiB slots: objects split across slots, many groups
    (5, 3 << 20 | 12345, ("8", "2"), "DONE"),  # odd sizes straddle slot boundaries
    (2, 4 << 20, ("3", "1"), "ERR"),       # an object larger than the whole pool is refused
])
def test_staged_path_slicing(node, auth_key, licence, tmp_path, blocks_n, block_size, staging, expect):
    """The VRAM_SEG path stages device memory through pinned slots. Without a
    GPU here, MEMKV_STAGE_DRAM=1 routes DRAM transfers through the same slicing
    and grouping code (host memcpy standing in for cudaMemcpy)."""
    script = tmp_path / "staged.py"
    script.write_text(textwrap.dedent(f"""
        import sys, json
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from nixl_helpers import KvbmBlocks, memkv_agent, blocks, seq_hashes
        import numpy as np
        agent = memkv_agent(json.loads(sys.argv[1]))
        host = blocks({blocks_n}, {block_size}, seed=3)
        kv = KvbmBlocks(agent, host, seq_hashes({blocks_n}, seed=3))
        w = kv.run("WRITE")
        original = host.copy()
        host[:] = 0
        r = kv.run("READ") if w == "DONE" else "ERR"
        print(w, r, bool(np.array_equal(host, original)))
    """))
    import json
    params = backend_params([node], auth_key, licence, staging_size_mb=staging[0], staging_slot_mb=staging[1])
    env = dict(os.environ, MEMKV_STAGE_DRAM="1")
    out = subprocess.run([sys.executable, str(script), json.dumps(params)], capture_output=True, text=True, cwd="/",
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    w, r, same = out.stdout.split()[-3:]
    if expect == "DONE":
        assert (w, r, same) == ("DONE", "DONE", "True")
    else:
        assert w == "ERR" and "exceeds the staging pool" in out.stderr


def test_staged_transfer_errors_return_their_slots(node, licence, tmp_path):
    """A staged transfer that fails (here: a wrong auth key) must give its
    pinned slots back; otherwise the next one would wait forever."""
    script = tmp_path / "staged_err.py"
    script.write_text(textwrap.dedent(f"""
        import sys, json
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from nixl_helpers import KvbmBlocks, memkv_agent, blocks, seq_hashes
        agent = memkv_agent(json.loads(sys.argv[1]))
        kv = KvbmBlocks(agent, blocks(2, 1 << 20), seq_hashes(2))
        print(kv.run("WRITE"), kv.run("WRITE"), kv.run("READ"))
    """))
    import json
    from nixl_memkv.auth import generate_auth_key
    params = backend_params([node], generate_auth_key(), licence, staging_size_mb="2", staging_slot_mb="1")
    out = subprocess.run([sys.executable, str(script), json.dumps(params)], capture_output=True, text=True, cwd="/",
                         env=dict(os.environ, MEMKV_STAGE_DRAM="1"), timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["ERR", "ERR", "ERR"]
