"""Shared pieces of the NIXL tests: the plugin directory (NIXL reads it once,
when the first agent is created, so it is set at import), agents
with the MEMKV backend, and KVBM-shaped block transfers."""

from __future__ import annotations

import os
import time

import numpy as np

from nixl_memkv import nixl as memkv_nixl

PLUGIN_DIR = memkv_nixl.use_with_nixl()

from nixl_cu12 import nixl_agent, nixl_agent_config  # noqa: E402  (after NIXL_PLUGIN_DIR is set)
from nixl_cu12 import _bindings as nixlBind  # noqa: E402

NIXL_ERRORS = tuple(getattr(nixlBind, n) for n in dir(nixlBind) if n.startswith("nixl") and n.endswith("Error"))


def backend_params(nodes, auth_key: str, licence: tuple[str, str], **extra: str) -> dict[str, str]:
    params = {"servers": ",".join(n.address for n in nodes), "auth_key": auth_key, "license": licence[0],
              "license_pubkey": licence[1], "transport": "tcp", "op_timeout_ms": "5000",
              "connect_timeout_ms": "2000"}
    params.update(extra)
    return params


_counter = [0]


def memkv_agent(params: dict[str, str], *, backends: list[str] | None = None, name: str | None = None) -> nixl_agent:
    _counter[0] += 1
    agent = nixl_agent(name or f"agent-{os.getpid()}-{_counter[0]}", nixl_agent_config(enable_prog_thread=False, backends=backends or []))
    agent.create_backend("MEMKV", params)
    return agent


def wait(agent: nixl_agent, handle, timeout: float = 60.0) -> str:
    """Posts a prepared transfer and polls it to the end: "DONE" or "ERR"
    (nixl_cu12 raises on an error status; the reason is in the log)."""
    try:
        state = agent.transfer(handle)
        deadline = time.monotonic() + timeout
        while state == "PROC":
            if time.monotonic() > deadline:
                raise TimeoutError("transfer still in progress")
            time.sleep(0.0005)
            state = agent.check_xfer_state(handle)
    except NIXL_ERRORS:
        return "ERR"
    return state


def finish(agent: nixl_agent, handle) -> str:
    """Posts a prepared transfer, waits for it ("DONE" or "ERR") and releases it."""
    try:
        return wait(agent, handle)
    finally:
        agent.release_xfer_handle(handle)


def run_xfer(agent: nixl_agent, op: str, local, remote) -> str:
    """One MEMKV transfer between `local` and `remote` descriptor lists, to the end."""
    return finish(agent, agent.initialize_xfer(op, local, remote, agent.name, backends=["MEMKV"]))


def blocks(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size), dtype=np.uint8)


def seq_hashes(n: int, seed: int = 0) -> list[int]:
    """KVBM's devIds: 64-bit sequence hashes."""
    return [int(x) for x in np.random.default_rng(seed + 1000).integers(1, 2**64 - 1, n, dtype=np.uint64)]


class KvbmBlocks:
    """G4 offload/onboard as KVBM does it: one OBJ registration per block,
    (0, block_bytes, seq_hash, ""), one descriptor per block."""

    def __init__(self, agent: nixl_agent, host: np.ndarray, hashes: list[int]):
        self.agent = agent
        self.host = host
        self.hashes = hashes
        self.block = host.shape[1]
        self.dram = agent.register_memory([(host.ctypes.data, host.nbytes, 0, "")], "DRAM", backends=["MEMKV"])
        self.objs = agent.register_memory([(0, self.block, h, "") for h in hashes], "OBJ", backends=["MEMKV"])

    def xfer(self, op: str, buf: np.ndarray | None = None):
        buf = self.host if buf is None else buf
        local = self.agent.get_xfer_descs([(buf.ctypes.data + i * self.block, self.block, 0)
                                           for i in range(len(self.hashes))], "DRAM")
        remote = self.agent.get_xfer_descs([(0, self.block, h) for h in self.hashes], "OBJ")
        return self.agent.initialize_xfer(op, local, remote, self.agent.name, backends=["MEMKV"])

    def run(self, op: str, buf: np.ndarray | None = None) -> str:
        return finish(self.agent, self.xfer(op, buf))

    def close(self):
        self.agent.deregister_memory(self.objs, backends=["MEMKV"])
        self.agent.deregister_memory(self.dram, backends=["MEMKV"])


def layer_separate_descs(agent: nixl_agent, hashes: list[int], k: np.ndarray, v: np.ndarray, region: int):
    """KVBM's layer-separate layout: per block, layers x (K, V) regions taken
    from per-layer buffers (k[layer], v[layer] hold the blocks side by side),
    written as one object per block. Returns (local, remote) descriptor lists."""
    local, remote = [], []
    for b, h in enumerate(hashes):
        for layer in range(k.shape[0]):
            for r, buf in enumerate((k, v)):
                local.append((buf[layer].ctypes.data + b * region, region, 0))
                remote.append(((layer * 2 + r) * region, region, h))
    return agent.get_xfer_descs(local, "DRAM"), agent.get_xfer_descs(remote, "OBJ")

