"""The LMCache storage plugin through LMCache's real cache engine (CPU), with
real MemKV nodes: the documented YAML (docs/compatibility.md; sizes scaled down), lookups and bit-exact
retrieves, cold restart in a fresh process, async puts, sharing between
replicas, a node going down, long keys, bad config."""

from __future__ import annotations

import collections

import json
import logging
import os
import subprocess
import sys
import time

import pytest

lmcache = pytest.importorskip("lmcache", reason="LMCache is installed by scripts/test.sh")

import torch  # noqa: E402

import lmcache_harness as H  # noqa: E402
from memkv_lmcache import chunk_header  # noqa: E402
from memkv_lmcache.backend import MemKVStorageBackend  # noqa: E402
from nixl_memkv import Client  # noqa: E402
from nixl_memkv.keys import fit_key  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
HERE = os.path.dirname(os.path.abspath(__file__))
NTOKENS = 4 * H.CHUNK


def extra_for(nodes, auth_key, licence, **more) -> dict[str, str]:
    extra = {"memkv.servers": ",".join(n.address for n in nodes), "memkv.auth_key": auth_key,
             "memkv.license": licence[0], "memkv.license_pubkey": licence[1], "memkv.transport": "tcp",
             "memkv.op_timeout_ms": "3000", "memkv.connect_timeout_ms": "1000"}
    extra.update({f"memkv.{k}": v for k, v in more.items()})
    return extra


@pytest.fixture
def engine_factory(tmp_path):
    made = []

    def make(extra: dict, *, model: str = "memkv-test/model", **kw) -> H.Engine:
        path = H.write_config(str(tmp_path / f"lmcache-{len(made)}.yaml"), extra=extra, **kw)
        eng = H.Engine(path, NTOKENS, model=model)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.close()


def run_child(op: str, yaml_path: str, seed: int, ntokens: int = NTOKENS) -> dict:
    env = dict(os.environ, PYTHONHASHSEED="0", LMCACHE_TRACK_USAGE="false")
    out = subprocess.run([sys.executable, os.path.join(HERE, "lmcache_harness.py"), op, yaml_path, str(seed),
                          str(ntokens)], env=env, capture_output=True, text=True, timeout=240, cwd=HERE)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"child {op} printed no result (rc={out.returncode}):\n{out.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    result["stderr"] = out.stderr
    return result


def test_store_clear_lookup_retrieve_bit_exact(node, auth_key, licence, engine_factory, caplog):
    caplog.set_level(logging.INFO, logger="memkv-client")
    eng = engine_factory(extra_for([node], auth_key, licence))
    assert isinstance(eng.storage_manager.storage_backends.get("memkv"), MemKVStorageBackend)
    messages = [r.getMessage() for r in caplog.records if r.name == "memkv-client"]
    order = ["Creating memkv engine config=PluginConfig {", "memkv-client license verified plan=enterprise",
             'Server mapped to rail server="' + node.address, "MemKVStorageBackend ready (servers=['" + node.address]
    positions = [next(i for i, m in enumerate(messages) if m.startswith(o)) for o in order]
    assert positions == sorted(positions), messages
    assert auth_key not in "\n".join(messages)

    tokens, data = eng.store_prompt(1, NTOKENS)
    assert eng.plugin.stats()["put_stored"] == NTOKENS // H.CHUNK
    eng.clear_local()
    assert eng.lookup(tokens) == NTOKENS
    n, got = eng.retrieve(tokens)
    assert n == NTOKENS and torch.equal(got, data)
    assert eng.plugin.stats()["get_hits"] == NTOKENS // H.CHUNK
    # A different prompt is a miss, and a prompt sharing the first two
    # chunks hits exactly those.
    assert eng.lookup(H.tokens_for(2, NTOKENS)) == 0
    mixed = torch.cat([tokens[:2 * H.CHUNK], H.tokens_for(3, 2 * H.CHUNK)])
    eng.clear_local()
    assert eng.lookup(mixed) == 2 * H.CHUNK


def test_every_chunk_carries_its_layout_on_the_wire(node, auth_key, licence, engine_factory):
    eng = engine_factory(extra_for([node], auth_key, licence))
    tokens, _ = eng.store_prompt(4, NTOKENS)
    keys = eng.keys(tokens)
    with Client([node.address], auth_key) as c:
        raw = c.get(fit_key(keys[0].to_string()))
    layout = chunk_header.decode(raw[:chunk_header.MAX_HEADER_LEN])
    assert layout.fmt == "KV_2LTD" and layout.dtypes == ("bfloat16",)
    assert layout.shapes == ((2, H.LAYERS, H.CHUNK, H.HEADS * H.HEAD_SIZE),)
    assert len(raw) == chunk_header.header_len_of(raw) + layout.payload_len


