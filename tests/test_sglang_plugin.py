"""The sglang HiCache backend inside sglang's real HybridCacheController,
host pools and storage factory (CPU), with real MemKV nodes: every MHA
layout with the zero-copy and flat-page paths, MLA writer and non-writer
ranks, another process as a second replica, key isolation between models,
TP ranks and layouts, a node going down, stats, clear, bad config."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

pytest.importorskip("sglang", reason="sglang is installed by scripts/test.sh")

import torch  # noqa: E402

import sglang_harness as S  # noqa: E402
from memkv_sglang.backend import MemKVHiCacheStorage  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
HERE = os.path.dirname(os.path.abspath(__file__))
PAGES = 130  # more than the controller's 128-page chunk


def extra_for(nodes, auth_key, licence, *, v1: bool = True, **more) -> dict:
    extra = dict(S.MEMKV_DYNAMIC, servers=",".join(n.address for n in nodes), auth_key=auth_key,
                 license=licence[0], license_pubkey=licence[1], transport="tcp", op_timeout_ms=3000,
                 connect_timeout_ms=1000)
    if v1:
        extra["interface_v1"] = 1
    extra.update(more)
    return extra


@pytest.fixture
def rigs():
    made = []

    def make(**kw) -> S.Rig:
        rig = S.Rig(**kw)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


def round_trip(rig: S.Rig, seed: int, pages: int = PAGES) -> tuple[int, int, bool]:
    """Back pages up, drop them from the host, prefetch them back."""
    data = rig.page_data(seed, pages)
    tokens = rig.tokens(seed, pages)
    idx = rig.write_pages(data)
    assert rig.backup(idx, tokens) == pages * rig.page
    rig.host.free(idx)
    rig.zero_host()
    hit, done, dst = rig.prefetch(tokens)
    same = done > 0 and all(torch.equal(a, b) for a, b in zip(rig.read_pages(dst, done // rig.page), data))
    rig.host.free(dst)
    return hit, done, same


@pytest.mark.parametrize("v1", [True, False], ids=["zero-copy", "flat-pages"])
@pytest.mark.parametrize("layout", ["layer_first", "page_first", "page_first_direct", "page_head"])
def test_mha_backup_and_prefetch_are_bit_exact(node, auth_key, licence, rigs, layout, v1):
    rig = rigs(layout=layout, extra=extra_for([node], auth_key, licence, v1=v1))
    assert isinstance(rig.backend, MemKVHiCacheStorage)
    hit, done, same = round_trip(rig, seed=1)
    assert hit == done == PAGES * rig.page and same
    stats = rig.backend.stats()
    assert stats["pages_written"] == PAGES and stats["hits"] == PAGES and stats["bytes_read"] == stats["bytes_written"]
    assert node.status()["keys"] == PAGES  # one object per page


def test_startup_lines_and_key_suffix(node, auth_key, licence, rigs, caplog):
    caplog.set_level(logging.INFO, logger="memkv-client")
    rig = rigs(extra=extra_for([node], auth_key, licence), model="org/llama-3", tp_rank=1, tp_size=4,
               pp_rank=1, pp_size=2)
    messages = [r.getMessage() for r in caplog.records if r.name == "memkv-client"]
    order = ["Creating memkv engine config=PluginConfig {", "memkv-client license verified plan=enterprise",
             f'Server mapped to rail server="{node.address}"',
             f"MemKVHiCacheStorage ready (servers=['{node.address}'], rdma=False, suffix=org-llama-3_1_4_pp1_2)"]
    positions = [next(i for i, m in enumerate(messages) if m.startswith(o)) for o in order]
    assert positions == sorted(positions), messages
    assert auth_key not in "\n".join(messages)
    assert rig.backend.suffix == "org-llama-3_1_4_pp1_2"


@pytest.mark.parametrize("layout", ["layer_first", "page_first", "page_first_direct"])
def test_mla_writer_stores_and_other_ranks_read_it(node, auth_key, licence, rigs, layout):
    extra = extra_for([node], auth_key, licence)
    writer = rigs(kind="mla", layout=layout, extra=extra, tp_rank=0, tp_size=2)
    assert writer.backend.suffix == "test-org-test-model"  # MLA keys do not depend on TP
    hit, done, same = round_trip(writer, seed=2)
    assert hit == done == PAGES * writer.page and same
    reader = rigs(kind="mla", layout=layout, extra=extra, tp_rank=1, tp_size=2)
    data, tokens = reader.page_data(2, PAGES), reader.tokens(2, PAGES)
    idx = reader.write_pages(data)
    assert reader.backup(idx, tokens) == 0 and reader.cc.backup_skip  # non-writer: acked, nothing sent
    assert reader.backend.stats().get("pages_written", 0) == 0
    reader.host.free(idx)
    reader.zero_host()
    hit, done, dst = reader.prefetch(tokens)  # the writer's pages serve rank 1
    assert hit == done == PAGES * reader.page
    assert all(torch.equal(a, b) for a, b in zip(reader.read_pages(dst, PAGES), data))


def test_another_process_prefetches_what_this_one_backed_up(cluster3, auth_key, licence, rigs):
    extra = extra_for(cluster3, auth_key, licence)
    rig = rigs(layout="page_head", extra=extra)
    data, tokens = rig.page_data(3, PAGES), rig.tokens(3, PAGES)
    assert rig.backup(rig.write_pages(data), tokens) == PAGES * rig.page
    held = [n.status()["keys"] for n in cluster3]
    assert sum(held) == PAGES and max(held) < PAGES  # spread over the nodes
    reversed_extra = dict(extra, servers=",".join(n.address for n in reversed(cluster3)))
    config = {"layout": "page_head", "extra": reversed_extra, "seed": 3, "n_pages": PAGES}
    out = subprocess.run([sys.executable, "-P", os.path.join(HERE, "sglang_harness.py"), "prefetch", json.dumps(config)],
                         capture_output=True, text=True, timeout=240, cwd=HERE)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["hit"] == result["done"] == PAGES * rig.page and result["bit_exact"], result


def test_models_tp_ranks_and_layouts_never_share_pages(node, auth_key, licence, rigs):
    extra = extra_for([node], auth_key, licence)
    owner = rigs(extra=extra, model="org/model-a", tp_rank=0, tp_size=2)
    tokens = owner.tokens(4, 16)
    assert owner.backup(owner.write_pages(owner.page_data(4, 16)), tokens) == 16 * owner.page
    assert owner.prefetch(tokens)[0] == 16 * owner.page
    others = [dict(model="org/model-b", tp_rank=0, tp_size=2),        # another model
              dict(model="org/model-a", tp_rank=1, tp_size=2),        # another TP rank
              dict(model="org/model-a", tp_rank=0, tp_size=4),        # another TP size
              dict(model="org/model-a", tp_rank=0, tp_size=2, layout="page_head"),  # other page bytes
              dict(model="org/model-a", tp_rank=0, tp_size=2, heads=4)]            # other geometry
    for kw in others:
        rig = rigs(extra=extra, **kw)
        assert rig.prefetch(tokens)[0] == 0, kw
    # MHA layer_first: zero-copy and flat pages order K/V differently.
    lf_v1 = rigs(layout="layer_first", extra=extra)
    tokens = lf_v1.tokens(5, 8)
    lf_v1.backup(lf_v1.write_pages(lf_v1.page_data(5, 8)), tokens)
    lf_flat = rigs(layout="layer_first", extra=extra_for([node], auth_key, licence, v1=False))
    assert lf_flat.prefetch(tokens)[0] == 0
    same_bytes = rigs(layout="page_first", extra=extra_for([node], auth_key, licence, v1=False))
    owner_pf = rigs(layout="page_first", extra=extra)
    tokens = owner_pf.tokens(6, 8)
    owner_pf.backup(owner_pf.write_pages(owner_pf.page_data(6, 8)), tokens)
    assert same_bytes.prefetch(tokens)[0] == 8 * same_bytes.page  # identical bytes: shared


def test_tenants_do_not_share_pages(make_node, tmp_path, licence, rigs):
    from node_harness import make_tenants

    tenants = str(tmp_path / "tenants.yaml")
    creds = make_tenants(tenants, "sg-a", "sg-b")
    node = make_node("--tenants", tenants, "--dram-capacity", "256MiB", "--disk-capacity", "0")
    a = rigs(extra=extra_for([node], creds["sg-a"]["auth_key"], licence, tenant="sg-a"))
    tokens = a.tokens(9, 16)
    assert a.backup(a.write_pages(a.page_data(9, 16)), tokens) == 16 * a.page
    b = rigs(extra=extra_for([node], creds["sg-b"]["auth_key"], licence, tenant="sg-b"))
    assert b.prefetch(tokens)[0] == 0
    again = rigs(extra=extra_for([node], creds["sg-a"]["auth_key"], licence, tenant="sg-a"))
    hit, done, idx = again.prefetch(tokens)
    assert hit == done == 16 * again.page
    got = again.read_pages(idx, 16)
    assert all(torch.equal(x, y) for x, y in zip(got, again.page_data(9, 16)))


def test_node_down_prefetch_misses_and_sglang_keeps_serving(node, auth_key, licence, rigs):
    rig = rigs(extra=extra_for([node], auth_key, licence))
    data, tokens = rig.page_data(7, 20), rig.tokens(7, 20)
    idx = rig.write_pages(data)
    assert rig.backup(idx, tokens) == 20 * rig.page
    node.stop()  # a clean stop keeps every acknowledged page
    assert rig.prefetch(tokens)[:2] == (0, 0)           # a miss, not an exception
    assert rig.backup(idx, rig.tokens(8, 20)) == 0       # backups report nothing done
    assert rig.backend.stats()["write_failures"] == 20
    node.start()                                         # same data dir: the pages are back
    hit, done, dst = rig.prefetch(tokens)
    assert hit == done == 20 * rig.page
    assert all(torch.equal(a, b) for a, b in zip(rig.read_pages(dst, 20), data))


def test_backups_of_stored_pages_are_not_sent_again(node, auth_key, licence, rigs):
    extra = extra_for([node], auth_key, licence)
    first, second = rigs(extra=extra), rigs(extra=extra)
    data, tokens = first.page_data(9, 40), first.tokens(9, 40)
    first.backup(first.write_pages(data), tokens)
    assert second.backup(second.write_pages(data), tokens) == 40 * second.page
    assert second.backend.stats() == {"pages_written": 0, "pages_already_stored": 40, "bytes_written": 0,
                                      "write_failures": 0}


def test_get_stats_and_clear(node, auth_key, licence, rigs):
    rig = rigs(extra=extra_for([node], auth_key, licence))
    hit, done, _ = round_trip(rig, seed=10, pages=12)
    metrics = rig.backend.get_stats()
    assert list(metrics.backup_pgs) == [12] and list(metrics.prefetch_pgs) == [12]
    assert metrics.memkv["hits"] == 12 and metrics.memkv["bytes_read"] == 12 * rig.backend.page_bytes
    assert list(rig.backend.get_stats().backup_pgs) == []  # the window restarts
    rig.backend.clear()
    assert node.status()["keys"] == 0
    assert rig.prefetch(rig.tokens(10, 12))[0] == 0


def test_bad_extra_config_fails_attach_with_a_clear_message(node, auth_key, licence):
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
    cfg = HiCacheStorageConfig(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
                               is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
                               model_name="m", extra_config=extra_for([node], auth_key, licence,
                                                                      **{"memkv.num_connectionz": "2"}))
    with pytest.raises(Exception, match="num_connectionz"):
        MemKVHiCacheStorage(cfg, {})
    cfg.extra_config = extra_for([node], auth_key, licence, license_pubkey="00" * 32)
    with pytest.raises(Exception, match="not issued by a trusted key"):
        MemKVHiCacheStorage(cfg, {})
