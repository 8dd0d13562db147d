"""`memkv demo`: the main job on an embedded default, the way Dynamo's KVBM
drives it. A MemKV node starts on a temp dir with a generated auth key and
licence; a NIXL agent loads the MEMKV backend (libplugin_MEMKV.so) beside
NIXL's built-in plugins; KV blocks registered as KVBM does (one OBJ_SEG
registration per block, devId = the block's sequence hash) are offloaded
(WRITE), dropped locally, the node is restarted (blocks come back from its
shards), and the blocks are onboarded (READ) and verified byte for byte.

`--client-only` runs the same round trip through the Python client instead
of NIXL (for machines without nixl-cu12)."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from .auth import generate_auth_key, parse_auth_key
from .client import Client
from .config import ClientConfig, NodeConfig, format_size
from .errors import ConfigError
from .license import write_throwaway_license
from .logs import setup_logging
from .node import MemKVNode

log = logging.getLogger("memkv-client")

BATCH = 16  # blocks per transfer, as KVBM offloads them


def _progress(console: Console) -> Progress:
    # Sizes in MiB as the report gives them; speeds stay decimal, as its GB/s.
    return Progress(TextColumn("{task.description:<10}"), BarColumn(), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), console=console)


def _in_batches(console: Console, label: str, n_blocks: int, block_size: int, step) -> float:
    """Runs step(range of block ids) per batch of BATCH blocks under a progress
    bar; returns the seconds the steps report spending (their own timing)."""
    busy = 0.0
    with _progress(console) as bar:
        task = bar.add_task(label, total=n_blocks * block_size)
        for i in range(0, n_blocks, BATCH):
            ids = range(i, min(i + BATCH, n_blocks))
            busy += step(ids)
            bar.advance(task, len(ids) * block_size)
    return busy


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _Setup:
    """Temp dir, auth key, licence and an embedded node."""

    def __init__(self, tmp: str):
        self.key_hex = generate_auth_key()
        self.licence, self.pubkey = write_throwaway_license(tmp, licensee="memkv demo")
        self.node_cfg = NodeConfig(data_dir=os.path.join(tmp, "node"), host="127.0.0.1", port=0,
                                   auth_key=parse_auth_key(self.key_hex, "demo"), dram_capacity=1 << 30,
                                   disk_capacity=4 << 30)
        self.node = MemKVNode(self.node_cfg, admin=False).start()

    def restart_node(self) -> None:
        port = self.node.port
        self.node.stop()  # a clean stop flushes every acknowledged block to its shard
        self.node = MemKVNode(dataclasses.replace(self.node_cfg, port=port), admin=False).start()


def _report(console: Console, rows: list[tuple[str, str]], ok: bool) -> bool:
    t = Table(title="MemKV demo")
    t.add_column("")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, v)
    t.add_row("verified", "[green]every byte equal[/green]" if ok else "[red]MISMATCH[/red]")
    console.print(t)
    return ok


def run_demo(blocks: int = 64, block_size: int = 2 << 20, client_only: bool = False) -> bool:
    setup_logging("INFO")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="memkv-demo-") as tmp:
        s = _Setup(tmp)
        try:
            if client_only:
                return _client_demo(console, s, blocks, block_size)
            return _nixl_demo(console, s, blocks, block_size)
        finally:
            s.node.stop()


def _nixl_demo(console: Console, s: _Setup, n_blocks: int, block_size: int) -> bool:
    from . import nixl as memkv_nixl

    memkv_nixl.use_with_nixl()  # MEMKV beside NIXL's own plugins; before the first agent
    try:
        from nixl_cu12 import nixl_agent, nixl_agent_config
    except ImportError:
        raise ConfigError("nixl-cu12 is not installed: pip install torch==2.13.0 'nixl-cu12==1.5.1' "
                          "(or run `memkv demo --client-only`)") from None
    params = {"servers": s.node.address, "auth_key": s.key_hex, "license": s.licence,
              "license_pubkey": s.pubkey, "transport": "auto"}
    agent = nixl_agent("memkv-demo", nixl_agent_config(enable_prog_thread=False, backends=[]))
    agent.create_backend("MEMKV", params)

    rng = np.random.default_rng(7)
    host = rng.integers(0, 256, (n_blocks, block_size), dtype=np.uint8)
    original = host.copy()
    hashes = [int(h) for h in rng.integers(1, 2**64 - 1, n_blocks, dtype=np.uint64)]  # sequence hashes
    dram = agent.register_memory([(host.ctypes.data, host.nbytes, 0, "")], "DRAM", backends=["MEMKV"])
    objs = agent.register_memory([(0, block_size, h, "") for h in hashes], "OBJ", backends=["MEMKV"])

    def move(op: str):
        def step(ids) -> float:
            local = agent.get_xfer_descs([(host.ctypes.data + j * block_size, block_size, 0) for j in ids], "DRAM")
            remote = agent.get_xfer_descs([(0, block_size, hashes[j]) for j in ids], "OBJ")
            handle = agent.initialize_xfer(op, local, remote, agent.name, backends=["MEMKV"])

            def run():
                state = agent.transfer(handle)
                while state == "PROC":
                    state = agent.check_xfer_state(handle)

            seconds = _timed(run)  # the transfer itself, not building its descriptor lists
            agent.release_xfer_handle(handle)
            return seconds
        return step

    put_s = _in_batches(console, "offload", n_blocks, block_size, move("WRITE"))
    host[:] = 0  # evicted from the local tier
    s.restart_node()
    get_s = _in_batches(console, "onboard", n_blocks, block_size, move("READ"))
    ok = np.array_equal(host, original)
    missing = agent.query_memory([(0, block_size, 12345, "")], "MEMKV", "OBJ")[0]
    agent.deregister_memory(objs, backends=["MEMKV"])
    agent.deregister_memory(dram, backends=["MEMKV"])
    del agent
    total = n_blocks * block_size
    return _report(console, [
        ("path", "NIXL agent -> MEMKV plugin -> MemKV node -> shards"),
        ("blocks", f"{n_blocks} x {format_size(block_size)} = {format_size(total)}, {BATCH} per transfer"),
        ("offload (NIXL WRITE)", f"{total / put_s / 1e9:.2f} GB/s"),
        ("node restart", "blocks reloaded from its shards"),
        ("onboard (NIXL READ)", f"{total / get_s / 1e9:.2f} GB/s"),
        ("query_memory of an unknown block", "absent" if missing is None else "[red]present?[/red]"),
    ], ok and missing is None)


def _client_demo(console: Console, s: _Setup, n_blocks: int, block_size: int) -> bool:
    rng = np.random.default_rng(7)
    data = [rng.integers(0, 256, block_size, dtype=np.uint8) for _ in range(n_blocks)]
    keys = [f"demo/seq-hash-{i:016x}" for i in range(n_blocks)]
    cfg = ClientConfig(servers=(s.node.address,), auth_key=s.node_cfg.auth_key, transport="tcp")
    with Client(config=cfg) as client:
        put_s = _in_batches(console, "offload", n_blocks, block_size,
                            lambda ids: _timed(lambda: client.batch_put([keys[j] for j in ids], [data[j] for j in ids])))
    s.restart_node()
    out = [np.empty(block_size, dtype=np.uint8) for _ in range(n_blocks)]
    with Client(config=cfg) as client:
        get_s = _in_batches(console, "onboard", n_blocks, block_size,
                            lambda ids: _timed(lambda: client.batch_get_into([keys[j] for j in ids],
                                                                             [out[j] for j in ids])))
    total = n_blocks * block_size
    return _report(console, [
        ("path", "Python client -> MemKV node -> shards"),
        ("blocks", f"{n_blocks} x {format_size(block_size)} = {format_size(total)}"),
        ("offload (batch_put)", f"{total / put_s / 1e9:.2f} GB/s"),
        ("node restart", "blocks reloaded from its shards"),
        ("onboard (batch_get_into)", f"{total / get_s / 1e9:.2f} GB/s"),
    ], all(np.array_equal(a, b) for a, b in zip(data, out)))
