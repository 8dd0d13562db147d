"""A real inference engine serving through MemKV: `vllm serve` (vLLM's CPU
build) → LMCache's multi-process server with our MemKVL2Adapter as its L2 →
three real MemKV nodes. Two replicas ("hosts": an LMCache server and a vLLM
each) share the cluster. Nothing is stood in for: the requests are
OpenAI completions, the KV bytes are vLLM's.

The model is a small local Llama with random, non-uniform float32 weights
(nixl_memkv.engine.model): a cache hit must give the same greedy tokens and
the same logprobs (to 1e-4) as the recompute, so a wrong KV byte shows.

The tests share one stack and run in order (each states what it leaves)."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

pytest.importorskip("vllm", reason="vLLM's CPU build is installed by scripts/test.sh")

from nixl_memkv.engine.completions import Completion, complete  # noqa: E402
from nixl_memkv.engine.lmcache_log import activity, adapter_counters, clean_lines  # noqa: E402
from nixl_memkv.engine.model import PRESETS, prompt_tokens, write_model  # noqa: E402
from nixl_memkv.engine.stack import ServingStack  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.timeout(900)]

SPEC = PRESETS["tiny"]
CHUNK = 256           # LMCache's default chunk size: only whole chunks are stored
LOGPROB_TOL = 1e-4    # float32: a hit moves logprobs by ~1e-6 (other kernel shapes)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    model_dir = write_model(str(tmp_path_factory.mktemp("model")), SPEC)
    s = ServingStack(str(tmp_path_factory.mktemp("stack")), model_dir, SPEC.dtype, "tiny", nodes=3,
                     node_dram="256MiB", node_disk="1GiB")
    try:
        s.start_nodes()
        # One core each: two engines on a 2-core machine must not share one.
        s.add_replica(cpus="0")
        s.add_replica(cpus="1")
        s.start_replicas()
        yield s
    finally:
        s.stop()


def ask(replica, prompt: str, max_tokens: int = 6) -> Completion:
    return complete(replica.vllm.base_url, "tiny", prompt, max_tokens=max_tokens, timeout=300)


def node_keys(stack) -> int:
    return sum(n.status()["keys"] for n in stack.nodes)


def wait_for_keys(stack, at_least: int, timeout: float = 60) -> int:
    """Stores reach MemKV asynchronously (LMCache's L1 first, then our
    adapter's store thread): wait until the cluster holds at_least keys."""
    deadline = time.monotonic() + timeout
    while (n := node_keys(stack)) < at_least:
        assert time.monotonic() < deadline, f"MemKV holds {n} keys after {timeout} s, expected {at_least}"
        time.sleep(0.2)
    return n


def assert_same(hit: Completion, recompute: Completion) -> None:
    assert hit.same_output(recompute, LOGPROB_TOL), hit.difference(recompute)


class LogMark:
    """The part of a process's log written after this point."""

    def __init__(self, proc):
        self.proc, self.at = proc, len(proc.log_text())

    def text(self) -> str:
        return self.proc.log_text()[self.at:]


def test_startup_lines_in_order(stack):
    for r in stack.replicas:
        lines = clean_lines(r.lmcache.log_text())
        wanted = ["Creating memkv engine config=PluginConfig {", "memkv-client license verified plan=enterprise",
                  'Server mapped to rail server="', "MemKVL2Adapter ready (servers=[", "cache server is running",
                  "Registered non-GPU context for instance"]
        at = []
        for w in wanted:
            idx = next((i for i, line in enumerate(lines) if w in line), None)
            assert idx is not None, f"{w!r} not in {r.lmcache.log_path}"
            at.append(idx)
        assert at == sorted(at), list(zip(wanted, at))
        assert sum('Server mapped to rail server="' in line for line in lines) == 3  # one per node
        assert stack.secrets.auth_key not in r.lmcache.log_text()
        assert "Registering kv caches!" in r.vllm.log_text()


def test_store_then_hit_on_one_replica(stack):
    r = stack.replicas[0]
    prompt = prompt_tokens(SPEC, 2 * CHUNK + 100, seed=1)  # two whole chunks and a partial one
    keys_before = node_keys(stack)
    mark = LogMark(r.lmcache)
    cold = ask(r, prompt)
    wait_for_keys(stack, keys_before + 2)
    assert activity(mark.text()).stored_tokens == [2 * CHUNK]

    mark = LogMark(r.lmcache)
    warm = ask(r, prompt)
    assert activity(mark.text()).retrieved_tokens == [2 * CHUNK]
    assert_same(warm, cold)
    assert node_keys(stack) == keys_before + 2  # the repeat stored nothing new


def test_cross_replica_hit_comes_from_memkv(stack):
    """Served by replica 0, then asked of replica 1, whose LMCache server has
    never seen it: every chunk is an L2 (MemKV) hit, for several lengths
    including a partial last chunk and one exactly one chunk long."""
    first, second = stack.replicas
    for n_tokens, seed in ((CHUNK, 10), (3 * CHUNK + 17, 11), (5 * CHUNK - 1, 12)):
        prompt = prompt_tokens(SPEC, n_tokens, seed)
        whole = n_tokens // CHUNK
        keys_before = node_keys(stack)
        cold = ask(first, prompt)
        wait_for_keys(stack, keys_before + whole)

        out_before = sum(n.status()["bytes_out"] for n in stack.nodes)
        mark = LogMark(second.lmcache)
        hit = ask(second, prompt)
        seen = activity(mark.text())
        assert [(p.hits, p.l1, p.l2) for p in seen.prefetches] == [(whole, 0, whole)], mark.text()[-3000:]
        assert seen.retrieved_tokens == [whole * CHUNK]
        assert sum(n.status()["bytes_out"] for n in stack.nodes) - out_before >= whole * CHUNK * SPEC.kv_bytes_per_token()
        assert_same(hit, cold)


def test_serving_continues_when_a_node_dies(stack):
    """SIGKILL one MemKV node while both replicas serve new and repeated
    prompts: every request completes (misses are recomputed), none hangs,
    and outputs are unchanged."""
    prompts = [prompt_tokens(SPEC, 2 * CHUNK + 5, seed=100 + i) for i in range(6)]
    reference = [ask(stack.replicas[i % 2], p) for i, p in enumerate(prompts[:2])]
    victim = stack.nodes[2]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, stack.replicas[i % 2], p) for i, p in enumerate(prompts)]
        time.sleep(0.5)
        victim.kill()
        t0 = time.monotonic()
        results = [f.result(timeout=240) for f in futures]
    assert time.monotonic() - t0 < 240
    for ref, got in zip(reference, results[:2]):
        assert_same(got, ref)
    # A prompt asked after the kill still works on the other replica.
    again = ask(stack.replicas[1], prompts[4])
    assert_same(again, results[4])
    victim.start()
    victim.wait_ready(60)