def test_fresh_process_rehydrates_from_memkv_after_a_node_restart(node, auth_key, licence, tmp_path):
    yaml_path = H.write_config(str(tmp_path / "lmcache.yaml"), extra=extra_for([node], auth_key, licence))
    stored = run_child("store", yaml_path, seed=7)
    assert stored["backend_loaded"] and stored["stats"]["put_stored"] == NTOKENS // H.CHUNK, stored["stderr"][-2000:]
    node.restart()
    fresh = run_child("retrieve", yaml_path, seed=7)
    assert fresh["backend_loaded"]
    assert fresh["lookup"] == NTOKENS and fresh["retrieved"] == NTOKENS and fresh["bit_exact"], fresh["stderr"][-3000:]


def test_async_put_is_visible_to_lookup_before_it_lands(node, auth_key, licence, engine_factory):
    eng = engine_factory(extra_for([node], auth_key, licence))
    tokens = H.tokens_for(5, NTOKENS)
    data = eng.fill(5, NTOKENS)
    node.pause()  # the writer stalls on the node; the store must not
    try:
        t0 = time.monotonic()
        eng.store(tokens)
        assert time.monotonic() - t0 < 2.0, "store waited for the network"
        assert eng.plugin.exists_in_put_tasks(eng.keys(tokens)[0])
        eng.clear_local()
        assert eng.lookup(tokens) == NTOKENS  # still queued: served from the queue
        n, got = eng.retrieve(tokens)
        assert n == NTOKENS and torch.equal(got, data)
    finally:
        node.resume()
    assert eng.plugin.drain(30)
    assert eng.plugin.stats()["put_stored"] == NTOKENS // H.CHUNK
    eng.clear_local()
    assert eng.lookup(tokens) == NTOKENS


def test_restore_of_the_same_prefix_is_deduplicated(node, auth_key, licence, engine_factory):
    eng = engine_factory(extra_for([node], auth_key, licence))
    tokens, _ = eng.store_prompt(6, NTOKENS)
    eng.clear_local()
    eng.store(tokens)  # LMCache re-stores without asking first
    eng.plugin.drain(30)
    stats = eng.plugin.stats()
    assert stats["put_stored"] == NTOKENS // H.CHUNK and stats["put_already_present"] == NTOKENS // H.CHUNK


def test_two_replicas_share_chunks_across_a_cluster(cluster3, auth_key, licence, engine_factory):
    writer = engine_factory(extra_for(cluster3, auth_key, licence))
    reader = engine_factory(extra_for(list(reversed(cluster3)), auth_key, licence), local_cpu=True)
    tokens, data = writer.store_prompt(8, NTOKENS)
    assert reader.lookup(tokens) == NTOKENS
    n, got = reader.retrieve(tokens)
    assert n == NTOKENS and torch.equal(got, data)
    # Each chunk lives on the node its key routes to (LMCache's chunk hashes
    # vary with PYTHONHASHSEED, so which node holds how many varies too).
    routed = collections.Counter(writer.plugin._client.server_for(writer.plugin._key(k)) for k in writer.keys(tokens))
    assert sum(routed.values()) == NTOKENS // H.CHUNK
    assert {n.address: n.status()["keys"] for n in cluster3} == {n.address: routed[n.address] for n in cluster3}


def test_node_down_gives_misses_and_lmcache_keeps_serving(node, auth_key, licence, engine_factory, caplog):
    caplog.set_level(logging.ERROR, logger="memkv-client")
    eng = engine_factory(extra_for([node], auth_key, licence))
    stored, data = eng.store_prompt(9, NTOKENS)
    node.kill()
    # Chunks still in LMCache's own CPU tier keep serving.
    n, got = eng.retrieve(stored)
    assert n == NTOKENS and torch.equal(got, data)
    eng.clear_local()
    assert eng.lookup(stored) == 0
    assert eng.retrieve(stored)[0] == 0
    other, _ = eng.store_prompt(10, NTOKENS)  # must not raise
    assert eng.plugin.stats()["put_failed"] >= NTOKENS // H.CHUNK
    assert eng.lookup(other) == NTOKENS  # LMCache's CPU tier still has it
    assert any("unreachable" in r.getMessage() or "cannot connect" in r.getMessage() for r in caplog.records)


def test_long_keys_collapse_to_a_digest(node, auth_key, licence, engine_factory):
    model = "org/" + "very-long-model-name-" * 25
    eng = engine_factory(extra_for([node], auth_key, licence), model=model)
    tokens, data = eng.store_prompt(11, NTOKENS)
    key = eng.keys(tokens)[0].to_string()
    assert len(key.encode()) > 480
    wire = fit_key(key)
    assert wire.startswith(b"memkv-h2:") and len(wire) == len("memkv-h2:") + 64
    with Client([node.address], auth_key) as c:
        assert c.exists(wire)
    eng.clear_local()
    n, got = eng.retrieve(tokens)
    assert n == NTOKENS and torch.equal(got, data)


