#!/usr/bin/env python3
"""The S3 door against our own protocol and a PyPI S3 server, in one run,
with NIXL's stock OBJ backend (nixl-cu12) as the client of both S3 servers.

Series, on the same blocks (KVBM's shape: one object per block, devId = the
sequence hash):
- `memkv S3 door`: stock OBJ -> the node's S3 door (tenant keys, SigV4);
- `memkv protocol`: our MEMKV plugin -> the same node, same tenant;
- `moto S3`: stock OBJ -> moto's S3 server (`pip install "moto[server]"`),
  skipped with a note when moto is not installed.

Every write round uses new keys (offload traffic is a stream of new
blocks); reads fetch the last round's blocks. Prints GB/s and the door's
ratios to the other two; --json writes them.

usage: python3 scripts/bench_s3.py [--blocks N] [--block-size BYTES] [--rounds N] [--peers auto|none]
                                   [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from nixl_memkv import nixl as memkv_nixl
from nixl_memkv.config import NodeConfig, format_size
from nixl_memkv.license import write_throwaway_license
from nixl_memkv.node import MemKVNode
from nixl_memkv.ports import free_port
from nixl_memkv.tenants import new_tenant, save_tenants

memkv_nixl.use_with_nixl()
from nixl_cu12 import nixl_agent, nixl_agent_config  # noqa: E402  (after the plugin dir is set)

REGION = "us-east-1"
BUCKET = "kvbm"


def create_bucket(port: int, access: str, secret: str) -> None:
    import boto3
    import botocore.config

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION, aws_access_key_id=access,
                 aws_secret_access_key=secret,
                 config=botocore.config.Config(s3={"addressing_style": "path"})).create_bucket(Bucket=BUCKET)


class Series:
    """One backend on one agent: WRITE new blocks, READ them back, timed."""

    def __init__(self, name: str, backend: str, params: dict, host: np.ndarray):
        self.name, self.backend, self.host = name, backend, host
        self.agent = nixl_agent(f"bench-s3-{name.replace(' ', '-')}-{os.getpid()}",
                                nixl_agent_config(enable_prog_thread=False, backends=[]))
        self.agent.create_backend(backend, params)
        self.dram = self.agent.register_memory([(host.ctypes.data, host.nbytes, 0, "")], "DRAM", backends=[backend])
        self.writes: list[float] = []
        self.reads: list[float] = []

    def transfer(self, op: str, hashes: list[int]) -> float:
        n, size = self.host.shape
        objs = self.agent.register_memory([(0, size, h, "") for h in hashes], "OBJ", backends=[self.backend])
        local = self.agent.get_xfer_descs([(self.host.ctypes.data + i * size, size, 0) for i in range(n)], "DRAM")
        remote = self.agent.get_xfer_descs([(0, size, h) for h in hashes], "OBJ")
        handle = self.agent.initialize_xfer(op, local, remote, self.agent.name, backends=[self.backend])
        t0 = time.perf_counter()
        state = self.agent.transfer(handle)
        while state == "PROC":
            state = self.agent.check_xfer_state(handle)
        elapsed = time.perf_counter() - t0
        self.agent.release_xfer_handle(handle)
        self.agent.deregister_memory(objs, backends=[self.backend])
        if state != "DONE":
            raise RuntimeError(f"{self.name}: {op} ended {state}")
        return self.host.nbytes / elapsed / 1e9

    def run(self, rounds: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        expected = self.host.copy()
        for _ in range(rounds):
            hashes = [int(h) for h in rng.integers(1, 2**62, self.host.shape[0])]  # new keys every round
            self.writes.append(self.transfer("WRITE", hashes))
            self.host[:] = 0
            self.reads.append(self.transfer("READ", hashes))
            if not np.array_equal(self.host, expected):
                raise RuntimeError(f"{self.name}: blocks read back differ from those written")

    def figures(self) -> dict:
        return {"write_gb_s": statistics.median(self.writes), "read_gb_s": statistics.median(self.reads)}


def start_moto() -> tuple[subprocess.Popen, int] | None:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return None
    port = free_port("127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto's S3 server did not start within 30 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=2 << 20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peers", choices=("auto", "none"), default="auto",
                    help="auto: add moto when it is installed; none: MemKV's two series only")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.blocks < 1 or args.block_size < 4096 or args.rounds < 1:
        ap.error("--blocks and --rounds must be at least 1, --block-size at least 4096")
    host = np.random.default_rng(7).integers(0, 256, (args.blocks, args.block_size), dtype=np.uint8)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="memkv-bench-s3-") as tmp:
        tenant = new_tenant("bench")
        save_tenants(os.path.join(tmp, "tenants.yaml"), {"bench": tenant})
        need = 4 * args.blocks * args.block_size + (256 << 20)
        node = MemKVNode(NodeConfig(data_dir=os.path.join(tmp, "node"), host="127.0.0.1", port=0, s3_port=0,
                                    tenants=os.path.join(tmp, "tenants.yaml"), auth_key=os.urandom(32),
                                    dram_capacity=need, disk_capacity=0), admin=False).start()
        moto = start_moto() if args.peers == "auto" else None
        try:
            s3_port = node._native.s3_port
            create_bucket(s3_port, tenant.s3_access_key, tenant.s3_secret_key)
            obj = {"endpoint_override": f"127.0.0.1:{s3_port}", "scheme": "http", "region": REGION, "bucket": BUCKET,
                   "access_key": tenant.s3_access_key, "secret_key": tenant.s3_secret_key,
                   "use_virtual_addressing": "false"}
            lic, pub = write_throwaway_license(tmp, licensee="bench-s3")
            memkv = {"servers": node.address, "auth_key": tenant.auth_key.hex(), "tenant": "bench",
                     "namespace": BUCKET + "/", "license": lic, "license_pubkey": pub, "transport": "tcp"}
            series = [Series("memkv S3 door", "OBJ", obj, host), Series("memkv protocol", "MEMKV", memkv, host)]
            if moto:
                create_bucket(moto[1], "bench", "bench-secret")
                series.append(Series("moto S3", "OBJ", dict(obj, endpoint_override=f"127.0.0.1:{moto[1]}",
                                                            access_key="bench", secret_key="bench-secret"), host))
            for i, s in enumerate(series):
                s.run(args.rounds, seed=100 + i)
                results[s.name] = s.figures()
        finally:
            if moto:
                moto[0].terminate()
                moto[0].wait(30)
            node.stop()
    door = results["memkv S3 door"]
    print(f"{args.blocks} blocks x {format_size(args.block_size)}, {args.rounds} rounds of new keys, medians:")
    for name, f in results.items():
        print(f"  {name:16s} write {f['write_gb_s']:6.3f} GB/s   read {f['read_gb_s']:6.3f} GB/s")
    ratios = {}
    for peer in ("memkv protocol", "moto S3"):
        if peer in results:
            ratios[peer] = {op: door[op] / results[peer][op] for op in ("write_gb_s", "read_gb_s")}
            print(f"  door / {peer}: write {ratios[peer]['write_gb_s']:.2f}x, read {ratios[peer]['read_gb_s']:.2f}x")
    if "moto S3" not in results and args.peers == "auto":
        print('  (moto not installed: pip install "moto[server]" to add the PyPI S3 server)')
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"blocks": args.blocks, "block_size": args.block_size, "rounds": args.rounds,
                       "gb_s": results, "door_over": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
