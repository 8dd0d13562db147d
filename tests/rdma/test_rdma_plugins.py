"""The LMCache storage plugin and the sglang HiCache backend over RDMA, in
LMCache's real engine and sglang's real controller: each registers its
host pool once, so chunks and pages move zero-copy."""

from __future__ import annotations

import os

import pytest
from conftest import DEVICE

# Under emulation, importing LMCache's engine or sglang's controller (torch,
# transformers, ...) takes 3-6 minutes before the test proper starts, more
# when the guest runs beside the main suite (scripts/test.sh).
pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(1800)]


def common(nodes, auth_key, licence) -> dict:
    return {"servers": ",".join(n.address for n in nodes), "auth_key": auth_key, "license": licence[0],
            "license_pubkey": licence[1], "transport": "rdma", "rdma_devices": DEVICE, "op_timeout_ms": "15000"}


def rdma_in(nodes) -> int:
    return sum(n.status()["rdma"]["bytes_in"] for n in nodes)


def test_lmcache_chunks_move_zero_copy(cluster3, auth_key, licence, tmp_path):
    os.environ["LMCACHE_TRACK_USAGE"] = "false"
    import lmcache_harness as H

    extra = {f"memkv.{k}": v for k, v in common(cluster3, auth_key, licence).items()}
    eng = H.Engine(H.write_config(str(tmp_path / "lmcache.yaml"), extra=extra), 4 * H.CHUNK)
    try:
        before = rdma_in(cluster3)
        tokens, data = eng.store_prompt(seed=3, ntokens=4 * H.CHUNK)
        eng.clear_local()
        assert eng.lookup(tokens) == 4 * H.CHUNK
        got, kv = eng.retrieve(tokens)
        assert got == 4 * H.CHUNK and kv.equal(data)
        stats = eng.plugin._client._native.rdma_stats()
        assert stats["registered_bytes"] > 0  # LMCache's CPU pool
        assert stats["zero_copy_bytes"] >= 2 * data.numel() * data.element_size()
        assert rdma_in(cluster3) - before >= data.numel() * data.element_size()
    finally:
        eng.close()


def test_sglang_pages_move_zero_copy(cluster3, auth_key, licence):
    # sglang keeps 10 GiB of host memory in reserve: scripts/test.sh gives the guest 12 GiB.
    import torchvision_cpu_shim  # noqa: F401  (sglang's imports reach torchvision)

    import sglang_harness as S
    import torch

    extra = dict(S.MEMKV_DYNAMIC, interface_v1=1, **common(cluster3, auth_key, licence))
    rig = S.Rig(layout="page_first", extra=extra)
    try:
        pages = 40
        data = rig.page_data(5, pages)
        tokens = rig.tokens(5, pages)
        idx = rig.write_pages(data)
        assert rig.backup(idx, tokens) == pages * rig.page
        rig.host.free(idx)
        rig.zero_host()
        hit, done, dst = rig.prefetch(tokens)
        assert hit == done == pages * rig.page
        assert all(torch.equal(a, b) for a, b in zip(rig.read_pages(dst, pages), data))
        stats = rig.backend._client._native.rdma_stats()
        assert stats["registered_bytes"] > 0 and stats["staged_bytes"] == 0
        assert stats["zero_copy_bytes"] >= 2 * pages * rig.backend.page_bytes
    finally:
        rig.close()