def test_value_that_is_not_a_chunk_reads_as_a_miss(node, auth_key, licence, engine_factory, caplog):
    eng = engine_factory(extra_for([node], auth_key, licence))
    tokens = H.tokens_for(12, NTOKENS)
    keys = eng.keys(tokens)
    with Client([node.address], auth_key) as c:
        c.put(fit_key(keys[0].to_string()), b"not an LMCache chunk" * 10)
    assert eng.lookup(tokens) == H.CHUNK  # present on the node...
    assert eng.retrieve(tokens)[0] == 0   # ...but unreadable: a miss, logged
    assert eng.plugin.stats()["bad_chunks"] == 1


def test_full_put_queue_pushes_back_then_drops(node, auth_key, licence, engine_factory):
    eng = engine_factory(extra_for([node], auth_key, licence, put_queue_mb="1", put_queue_timeout_s="0.5",
                                   op_timeout_ms="2000"))
    node.pause()
    try:
        first, second = H.tokens_for(13, NTOKENS), H.tokens_for(14, NTOKENS)
        eng.fill(13, NTOKENS)
        eng.store(first)   # accepted: the queue was empty
        t0 = time.monotonic()
        eng.fill(14, NTOKENS)
        eng.store(second)  # queue full: waits its timeout, then drops
        waited = time.monotonic() - t0
    finally:
        node.resume()
    assert 0.4 < waited < 5
    eng.plugin.drain(30)
    assert eng.plugin.stats()["put_dropped"] == NTOKENS // H.CHUNK


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_bad_license_keeps_the_backend_out_and_says_why(node, auth_key, licence, engine_factory):
    # LMCache's loggers do not propagate: listen on the loader's own logger.
    loader_log = logging.getLogger("lmcache.v1.storage_backend")
    seen = _Collect()
    loader_log.addHandler(seen)
    try:
        eng = engine_factory(extra_for([node], auth_key, licence, license_pubkey="00" * 32))
    finally:
        loader_log.removeHandler(seen)
    assert "memkv" not in eng.storage_manager.storage_backends
    out = "\n".join(seen.lines)
    assert "Failed to create backend memkv: license file" in out and "not issued by a trusted key" in out


@pytest.mark.parametrize("option, value, message", [
    ("put_queue_mb", "lots", "extra_config memkv.put_queue_mb='lots' is not valid: expected a positive integer"),
    ("async_put", "maybe", "extra_config memkv.async_put='maybe' is not valid: expected true or false"),
    ("num_connections", "0", "extra_config memkv. num_connections"),
])
def test_bad_extra_config_names_the_key(node, auth_key, licence, option, value, message):
    from lmcache.v1.config import LMCacheEngineConfig
    config = LMCacheEngineConfig.from_dict({"chunk_size": H.CHUNK, "local_cpu": True, "max_local_cpu_size": 0.1,
                                            "extra_config": extra_for([node], auth_key, licence, **{option: value})})
    with pytest.raises(Exception) as err:
        MemKVStorageBackend(config=config, dst_device="cpu")
    assert message in str(err.value)


def test_sync_put_mode_and_remove(node, auth_key, licence, engine_factory):
    eng = engine_factory(extra_for([node], auth_key, licence, async_put="false"))
    tokens = H.tokens_for(15, NTOKENS)
    eng.fill(15, NTOKENS)
    eng.store(tokens)
    assert eng.plugin.stats()["put_stored"] == NTOKENS // H.CHUNK  # written before store() returned
    keys = eng.keys(tokens)
    assert eng.plugin.pin(keys[0]) and eng.plugin.unpin(keys[0]) and not eng.plugin.unpin(keys[0])
    assert eng.plugin.batched_remove(keys[2:]) == 2
    eng.clear_local()
    assert eng.lookup(tokens) == 2 * H.CHUNK


def test_chunk_header_round_trip_and_damage():
    layout = chunk_header.ChunkLayout("KV_2LTD", ("bfloat16", "float8_e4m3fn"), ((2, 4, 256, 512), (7,)), 1234)
    raw = layout.encode()
    assert len(raw) % 64 == 0 and chunk_header.decode(raw + b"payload") == layout
    for bad, why in [(b"XXXX" + raw[4:], "does not start"), (raw[:10], "shorter"), (raw[:40], "invalid"),
                     (raw[:4] + b"\x09" + raw[5:], "version 9")]:
        with pytest.raises(chunk_header.HeaderError, match=why):
            chunk_header.decode(bad)
    with pytest.raises(chunk_header.HeaderError, match="too many"):
        chunk_header.ChunkLayout("KV_2LTD", ("bfloat16",) * 200, ((1, 2, 3),) * 200, 0).encode()


