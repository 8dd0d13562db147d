"""GPUDirect's protocol path through the real NIXL agent, on soft-RoCE.

There is no GPU here, so MEMKV_GPUDIRECT_STAND_IN=1 makes the plugin treat
DRAM_SEG registrations as GPU memory: registered with the rails as device
memory would be, never read or written by the client on the host, sealed
with CRC 0 and checksummed by the node as the bytes land (kSegNodeChecksum).
What is not exercised: dma-buf / peer-memory registration of real device
memory, and libcuda (see docs/protocol.md §11)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEVICE, HOST_B

from nixl_helpers import KvbmBlocks, backend_params, blocks, memkv_agent, run_xfer, seq_hashes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def node_checksummed(nodes) -> int:
    return sum(n.status()["rdma"]["node_checksummed_values"] for n in nodes)


def rdma_in(nodes) -> int:
    return sum(n.status()["rdma"]["bytes_in"] for n in nodes)


def params(cluster, auth_key, licence, **extra):
    return backend_params(cluster, auth_key, licence, rdma_devices=DEVICE, op_timeout_ms="15000", **extra)


def read_back_over_tcp(make_client, cluster, keys) -> list[bytes]:
    """An ordinary client verifies each stored value against the CRC the node computed."""
    c = make_client(cluster, transport="tcp")
    return [c.get(k) for k in keys]


def test_gpu_blocks_go_direct_and_the_node_checksums_them(cluster3, auth_key, licence, make_client, monkeypatch):
    monkeypatch.setenv("MEMKV_GPUDIRECT_STAND_IN", "1")
    agent = memkv_agent(params(cluster3, auth_key, licence, transport="rdma"))
    host = blocks(12, 256 << 10, seed=21)
    hashes = seq_hashes(12, seed=21)
    kv = KvbmBlocks(agent, host, hashes)
    before, in0 = node_checksummed(cluster3), rdma_in(cluster3)
    assert kv.run("WRITE") == "DONE"
    assert node_checksummed(cluster3) - before == 12  # every object sealed with CRC 0, checksummed by the node
    assert rdma_in(cluster3) - in0 == host.nbytes
    original = host.copy()
    assert read_back_over_tcp(make_client, cluster3, [str(h) for h in hashes]) == [b.tobytes() for b in original]
    host[:] = 0
    assert kv.run("READ") == "DONE"  # WRITTEN by the node straight into the "GPU" buffers
    assert np.array_equal(host, original)
    kv.close()


def test_a_tcp_node_gets_the_staged_path_and_rdma_nodes_stay_direct(nodes, auth_key, licence, make_client,
                                                                    monkeypatch):
    monkeypatch.setenv("MEMKV_GPUDIRECT_STAND_IN", "1")
    cluster = [nodes.start(name="gd-rdma"), nodes.start(host=HOST_B, rdma=False, name="gd-tcp")]
    agent = memkv_agent(params(cluster, auth_key, licence, transport="auto"))
    host = blocks(16, 64 << 10, seed=22)
    hashes = seq_hashes(16, seed=22)
    kv = KvbmBlocks(agent, host, hashes)
    assert kv.run("WRITE") == "DONE"
    on_rdma = node_checksummed(cluster[:1])
    tcp_keys = cluster[1].status()["keys"]
    assert on_rdma > 0 and tcp_keys > 0 and on_rdma + tcp_keys == 16
    assert cluster[1].status()["rdma"]["node_checksummed_values"] == 0
    original = host.copy()
    host[:] = 0
    assert kv.run("READ") == "DONE"
    assert np.array_equal(host, original)
    kv.close()


def test_gapped_reads_into_gpu_memory_are_staged(cluster3, auth_key, licence, monkeypatch):
    monkeypatch.setenv("MEMKV_GPUDIRECT_STAND_IN", "1")
    agent = memkv_agent(params(cluster3, auth_key, licence, transport="rdma"))
    src = blocks(1, 1 << 20, seed=23)[0]
    dst = np.zeros(2 << 20, dtype=np.uint8)
    regs = [agent.register_memory([(a.ctypes.data, a.nbytes, 0, "")], "DRAM", backends=["MEMKV"]) for a in (src, dst)]
    obj = agent.register_memory([(0, src.nbytes, 777001, "")], "OBJ", backends=["MEMKV"])
    assert run_xfer(agent, "WRITE", agent.get_xfer_descs([(src.ctypes.data, src.nbytes, 0)], "DRAM"),
                    agent.get_xfer_descs([(0, src.nbytes, 777001)], "OBJ")) == "DONE"
    # Two pieces of the object with a gap between them, into GPU memory.
    local = agent.get_xfer_descs([(dst.ctypes.data, 4096, 0), (dst.ctypes.data + (1 << 20), 8192, 0)], "DRAM")
    remote = agent.get_xfer_descs([(0, 4096, 777001), (65536, 8192, 777001)], "OBJ")
    assert run_xfer(agent, "READ", local, remote) == "DONE"
    assert np.array_equal(dst[:4096], src[:4096])
    assert np.array_equal(dst[1 << 20:(1 << 20) + 8192], src[65536:65536 + 8192])
    agent.deregister_memory(obj, backends=["MEMKV"])
    for r in regs:
        agent.deregister_memory(r, backends=["MEMKV"])


def test_gpudirect_off_keeps_every_value_checksummed_by_the_client(cluster3, auth_key, licence, monkeypatch):
    monkeypatch.setenv("MEMKV_GPUDIRECT_STAND_IN", "1")
    agent = memkv_agent(params(cluster3, auth_key, licence, transport="rdma", gpudirect="off"))
    host = blocks(4, 64 << 10, seed=24)
    kv = KvbmBlocks(agent, host, seq_hashes(4, seed=24))
    before = node_checksummed(cluster3)
    assert kv.run("WRITE") == "DONE"
    assert node_checksummed(cluster3) == before
    kv.close()
