"""Drives sglang's real HiCache storage path on the CPU.

Real: sglang's HybridCacheController (the controller sglang builds for plain
MHA/MLA models), its MHA/MLA host pools (pin_memory=False, device="cpu"),
StorageBackendFactory (the `dynamic` loader for our class, or `file`), the
page hashing, and the controller's backup/prefetch threads. Only the GPU
side is absent: the device pool is a stand-in exposing what the controller
reads (device, layer_num, a transfer counter), since device<->host copies
need CUDA kernels. Tests play the scheduler's part of a prefetch (allocate
host pages for the hit, hand the op back, drain the acks).

Also runnable as a child process (another replica):
    python sglang_harness.py prefetch|roundtrip CONFIG_JSON
prints one JSON line with the outcome, and
    python sglang_harness.py build-extensions
compiles sglang's JIT native page hash into TORCH_EXTENSIONS_DIR (scripts/test.sh
does it on the host before the RDMA guest, where compiling takes minutes).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading

# sglang JIT-compiles its page hash (torch cpp_extension) on first use.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "memkv-sglang-torch-ext"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torchvision_cpu_shim  # noqa: E402,F401  (before anything imports torchvision)

import torch  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import CacheRequestHandle  # noqa: E402
from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo, MLABufferInfo  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import PoolName  # noqa: E402
from sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller import HybridCacheController  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool  # noqa: E402
from sglang.srt.mem_cache.pool_host import HostPoolGroup, PoolEntry  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.utils import get_storage_hash_str  # noqa: E402
from sglang.srt.runtime_context import get_parallel  # noqa: E402

DTYPE = torch.bfloat16
TIMEOUT = 60.0
MEMKV_DYNAMIC = {"backend_name": "memkv", "module_path": "memkv_sglang.backend", "class_name": "MemKVHiCacheStorage"}


class DevicePool:
    """What the controller reads of the GPU pool."""

    def __init__(self, layer_num: int):
        self.device = torch.device("cpu")
        self.layer_num = layer_num
        self.start_layer, self.end_layer = 0, layer_num - 1

    def register_layer_transfer_counter(self, counter):
        self.layer_transfer_counter = counter


class MLADevicePool(DevicePool, MLATokenToKVPool):
    """isinstance(..., MLATokenToKVPool) is how sglang decides a model is MLA."""

    def __init__(self, layer_num: int):
        DevicePool.__init__(self, layer_num)


class Allocator:
    def __init__(self, kvcache):
        self._kv = kvcache

    def get_kvcache(self):
        return self._kv


class Rig:
    """One sglang rank: host pool + HiCache controller + storage backend."""

    def __init__(self, *, kind: str = "mha", layout: str = "page_first", backend: str = "dynamic",
                 extra: dict | None = None, model: str = "test-org/test-model", page: int = 4, layers: int = 3,
                 heads: int = 2, head_dim: int = 8, pages: int = 160, tp_rank: int = 0, tp_size: int = 1,
                 pp_rank: int = 0, pp_size: int = 1):
        get_parallel().override_permanently(tp_rank=tp_rank, tp_size=tp_size, pp_rank=pp_rank, pp_size=pp_size,
                                            attn_dcp_rank=0, attn_dcp_size=1)
        self.page = page
        device_tokens = pages * page
        if kind == "mha":
            k = tuple(torch.zeros(device_tokens, heads, head_dim, dtype=DTYPE) for _ in range(layers))
            v = tuple(torch.zeros(device_tokens, heads, head_dim, dtype=DTYPE) for _ in range(layers))
            ptrs = lambda ts: torch.tensor([t.data_ptr() for t in ts], dtype=torch.uint64)  # noqa: E731
            info = MHABufferInfo(buffers=KVBuffers(k=k, v=v, k_data_ptrs=ptrs(k), v_data_ptrs=ptrs(v),
                                                   layout=KVBufferLayout.NHD),
                                 page_size=page, head_num=heads, head_dim=head_dim, v_head_dim=head_dim, dtype=DTYPE,
                                 device=torch.device("cpu"))
            self.host = MHATokenToKVPoolHost(info, host_to_device_ratio=2.0, host_size=0, page_size=page,
                                             layout=layout, pin_memory=False, device="cpu",
                                             device_capacity_tokens=device_tokens, start_layer=0,
                                             end_layer=layers - 1)
            device = DevicePool(layers)
        else:
            lora, rope = 4 * head_dim, head_dim
            bufs = tuple(torch.zeros(device_tokens, 1, lora + rope, dtype=DTYPE) for _ in range(layers))
            info = MLABufferInfo(buffers=bufs, data_ptrs=torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64),
                                 layer_indices=tuple(range(layers)), device_layer_num=layers, page_size=page,
                                 kv_lora_rank=lora, qk_rope_head_dim=rope, kv_cache_dim=lora + rope, dtype=DTYPE,
                                 device=torch.device("cpu"))
            self.host = MLATokenToKVPoolHost(info, host_to_device_ratio=2.0, host_size=0, page_size=page,
                                             layout=layout, pin_memory=False, device="cpu",
                                             device_capacity_tokens=device_tokens, start_layer=0,
                                             end_layer=layers - 1, target_layer_num=layers)
            device = MLADevicePool(layers)
        group = HostPoolGroup([PoolEntry(name=PoolName.KV, host_pool=self.host, device_pool=device,
                                         layer_mapper=lambda i: i, is_primary_index_anchor=True)])
        self.cc = HybridCacheController(Allocator(device), group, page, None, load_cache_event=threading.Event(),
                                        io_backend="direct", storage_backend=backend, prefetch_threshold=page,
                                        model_name=model, storage_backend_extra_config=dict(extra or {}))
        self._n = 0

    @property
    def backend(self):
        return self.cc.storage_backend

    # -- data ---------------------------------------------------------------------------
    def tokens(self, seed: int, n_pages: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 50_000, (n_pages * self.page,), generator=g).tolist()

    def page_data(self, seed: int, n_pages: int) -> list[torch.Tensor]:
        """Deterministic contents for each page (the same in every process)."""
        g = torch.Generator().manual_seed(1_000_003 + seed)
        flat = self.host.get_dummy_flat_data_page()
        nbytes = flat.numel() * flat.element_size()
        return [torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=g) for _ in range(n_pages)]

    def write_pages(self, data: list[torch.Tensor]) -> torch.Tensor:
        idx = self.host.alloc(len(data) * self.page)
        for p, raw in enumerate(data):
            flat = self.host.get_dummy_flat_data_page()
            flat.view(torch.uint8).copy_(raw)
            self.host.set_from_flat_data_page(int(idx[p * self.page]), flat)
        return idx

    def read_pages(self, idx: torch.Tensor, n_pages: int) -> list[torch.Tensor]:
        return [self.host.get_data_page(int(idx[p * self.page]), flat=True).contiguous().view(torch.uint8)
                for p in range(n_pages)]

    # -- controller operations -------------------------------------------------------------
    def backup(self, idx: torch.Tensor, tokens: list[int]) -> int:
        """Backs pages up through the controller; returns the tokens it completed."""
        self.cc.write_storage(idx, tokens, hash_value=get_storage_hash_str(tokens, None, page_size=self.page))
        return self.cc.ack_backup_queue.get(timeout=TIMEOUT).completed_tokens

    def prefetch(self, tokens: list[int]) -> tuple[int, int, torch.Tensor | None]:
        """(tokens the backend reported present, tokens loaded, host indices)."""
        self._n += 1
        op = self.cc.prefetch(CacheRequestHandle(rid=f"req-{self._n}", attempt_id=0), tokens)
        hit_op = self.cc.prefetch_hit_queue.get(timeout=TIMEOUT)
        assert hit_op is op
        hit = hit_op.storage_hit_count
        if hit == 0:
            return 0, 0, None
        idx = self.cc.alloc_prefetch_host_buffers(hit_op, hit)
        hit_op.host_indices = idx
        self.cc.prefetch_buffer.put(hit_op)  # the scheduler's part
        done = 0
        while True:
            ack = self.cc.ack_prefetch_queue.get(timeout=TIMEOUT)
            if ack.completed_tokens is not None:
                done = ack.completed_tokens
            if ack.completed_req:
                return hit, done, idx

    def zero_host(self) -> None:
        self.host.kv_buffer.zero_()

    def close(self) -> None:
        self.cc.detach_storage_backend()


def _child(config: dict) -> dict:
    seed, n_pages = config.pop("seed"), config.pop("n_pages")
    rig = Rig(**config)
    try:
        tokens = rig.tokens(seed, n_pages)
        hit, done, idx = rig.prefetch(tokens)
        same = False
        if done:
            got = rig.read_pages(idx, done // rig.page)
            same = all(torch.equal(a, b) for a, b in zip(got, rig.page_data(seed, n_pages)))
        return {"hit": hit, "done": done, "bit_exact": same, "stats": rig.backend.stats()}
    finally:
        rig.close()


def _roundtrip(config: dict) -> dict:
    """Backs pages up, drops them from the host, prefetches them back."""
    seed, n_pages = config.pop("seed"), config.pop("n_pages")
    rig = Rig(**config)
    try:
        data, tokens = rig.page_data(seed, n_pages), rig.tokens(seed, n_pages)
        idx = rig.write_pages(data)
        backed = rig.backup(idx, tokens)
        rig.host.free(idx)
        rig.zero_host()
        hit, done, idx = rig.prefetch(tokens)
        same = bool(done) and all(torch.equal(a, b) for a, b in zip(rig.read_pages(idx, done // rig.page), data))
        files = {m: sys.modules[m].__file__ for m in ("nixl_memkv", "nixl_memkv._client", "memkv_sglang.backend")}
        return {"backed": backed, "hit": hit, "done": done, "bit_exact": same, "backend": type(rig.backend).__module__
                + "." + type(rig.backend).__name__, "files": files}
    finally:
        rig.close()


def build_extensions() -> str:
    """Compiles (or finds up to date) sglang's native page hash; returns its path."""
    get_storage_hash_str(list(range(4)), None, page_size=4)  # the first hash builds it
    import glob

    built = glob.glob(os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], "hicache_hash*", "*.so"))
    if not built:
        raise SystemExit("sglang computed a page hash without loading its native hash module: "
                         "this sglang no longer JIT-builds it, so drop `build-extensions` from scripts/test.sh")
    return built[0]


if __name__ == "__main__":
    if sys.argv[1] == "build-extensions":
        print(f"sglang native hash: {build_extensions()}", flush=True)
        os._exit(0)
    result = (_roundtrip if sys.argv[1] == "roundtrip" else _child)(json.loads(sys.argv[2]))
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)