def test_fit_key_keeps_short_keys_and_digests_long_ones():
    assert fit_key("model@1@0@abc@bfloat16") == b"model@1@0@abc@bfloat16"
    assert fit_key("x" * 480) == b"x" * 480
    long = fit_key("x" * 481)
    assert long.startswith(b"memkv-h2:") and len(long) == 73 and long == fit_key("x" * 481)
    assert fit_key("x" * 470, namespace="n" * 50).startswith(b"memkv-h2:")  # namespace counts toward 512


def test_async_loading_methods(node, auth_key, licence, engine_factory):
    import asyncio
    eng = engine_factory(extra_for([node], auth_key, licence))
    tokens, data = eng.store_prompt(16, NTOKENS)
    eng.clear_local()
    baseline = eng.cpu_bytes_in_use()
    keys = eng.keys(tokens)
    missing = eng.keys(H.tokens_for(17, NTOKENS))
    assert asyncio.run(eng.plugin.batched_async_contains("l1", keys + missing)) == len(keys)
    objs = asyncio.run(eng.plugin.batched_get_non_blocking("l1", keys[:2] + missing[:1] + keys[2:]))
    assert len(objs) == 2  # the leading run only; the rest were released
    for i, obj in enumerate(objs):
        assert torch.equal(obj.tensor, data[:, :, i * H.CHUNK:(i + 1) * H.CHUNK])
        obj.ref_count_down()
    obj = eng.plugin.get_non_blocking(keys[3]).result(30)
    assert torch.equal(obj.tensor, data[:, :, 3 * H.CHUNK:])
    obj.ref_count_down()
    assert eng.cpu_bytes_in_use() == baseline  # every object handed out or dropped was released


def test_partial_last_chunk_round_trips_warm_and_cold(node, auth_key, licence, engine_factory):
    eng = engine_factory(extra_for([node], auth_key, licence), settings={"save_unfull_chunk": "True"})
    ntokens = 3 * H.CHUNK + 132
    tokens, data = eng.store_prompt(18, ntokens)
    assert eng.plugin.stats()["put_stored"] == 4
    for cold in (False, True):
        if cold:
            eng.plugin._layouts.clear()  # as in a fresh process: every header is read from MemKV
        eng.clear_local()
        assert eng.lookup(tokens) == ntokens
        n, got = eng.retrieve(tokens)
        assert n == ntokens and torch.equal(got[:, :, :ntokens], data)


def test_retrieve_larger_than_the_cpu_pool_returns_a_prefix_without_hanging(node, auth_key, licence,
                                                                             engine_factory):
    writer = engine_factory(extra_for([node], auth_key, licence))
    tokens, data = writer.store_prompt(19, NTOKENS)
    chunk_mib = 2 * H.LAYERS * H.CHUNK * H.HEADS * H.HEAD_SIZE * 2 / 2**20
    small = engine_factory(extra_for([node], auth_key, licence), cpu_gb=round(2.5 * chunk_mib / 1024, 4))
    t0 = time.monotonic()
    n, got = small.retrieve(tokens)
    assert time.monotonic() - t0 < 15
    assert 0 < n < NTOKENS and n % H.CHUNK == 0 and torch.equal(got[:, :, :n], data[:, :, :n])
    assert small.plugin.stats()["alloc_failures"] >= 1
    small.clear_local()
    assert small.cpu_bytes_in_use() == 0


def test_tenants_do_not_share_chunks(make_node, tmp_path, licence, engine_factory):
    """The same prompt stored by two tenants: each finds only its own chunks."""
    from node_harness import make_tenants

    tenants = str(tmp_path / "tenants.yaml")
    creds = make_tenants(tenants, "lm-a", "lm-b")
    node = make_node("--tenants", tenants, "--dram-capacity", "128MiB", "--disk-capacity", "0")
    a = engine_factory(extra_for([node], creds["lm-a"]["auth_key"], licence, tenant="lm-a"))
    tokens, data = a.store_prompt(21, NTOKENS)
    b = engine_factory(extra_for([node], creds["lm-b"]["auth_key"], licence, tenant="lm-b"), local_cpu=True)
    assert b.lookup(tokens) == 0
    reader = engine_factory(extra_for([node], creds["lm-a"]["auth_key"], licence, tenant="lm-a"), local_cpu=True)
    assert reader.lookup(tokens) == NTOKENS
    n, got = reader.retrieve(tokens)
    assert n == NTOKENS and torch.equal(got, data)
    assert node.status()["tenants"]["lm-a"]["keys"] == NTOKENS // H.CHUNK
    assert node.status()["tenants"]["lm-b"]["keys"] == 0
