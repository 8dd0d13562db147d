"""Drives LMCache's real cache engine on the CPU, as vLLM's connector would.

The only piece we supply is what vLLM supplies: the "GPU" KV cache (here a
CPU tensor [2, layers, tokens, hidden]) and a connector that copies token
ranges between it and LMCache's MemoryObjs. Everything else (the config
loader, StorageManager, LocalCPUBackend, the plugin loader, lookups,
retrieves) is LMCache's own code.

Also runnable as a child process (a second "replica" or a restarted one):
    python lmcache_harness.py store|retrieve|lookup|roundtrip CONFIG_YAML SEED NTOKENS
prints one JSON line with the outcome.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# LMCache's token database imports vLLM when it is installed, and vLLM
# imports transformers, which imports torchvision.
import torchvision_cpu_shim  # noqa: E402,F401  (before anything imports torchvision)
import torch  # noqa: E402
from lmcache.v1.cache_engine import LMCacheEngineBuilder  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402

LAYERS = 4
HEADS = 8
HEAD_SIZE = 64
DTYPE = torch.bfloat16
CHUNK = 256


class CpuKVConnector(GPUConnectorInterface):
    """Copies [start, end) token ranges between a flat KV tensor and MemoryObjs
    of format KV_2LTD ([2, layers, tokens, hidden])."""

    def __init__(self, kv: torch.Tensor):
        self.kv = kv
        self.layers, self.hidden = kv.shape[1], kv.shape[3]

    def from_gpu(self, memory_obj, start: int, end: int, **kwargs):
        memory_obj.tensor.copy_(self.kv[:, :, start:end, :])

    def to_gpu(self, memory_obj, start: int, end: int, **kwargs):
        self.kv[:, :, start:end, :].copy_(memory_obj.tensor)

    def batched_from_gpu(self, memory_objs, starts, ends, **kwargs):
        for obj, s, e in zip(memory_objs, starts, ends):
            self.from_gpu(obj, s, e)

    def batched_to_gpu(self, memory_objs=None, starts=None, ends=None, **kwargs):
        for obj, s, e in zip(memory_objs, starts, ends):
            self.to_gpu(obj, s, e)

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([2, self.layers, num_tokens, self.hidden])


def config_yaml(*, extra: dict[str, str], local_cpu: bool = True, cpu_gb: float = 1.0,
                plugin: bool = True, remote_url: str | None = None, settings: dict | None = None) -> str:
    lines = [f"chunk_size: {CHUNK}", f"local_cpu: {'True' if local_cpu else 'False'}",
             f"max_local_cpu_size: {cpu_gb}"]
    lines += [f"{k}: {v}" for k, v in (settings or {}).items()]
    if plugin:
        lines.append("storage_plugins: memkv")
    if remote_url:
        lines += [f"remote_url: {remote_url!r}", "remote_serde: naive"]
    lines.append("extra_config:")
    if plugin:
        lines += ["  storage_plugin.memkv.module_path: memkv_lmcache.backend",
                  "  storage_plugin.memkv.class_name: MemKVStorageBackend"]
    for k, v in extra.items():
        lines.append(f"  {k}: {json.dumps(str(v))}")
    if len(lines[-1]) and lines[-1] == "extra_config:":
        lines[-1] = "extra_config: {}"
    return "\n".join(lines) + "\n"


class Engine:
    """One LMCache engine (one vLLM worker's view) with its own KV buffer."""

    _n = 0

    def __init__(self, yaml_path: str, max_tokens: int, model: str = "memkv-test/model", instance: str | None = None,
                 layers: int = LAYERS, heads: int = HEADS):
        Engine._n += 1
        self.layers, self.hidden = layers, heads * HEAD_SIZE
        self.instance = instance or f"memkv-test-{os.getpid()}-{Engine._n}"
        config = LMCacheEngineConfig.from_file(yaml_path)
        metadata = LMCacheMetadata(model_name=model, world_size=1, local_world_size=1, worker_id=0,
                                   local_worker_id=0, kv_dtype=DTYPE,
                                   kv_shape=(layers, 2, CHUNK, heads, HEAD_SIZE), chunk_size=CHUNK)
        self.kv = torch.zeros(2, layers, max_tokens, self.hidden, dtype=DTYPE)
        self.connector = CpuKVConnector(self.kv)
        self.engine = LMCacheEngineBuilder.get_or_create(self.instance, config, metadata, self.connector,
                                                         lambda t, r: None, lambda o, r: o)
        self.engine.post_init()

    @property
    def storage_manager(self):
        return self.engine.storage_manager

    @property
    def plugin(self):
        return self.storage_manager.storage_backends.get("memkv")

    def fill(self, seed: int, ntokens: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        data = torch.randn(2, self.layers, ntokens, self.hidden, generator=g).to(DTYPE)
        self.kv[:, :, :ntokens].copy_(data)
        return data

    def keys(self, tokens: torch.Tensor) -> list:
        """LMCache's own cache keys for a prompt, one per chunk."""
        return [k for _, _, k in self.engine.token_database.process_tokens(tokens)]

    def store_prompt(self, seed: int, ntokens: int, *, drain: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Fills the KV buffer for prompt `seed`, stores it, and (by default)
        waits until the plugin has written it. Returns (tokens, kv data)."""
        tokens = tokens_for(seed, ntokens)
        data = self.fill(seed, ntokens)
        self.store(tokens)
        if drain and self.plugin is not None:
            assert self.plugin.drain(60)
        return tokens, data

    def store(self, tokens: torch.Tensor) -> None:
        self.engine.store(tokens, mask=torch.ones(len(tokens), dtype=torch.bool))

    def lookup(self, tokens: torch.Tensor) -> int:
        return self.engine.lookup(tokens)

    def retrieve(self, tokens: torch.Tensor) -> tuple[int, torch.Tensor]:
        self.kv.zero_()
        got = self.engine.retrieve(tokens, mask=torch.ones(len(tokens), dtype=torch.bool))
        return int(got.sum()), self.kv[:, :, :len(tokens)].clone()

    def cpu_bytes_in_use(self) -> int:
        """Bytes LMCache's CPU pool has handed out (to its own cache or to
        objects still referenced)."""
        return self.storage_manager.storage_backends["LocalCPUBackend"].memory_allocator.pin_allocator.total_allocated_size

    def clear_local(self) -> None:
        if "LocalCPUBackend" in self.storage_manager.storage_backends:
            self.storage_manager.clear(locations=["LocalCPUBackend"])

    def close(self) -> None:
        LMCacheEngineBuilder.destroy(self.instance)


def tokens_for(seed: int, ntokens: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randint(0, 32_000, (ntokens,), generator=g)


def write_config(path: str, **kw) -> str:
    with open(path, "w") as f:
        f.write(config_yaml(**kw))
    return path


def _child(argv: list[str]) -> dict:
    op, yaml_path, seed, ntokens = argv[0], argv[1], int(argv[2]), int(argv[3])
    eng = Engine(yaml_path, ntokens)
    try:
        tokens = tokens_for(seed, ntokens)
        out: dict = {"backend_loaded": eng.plugin is not None}
        if op == "store":
            expected = eng.fill(seed, ntokens)
            eng.store(tokens)
            eng.plugin.drain(60)
            out["stats"] = eng.plugin.stats()
        elif op in ("lookup", "retrieve"):
            out["lookup"] = eng.lookup(tokens)
            if op == "retrieve":
                g = torch.Generator().manual_seed(seed)
                expected = torch.randn(2, LAYERS, ntokens, HEADS * HEAD_SIZE, generator=g).to(DTYPE)
                n, got = eng.retrieve(tokens)
                out["retrieved"] = n
                out["bit_exact"] = bool(torch.equal(got[:, :, :n], expected[:, :, :n]))
                out["stats"] = eng.plugin.stats()
        elif op == "roundtrip":  # store, drop LMCache's own copy, retrieve from MemKV
            expected = eng.fill(seed, ntokens)
            eng.store(tokens)
            assert eng.plugin.drain(60)
            eng.clear_local()
            n, got = eng.retrieve(tokens)
            out["retrieved"] = n
            out["bit_exact"] = bool(torch.equal(got[:, :, :n], expected[:, :, :n]))
            out["stats"] = eng.plugin.stats()
        out["files"] = {m: sys.modules[m].__file__ for m in ("nixl_memkv", "nixl_memkv._client", "memkv_lmcache.backend")
                        if m in sys.modules}
        return out
    finally:
        eng.close()


if __name__ == "__main__":
    result = _child(sys.argv[1:])
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # LMCache leaves non-daemon threads behind
