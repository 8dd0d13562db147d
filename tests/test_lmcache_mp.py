"""MemKV as the L2 tier of LMCache's real multi-process server: the server
process loads our adapter from `--l2-adapter`, LMCache's own bench client
and `lmcache bench server` drive it, and after a server restart (empty L1)
lookups hit from MemKV with the same bytes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("lmcache", reason="LMCache is installed by scripts/test.sh")

import torch  # noqa: E402
from lmcache.cli.commands.bench.server_bench.client import ServerBenchClient  # noqa: E402
from lmcache.cli.commands.bench.server_bench.config import BenchConfig  # noqa: E402

from conftest import clean_env, free_port  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SHAPE = "(2,64,16,8,128):float16:4"  # 4 layers: 4 MiB per 256-token chunk
NUM_TOKENS = 768                     # 3 chunks per sequence


class MPServer:
    """One `python -m lmcache.v1.multiprocess.server` with MemKV as its L2."""

    def __init__(self, workdir: str, node_address: str, auth_key: str, licence: tuple[str, str], **params):
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"mp-{self.port}.log")
        adapter = {"type": "plugin", "module_path": "memkv_lmcache.mp_adapter", "class_name": "MemKVL2Adapter",
                   "adapter_params": {"servers": node_address, "transport": "tcp", "op_timeout_ms": 3000,
                                      "connect_timeout_ms": 1000, **params}}
        self.args = [sys.executable, "-P", "-m", "lmcache.v1.multiprocess.server", "--host", "127.0.0.1",
                     "--port", str(self.port), "--l1-size-gb", "1", "--eviction-policy", "LRU",
                     "--supported-transfer-mode", "auto", "--disable-metrics", "--l2-adapter", json.dumps(adapter)]
        # Secrets travel in the environment, not on the command line.
        self.env = clean_env(MEMKV_AUTH_KEY=auth_key, MEMKV_LICENSE=licence[0], MEMKV_LICENSE_PUBKEY=licence[1],
                             LMCACHE_TRACK_USAGE="false", PYTHONHASHSEED="0", LMCACHE_DISABLE_BANNER="1")
        self.cwd = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MPServer":
        self.log_file = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.cwd, stdout=self.log_file,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if "cache server is running" in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"MP server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"MP server not ready:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log_file.close()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    @property
    def rpc_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


@pytest.fixture
def mp_servers(tmp_path):
    made: list[MPServer] = []

    def make(*args, **kw) -> MPServer:
        s = MPServer(str(tmp_path), *args, **kw)
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.stop()


def bench_client(server: MPServer) -> ServerBenchClient:
    cfg = BenchConfig(rpc_url=server.rpc_url, http_url="", mode="cpu", transfer_mode="engine_driven", tp_size=1,
                      use_mla=False, num_tokens=NUM_TOKENS, kvcache_shape_spec=SHAPE, num_blocks=64, block_size=16)
    client = ServerBenchClient(cfg, log=lambda *a, **k: None)
    client.start()
    return client


def fill(client: ServerBenchClient, req, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for worker in client._workers:  # the bench keeps each worker's paged KV here
        for t in worker.kv_caches.values():
            view = t.narrow(1, req.block_offset, req.num_blocks)
            view.copy_(torch.randn(view.shape, generator=g).to(t.dtype))


def store_sequences(server: MPServer, seqs: list[int]) -> dict[int, list[str]]:
    client = bench_client(server)
    try:
        expected = {}
        for s in seqs:
            req = client.create_request(s, f"store-{s}", "cold")
            fill(client, req, 1000 + s)
            expected[s] = client.compute_checksums(req, 0, req.num_full_tokens)
            assert client.lookup(req).hit_chunks == 0
            result = client.store(req, 0, req.num_full_tokens)
            assert result is not None and result.succeeded, result  # None only for an empty range
            client.end_session(req)
        return expected
    finally:
        client.close()


def retrieve_sequences(server: MPServer, seqs: list[int]) -> dict[int, tuple[int, list[str]]]:
    client = bench_client(server)
    try:
        out = {}
        for s in seqs:
            req = client.create_request(s, f"verify-{s}", "warm")
            client.zero_destination(req, 0, req.num_full_tokens)
            hit = client.lookup(req).hit_chunks
            if hit:
                client.retrieve(req, 0, hit * req.chunk_size)
            out[s] = (hit, client.compute_checksums(req, 0, req.num_full_tokens))
            client.end_session(req)
        return out
    finally:
        client.close()


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def run_bench(server: MPServer, start: int, end: int) -> str:
    lmcache_cli = shutil.which("lmcache") or os.path.join(os.path.dirname(sys.executable), "lmcache")
    out = subprocess.run([lmcache_cli, "bench", "server", "--rpc-url", server.rpc_url, "--mode", "cpu",
                          "--num-tokens", str(NUM_TOKENS), "--kvcache-shape-spec", SHAPE, "--start", str(start),
                          "--end", str(end), "--interval", "0.5"],
                         env=clean_env(LMCACHE_TRACK_USAGE="false"), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_mp_server_restart_hits_from_memkv(node, auth_key, licence, mp_servers):
    chunks = NUM_TOKENS // 256
    first = mp_servers(node.address, auth_key, licence)
    log = first.log()
    for line in ("Creating memkv engine config=PluginConfig {", "memkv-client license verified plan=enterprise",
                 f'Server mapped to rail server="{node.address}"', f"MemKVL2Adapter ready (servers=['{node.address}']"):
        assert line in log
    assert auth_key not in log
    expected = store_sequences(first, [0, 1, 2])
    bench_before = run_bench(first, 10, 12)
    wait_for(lambda: node.status()["keys"] >= 3 * chunks + 2 * chunks)  # the L2 store is asynchronous
    first.stop()
    assert "MemKVL2Adapter closed" in first.log()

    second = mp_servers(node.address, auth_key, licence)  # L1 starts empty
    got = retrieve_sequences(second, [0, 1, 2])
    for s in (0, 1, 2):
        hit, sums = got[s]
        assert hit == chunks and sums == expected[s], f"sequence {s}: {hit} chunks hit"
    # LMCache's own bench: cold requests now hit in full, and the warm
    # checksums equal those of the run before the restart.
    bench_after = run_bench(second, 10, 12)
    assert re.findall(r"\[seq 1\d/cold\] LOOKUP: (\d+)/(\d+) chunks hit", bench_after) == [(str(chunks),) * 2] * 2
    digests = lambda text: re.findall(r"\[seq (1\d)/warm\] CHECKSUM: ([0-9a-f]+)", text)  # noqa: E731
    assert digests(bench_after) and digests(bench_after) == digests(bench_before)
    assert re.search(r"Checksum OK:\s+2\b", bench_before) and re.search(r"Checksum FAIL:\s+0\b", bench_before)
    assert re.search(r"Prefetch request completed \(L1\+L2\): 3/3 retained keys \(0 L1, 3 L2\)", second.log())


def test_mp_server_keeps_serving_when_memkv_is_down(node, auth_key, licence, mp_servers):
    server = mp_servers(node.address, auth_key, licence)
    store_sequences(server, [0])
    node.kill()
    got = retrieve_sequences(server, [0, 5])  # 0 is still in L1; 5 was never stored
    assert got[0][0] == NUM_TOKENS // 256 and got[5][0] == 0
    assert server.proc.poll() is None
    server.stop()
    assert "memkv L2 task failed" in server.log() or "unreachable" in server.log()


def test_bad_adapter_params_stop_the_server_with_a_clear_message(node, auth_key, licence, tmp_path):
    server = MPServer(str(tmp_path), node.address, auth_key, licence, io_threads="many")
    with pytest.raises(RuntimeError, match=r"adapter_params io_threads='many' is not valid"):
        server.start()
    server.stop()
