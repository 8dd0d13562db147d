#!/usr/bin/env python3
"""MemKV over RDMA against perftest on the same device, in one run.

Run it anywhere: without an RDMA device it re-runs itself inside the
soft-RoCE guest of scripts/rdma-vm.sh. In one run it measures

- MemKV RDMA put and get of 1 MiB and 4 MiB values in 16-value batches,
  from buffers registered with the client (zero-copy, as NIXL's DRAM
  registrations and the plugins' host pools are) and from unregistered ones
  (through the staging slots);
- perftest's ib_read_bw (what a MemKV put is: the node READs the value) and
  ib_write_bw (a get: the node WRITEs it) with the same message sizes;
- MemKV over TCP on the same host, for scale.

Every MemKV figure is printed as a ratio of perftest's in the same run; the
target is >= 0.8x for the registered path. Soft-RoCE under emulation moves
tens of MB/s: the ratios are the result, not the absolute numbers.

usage: python3 scripts/bench_rdma.py [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

DEVICE = "rxe0"
HOST = "10.77.0.1"
SIZES = [1 << 20, 4 << 20]
BATCH = 16
TARGET = 0.8


def in_guest() -> bool:
    return os.path.isdir(f"/sys/class/infiniband/{DEVICE}")


def perftest(tool: str, size: int, iters: int) -> float:
    """MB/s (average) of `tool` between two processes on rxe0."""
    base = [tool, "-d", DEVICE, "-s", str(size), "-n", str(iters), "-F"]
    server = subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    try:
        out = subprocess.run([*base, HOST], capture_output=True, text=True, timeout=600).stdout
    finally:
        server.wait(timeout=60)
    for line in out.splitlines():
        m = re.match(rf"\s*{size}\s+\d+\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            return float(m.group(2))
    raise RuntimeError(f"{tool}: no result line in its output:\n{out}")


def memkv_rates(client, np, rounds: int, size: int, registered: bool) -> tuple[float, float]:
    """MB/s of batched puts (new keys every round) and gets."""
    pool = np.random.default_rng(size).integers(0, 256, 2 * BATCH * size, dtype=np.uint8)
    if registered and not client.register_memory(pool):
        raise RuntimeError("this client has no RDMA: cannot register")
    src = [pool[i * size:(i + 1) * size] for i in range(BATCH)]
    dst = [pool[(BATCH + i) * size:(BATCH + i + 1) * size] for i in range(BATCH)]
    puts, gets = [], []
    for r in range(rounds):
        keys = [f"bench-rdma/{registered}/{size}/{r}/{i}" for i in range(BATCH)]
        t0 = time.perf_counter()
        client.batch_put(keys, src)
        puts.append(BATCH * size / (time.perf_counter() - t0) / 1e6)
        t0 = time.perf_counter()
        if client.batch_get_into(keys, dst) != [size] * BATCH:
            raise RuntimeError("values went missing")
        gets.append(BATCH * size / (time.perf_counter() - t0) / 1e6)
        if not all(np.array_equal(a, b) for a, b in zip(src, dst)):
            raise RuntimeError("bytes read back differ")
        client.batch_remove(keys)
    if registered:
        client.unregister_memory(pool)
    return statistics.median(puts), statistics.median(gets)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this file (inside the checkout: the guest "
                                   "can write only there)")
    args = ap.parse_args()
    if not in_guest():
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = ["bash", os.path.join(here, "rdma-vm.sh"), "--timeout", "1800", "--", sys.executable,
               os.path.abspath(__file__), *sys.argv[1:]]
        print(f"no {DEVICE} here: running inside the soft-RoCE guest", file=sys.stderr)
        return subprocess.call(cmd, cwd=os.path.dirname(here))  # the guest shares the checkout read-write

    import numpy as np

    from nixl_memkv import Client
    from nixl_memkv.auth import generate_auth_key
    from nixl_memkv.config import load_client_config

    key = generate_auth_key()
    data = tempfile.mkdtemp(prefix="bench-rdma-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKV_")}
    env["MEMKV_AUTH_KEY"] = key
    node_log = open(os.path.join(data, "node.log"), "w+")
    node = subprocess.Popen([sys.executable, "-m", "nixl_memkv", "server", "--data-dir", data, "--host", HOST,
                             "--port", "9900", "--dram-capacity", "1GiB", "--disk-capacity", "0",
                             "--rdma-devices", DEVICE], env=env, stdout=node_log, stderr=subprocess.STDOUT,
                            cwd=data)  # not the checkout: import the installed package
    rows = []
    try:
        def client(transport: str):
            return Client(config=load_client_config(
                {"servers": f"{HOST}:9900", "auth_key": key, "transport": transport, "rdma_devices": DEVICE,
                 "op_timeout_ms": 120000}, overrides_source="bench"))
        deadline = time.monotonic() + 120
        while True:
            try:
                client("tcp").ping()
                break
            except Exception:
                if time.monotonic() > deadline or node.poll() is not None:
                    node_log.seek(0)
                    raise RuntimeError(f"the node did not start:\n{node_log.read()[-3000:]}")
                time.sleep(0.5)
        rdma, tcp = client("rdma"), client("tcp")
        for size in SIZES:
            iters = BATCH * args.rounds  # as many messages as MemKV moves
            read_bw = perftest("ib_read_bw", size, iters)
            write_bw = perftest("ib_write_bw", size, iters)
            reg_put, reg_get = memkv_rates(rdma, np, args.rounds, size, registered=True)
            st_put, st_get = memkv_rates(rdma, np, args.rounds, size, registered=False)
            tcp_put, tcp_get = memkv_rates(tcp, np, args.rounds, size, registered=False)
            rows.append({"size": size, "ib_read_bw_MBps": read_bw, "ib_write_bw_MBps": write_bw,
                         "rdma_registered_put_MBps": reg_put, "rdma_registered_get_MBps": reg_get,
                         "rdma_staged_put_MBps": st_put, "rdma_staged_get_MBps": st_get,
                         "tcp_put_MBps": tcp_put, "tcp_get_MBps": tcp_get,
                         "put_ratio": reg_put / read_bw, "get_ratio": reg_get / write_bw})
        rdma.close()
        tcp.close()
    finally:
        node.terminate()
        node.wait(60)
    ok = True
    print(f"MemKV over RDMA ({DEVICE}, soft-RoCE) vs perftest, {BATCH}-value batches, median of {args.rounds} rounds")
    print(f"{'value':>7} {'ib_read_bw':>11} {'put reg.':>9} {'ratio':>6} {'put staged':>11} {'ib_write_bw':>12} "
          f"{'get reg.':>9} {'ratio':>6} {'get staged':>11} {'TCP put':>8} {'TCP get':>8}   (MB/s)")
    for r in rows:
        ok &= r["put_ratio"] >= TARGET and r["get_ratio"] >= TARGET
        print(f"{r['size'] >> 20:>5}Mi {r['ib_read_bw_MBps']:>11.1f} {r['rdma_registered_put_MBps']:>9.1f} "
              f"{r['put_ratio']:>6.2f} {r['rdma_staged_put_MBps']:>11.1f} {r['ib_write_bw_MBps']:>12.1f} "
              f"{r['rdma_registered_get_MBps']:>9.1f} {r['get_ratio']:>6.2f} {r['rdma_staged_get_MBps']:>11.1f} "
              f"{r['tcp_put_MBps']:>8.1f} {r['tcp_get_MBps']:>8.1f}")
    print(f"target: registered put and get >= {TARGET}x perftest: {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "target": TARGET, "target_met": ok, "batch": BATCH, "rounds": args.rounds}, f,
                      indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