def test_cold_restart_hits_from_the_nodes_shards(stack):
    """Everything stops (vLLM, LMCache servers, MemKV nodes) and starts
    again: a prompt served before is an L2 hit, read from the nodes'
    shards (their DRAM starts empty), with the same output."""
    r = stack.replicas[0]
    prompt = prompt_tokens(SPEC, 4 * CHUNK + 30, seed=7)
    keys_before = node_keys(stack)
    cold = ask(r, prompt)
    wait_for_keys(stack, keys_before + 4)

    l2_hits_on_1 = activity(stack.replicas[1].lmcache.log_text()).l2_chunks
    stack.stop()
    # Every chunk replica 1's LMCache server counted as an L2 hit, our
    # adapter loaded (its counters, logged at close).
    closed = adapter_counters(stack.replicas[1].lmcache.log_text())
    assert closed is not None and closed["loaded"] == l2_hits_on_1 > 0 and closed["load_misses"] == 0, closed
    stack.start_nodes()
    assert all(n.status()["tiers"]["dram"]["keys"] == 0 for n in stack.nodes)
    stack.start_replicas([r])
    mark = LogMark(r.lmcache)
    hit = ask(r, prompt)
    seen = activity(mark.text())
    assert [(p.hits, p.l1, p.l2) for p in seen.prefetches] == [(4, 0, 4)], mark.text()[-3000:]
    assert seen.retrieved_tokens == [4 * CHUNK]
    assert_same(hit, cold)
    assert sum(n.status()["bytes_out"] for n in stack.nodes) >= 4 * CHUNK * SPEC.kv_bytes_per_token()
    stack.stop_replicas([r])
    closed = adapter_counters(mark.text())
    assert closed is not None and closed["loaded"] == 4 and closed["load_misses"] == 0, closed
