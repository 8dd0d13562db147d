"""The real NIXL agent (nixl_cu12 from PyPI) loading libplugin_MEMKV.so with
transport=rdma: KVBM-shaped blocks and the layer-separate layout move by
RDMA straight from and to the DRAM_SEG registrations."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEVICE

from nixl_helpers import KvbmBlocks, backend_params, blocks, layer_separate_descs, memkv_agent, run_xfer, seq_hashes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def params(cluster3, auth_key, licence):
    return backend_params(cluster3, auth_key, licence, transport="rdma", rdma_devices=DEVICE, op_timeout_ms="15000")


def rdma_bytes(nodes) -> tuple[int, int]:
    st = [n.status()["rdma"] for n in nodes]
    return sum(s["bytes_in"] for s in st), sum(s["bytes_out"] for s in st)


def test_kvbm_blocks_over_rdma(params, cluster3):
    agent = memkv_agent(params)
    host = blocks(16, 1 << 20, seed=5)
    hashes = seq_hashes(16, seed=5)
    kv = KvbmBlocks(agent, host, hashes)
    in0, out0 = rdma_bytes(cluster3)
    assert kv.run("WRITE") == "DONE"
    original = host.copy()
    host[:] = 0
    assert kv.run("READ") == "DONE"
    assert np.array_equal(host, original)
    in1, out1 = rdma_bytes(cluster3)
    assert in1 - in0 == host.nbytes and out1 - out0 == host.nbytes
    kv.close()


def test_layer_separate_layout_over_rdma(params, cluster3):
    layers, n_blocks, region = 8, 4, 16 * 1024
    agent = memkv_agent(params)
    k = blocks(layers, n_blocks * region, seed=1)
    v = blocks(layers, n_blocks * region, seed=2)
    out_k, out_v = np.zeros_like(k), np.zeros_like(v)
    regs = [agent.register_memory([(a.ctypes.data, a.nbytes, 0, "")], "DRAM", backends=["MEMKV"])
            for a in (k, v, out_k, out_v)]
    hashes = seq_hashes(n_blocks, seed=9)
    objs = agent.register_memory([(0, layers * 2 * region, h, "") for h in hashes], "OBJ", backends=["MEMKV"])

    def descs(kb, vb):
        return layer_separate_descs(agent, hashes, kb, vb, region)

    in0, out0 = rdma_bytes(cluster3)
    for op, bufs in (("WRITE", (k, v)), ("READ", (out_k, out_v))):
        assert run_xfer(agent, op, *descs(*bufs)) == "DONE"
    assert np.array_equal(out_k, k) and np.array_equal(out_v, v)
    in1, out1 = rdma_bytes(cluster3)
    assert in1 - in0 == k.nbytes + v.nbytes and out1 - out0 == k.nbytes + v.nbytes
    agent.deregister_memory(objs, backends=["MEMKV"])
    for r in regs:
        agent.deregister_memory(r, backends=["MEMKV"])
