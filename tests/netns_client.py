"""A MemKV client process for the netns cluster test, run inside a client
namespace: `ip netns exec NS python netns_client.py` with the MEMKV_* config
in its environment (MEMKV_SERVERS, MEMKV_AUTH_KEY, timeouts, licence).

It reads one JSON command per line on stdin and answers one JSON line on
stdout ("REPLY {...}"), timing every operation itself, so the test measures
what a client in its own host sees. The real `nixl_memkv.Client`, the real
NIXL agent with our MEMKV backend and the real LMCache engine with
MemKVStorageBackend are loaded here (the last two on first use: they cost
seconds of imports).

Values are derived from their key, so any read can be checked byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nixl_memkv import Client  # noqa: E402
from nixl_memkv.errors import MemKVError  # noqa: E402


def value_for(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Driver:
    def __init__(self) -> None:
        self.client = Client.from_env()
        self.nixl = None    # (agent, {hash: block index}, host array, KvbmBlocks)
        self.engine = None  # lmcache_harness.Engine

    # -- plain client -------------------------------------------------------------
    def route(self, keys: list[str]) -> dict:
        return {"servers": [self.client.server_for(k) for k in keys]}

    def _timed(self, fn) -> dict:
        t0 = time.monotonic()
        try:
            out = {"result": fn()}
        except MemKVError as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        out["s"] = time.monotonic() - t0
        return out

    def put(self, keys: list[str], size: int) -> dict:
        return {"items": [self._timed(lambda k=k: self.client.put(k, value_for(k, size)) or "ok") for k in keys]}

    def get(self, keys: list[str], size: int) -> dict:
        def one(k: str) -> str:
            v = self.client.get(k)
            return "miss" if v is None else ("ok" if v == value_for(k, size) else "wrong")
        return {"items": [self._timed(lambda k=k: one(k)) for k in keys]}

    def batch_get(self, keys: list[str], size: int) -> dict:
        def run() -> list[str]:
            got = self.client.batch_get(keys, allow_partial=True)
            return ["miss" if v is None else ("ok" if v == value_for(k, size) else "wrong") for k, v in zip(keys, got)]
        return self._timed(run)

    def mixed(self, slow_key: str, keys: list[str], size: int) -> dict:
        """A get of `slow_key` (on the cut node) on another thread, and gets
        of `keys` here meanwhile: the slow node must not hold up the others."""
        done: dict = {}
        t = threading.Thread(target=lambda: done.update(self._timed(lambda: self.client.get(slow_key))))
        t.start()
        others = []
        while t.is_alive() or not others:
            others += [self._timed(lambda k=k: "ok" if self.client.get(k) == value_for(k, size) else "wrong")
                       for k in keys]
        t.join()
        return {"slow": {k: v for k, v in done.items() if k != "result"} | {"hit": "result" in done},
                "others": others}

    # -- NIXL agent with the MEMKV backend ----------------------------------------
    def nixl_setup(self, hashes: list[int], block: int, params: dict) -> dict:
        import nixl_helpers as NH  # sets NIXL_PLUGIN_DIR before the first agent
        agent = NH.memkv_agent(params, name=f"netns-{os.getpid()}")
        host = NH.blocks(len(hashes), block, seed=7)
        self.nixl = {"NH": NH, "kv": NH.KvbmBlocks(agent, host, hashes), "expected": host.copy()}
        return {"servers": [self.client.server_for(str(h)) for h in hashes]}

    def nixl_xfer(self, direction: str, idx: list[int]) -> dict:
        """One KVBM-shaped transfer of blocks `idx` (all registered at setup)."""
        kv, expected = self.nixl["kv"], self.nixl["expected"]
        agent, block = kv.agent, kv.block
        if direction == "READ":
            kv.host[idx] = 0
        local = agent.get_xfer_descs([(kv.host.ctypes.data + i * block, block, 0) for i in idx], "DRAM")
        remote = agent.get_xfer_descs([(0, block, kv.hashes[i]) for i in idx], "OBJ")
        t0 = time.monotonic()
        state = self.nixl["NH"].finish(agent, agent.initialize_xfer(direction, local, remote, agent.name,
                                                                    backends=["MEMKV"]))
        out = {"state": state, "s": time.monotonic() - t0}
        if direction == "READ" and state == "DONE":
            out["bytes"] = "ok" if (kv.host[idx] == expected[idx]).all() else "wrong"
        return out

    # -- LMCache engine with MemKVStorageBackend --------------------------------------
    def lm_setup(self, yaml_path: str, extra: dict, chunks: int) -> dict:
        t0 = time.monotonic()
        import lmcache_harness as LH
        imported = time.monotonic() - t0
        # LMCache's CPU pool: room for the prompt's chunks, not the 1 GB default.
        self.engine = LH.Engine(LH.write_config(yaml_path, extra=extra, cpu_gb=0.1), chunks * LH.CHUNK)
        return {"chunk": LH.CHUNK, "import_wait_s": imported, "engine_s": time.monotonic() - t0 - imported}

    def lm_store(self, seed: int, ntokens: int) -> dict:
        import lmcache_harness as LH
        t0 = time.monotonic()
        tokens, _ = self.engine.store_prompt(seed, ntokens)
        plugin = self.engine.plugin
        routes = [plugin._client.server_for(plugin._key(k)) for k in self.engine.keys(tokens)]
        return {"s": time.monotonic() - t0, "routes": routes, "chunk": LH.CHUNK, "stats": plugin.stats()}

    def lm_routes(self, seed: int, ntokens: int) -> dict:
        """The node each chunk of prompt `seed` routes to (nothing stored)."""
        import lmcache_harness as LH
        plugin = self.engine.plugin
        keys = self.engine.keys(LH.tokens_for(seed, ntokens))
        return {"routes": [plugin._client.server_for(plugin._key(k)) for k in keys]}

    def lm_read(self, seed: int, ntokens: int) -> dict:
        import torch
        import lmcache_harness as LH
        tokens = LH.tokens_for(seed, ntokens)
        g = torch.Generator().manual_seed(seed)
        expected = torch.randn(2, self.engine.layers, ntokens, self.engine.hidden, generator=g).to(LH.DTYPE)
        self.engine.clear_local()
        t0 = time.monotonic()
        hit = self.engine.lookup(tokens)
        t_lookup = time.monotonic() - t0
        t0 = time.monotonic()
        n, got = self.engine.retrieve(tokens)
        t_retrieve = time.monotonic() - t0
        return {"lookup": hit, "lookup_s": t_lookup, "retrieved": n, "retrieve_s": t_retrieve,
                "bit_exact": bool(torch.equal(got[:, :, :n], expected[:, :, :n]))}


def main() -> None:
    if os.environ.get("NETNS_CLIENT_PRELOAD"):
        # LMCache's imports (torch, transformers) take tens of seconds on a
        # loaded 2-core machine: start them while the test does other work.
        threading.Thread(target=lambda: __import__("lmcache_harness"), daemon=True).start()
    driver = Driver()
    print("REPLY " + json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            reply = {"ok": True, **getattr(driver, op)(**cmd)}
        except Exception as exc:  # noqa: BLE001  (reported to the test, which fails on it)
            reply = {"ok": False, "exception": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        print("REPLY " + json.dumps(reply), flush=True)
    if driver.engine is not None:
        driver.engine.close()
    driver.client.close()
    os._exit(0)  # LMCache leaves non-daemon threads behind


if __name__ == "__main__":
    main()
