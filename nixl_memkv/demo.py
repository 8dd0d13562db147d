"""`memkv demo`: the whole path on an embedded default. A node on a temp dir
with a generated auth key and licence; KV-block-sized values offloaded in
batches, the node restarted (values come back from its shards), onboarded
straight into buffers and verified byte for byte."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from .auth import generate_auth_key, parse_auth_key
from .client import Client
from .config import ClientConfig, NodeConfig, format_size
from .license import generate_issuer_key, issue_license, verify_license
from .logs import setup_logging
from .node import MemKVNode

log = logging.getLogger("memkv-client")

BATCH = 16  # blocks per batched request, as KVBM offloads them


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<10}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TransferSpeedColumn(), console=console, transient=False)


def run_demo(blocks: int = 64, block_size: int = 2 << 20) -> bool:
    setup_logging("INFO")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="memkv-demo-") as tmp:
        key_hex = generate_auth_key()
        pem, pub = generate_issuer_key()
        lic_path = os.path.join(tmp, "minio.license")
        with open(lic_path, "w") as f:
            f.write(issue_license(pem, licensee="memkv demo", plan="developer",
                                  expires_at=datetime.now(timezone.utc) + timedelta(days=1)))
        lic = verify_license(lic_path, [pub])
        log.info("memkv-client license verified plan=%s licensee=%s", lic.plan, lic.licensee)

        node_cfg = NodeConfig(data_dir=os.path.join(tmp, "node"), host="127.0.0.1", port=0,
                              auth_key=parse_auth_key(key_hex, "demo"), dram_capacity=1 << 30,
                              disk_capacity=4 << 30)
        rng = np.random.default_rng(7)
        data = [rng.integers(0, 256, block_size, dtype=np.uint8) for _ in range(blocks)]
        keys = [f"demo/seq-hash-{i:016x}" for i in range(blocks)]
        total = blocks * block_size

        node = MemKVNode(node_cfg, admin=False).start()
        cfg = ClientConfig(servers=(node.address,), auth_key=node_cfg.auth_key, transport="tcp",
                           license=lic_path, license_pubkey=pub)
        log.info("Creating memkv engine config=%r", cfg)
        with Client(config=cfg) as client, _progress(console) as bar:
            task = bar.add_task("offload", total=total)
            t0 = time.perf_counter()
            for i in range(0, blocks, BATCH):
                client.batch_put(keys[i:i + BATCH], data[i:i + BATCH])
                bar.advance(task, sum(d.nbytes for d in data[i:i + BATCH]))
            put_s = time.perf_counter() - t0
        node.stop()  # a clean stop flushes every acknowledged block to its shard

        node = MemKVNode(node_cfg, admin=False).start()
        cfg = ClientConfig(servers=(node.address,), auth_key=node_cfg.auth_key, transport="tcp")
        out = [np.empty(block_size, dtype=np.uint8) for _ in range(blocks)]
        with Client(config=cfg) as client, _progress(console) as bar:
            task = bar.add_task("onboard", total=total)
            t0 = time.perf_counter()
            for i in range(0, blocks, BATCH):
                sizes = client.batch_get_into(keys[i:i + BATCH], out[i:i + BATCH])
                if any(s != block_size for s in sizes):
                    console.print(f"[red]block missing after restart: {sizes}[/red]")
                    node.stop()
                    return False
                bar.advance(task, sum(o.nbytes for o in out[i:i + BATCH]))
            get_s = time.perf_counter() - t0
            ok = all(np.array_equal(a, b) for a, b in zip(data, out))
            missing = client.get("demo/never-written")
        stats = node.stats()
        node.stop()

        t = Table(title="MemKV demo")
        t.add_column("")
        t.add_column("value")
        t.add_row("blocks", f"{blocks} x {format_size(block_size)} = {format_size(total)}")
        t.add_row("offload (batch_put)", f"{total / put_s / 1e9:.2f} GB/s")
        t.add_row("node restart", "every block reloaded from shards")
        t.add_row("onboard (batch_get_into)", f"{total / get_s / 1e9:.2f} GB/s")
        t.add_row("verified", "[green]all bytes equal[/green]" if ok else "[red]MISMATCH[/red]")
        t.add_row("miss", "None (as expected)" if missing is None else "[red]unexpected value[/red]")
        t.add_row("node after restart", f"{stats['keys']} keys, {stats['disk_reads']} shard reads")
        console.print(t)
        return ok and missing is None
