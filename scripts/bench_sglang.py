#!/usr/bin/env python3
"""sglang HiCache: MemKV vs sglang's built-in `file` backend, one run.

Backs up 1,024 host pages through sglang's real HybridCacheController
(tests/sglang_harness.py), drops them from the host pool, and prefetches
them back, for each backend on the same page geometry: MemKV with the
zero-copy interface (interface_v1), MemKV on the controller's flat-page
path, and the `file` backend (the flat-page path is the only one it has)
writing under a temporary directory. Pages are 256 KiB (16 tokens, 8 layers,
8 KV heads x 64 dims, bf16, page_first layout): 256 MiB per direction. Each
prefetch is checked bit-exact; figures are medians over the rounds.

    python3 scripts/bench_sglang.py [--pages 1024] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import sglang_harness as S  # noqa: E402
import torch  # noqa: E402

from nixl_memkv.auth import generate_auth_key  # noqa: E402
from nixl_memkv.license import write_throwaway_license  # noqa: E402

GEOMETRY = dict(page=16, layers=8, heads=8, head_dim=64, layout="page_first")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(rig: S.Rig, pages: int, rounds: int, seed: int) -> dict:
    rows = []
    for r in range(rounds + 1):  # round 0 warms up
        # Fresh pages per backend and round: nothing may already be stored.
        data, tokens = rig.page_data(seed + r, pages), rig.tokens(seed + r, pages)
        idx = rig.write_pages(data)
        t0 = time.perf_counter()
        done = rig.backup(idx, tokens)
        t_backup = time.perf_counter() - t0
        rig.host.free(idx)
        rig.zero_host()
        t0 = time.perf_counter()
        hit, loaded, dst = rig.prefetch(tokens)
        t_prefetch = time.perf_counter() - t0
        if done != loaded or loaded != pages * rig.page:
            raise SystemExit(f"round {r}: backed up {done}, prefetched {loaded} of {pages * rig.page} tokens")
        if not all(torch.equal(a, b) for a, b in zip(rig.read_pages(dst, pages), data)):
            raise SystemExit(f"round {r}: prefetched pages differ from what was backed up")
        rig.host.free(dst)
        if r:
            rows.append((t_backup, t_prefetch))
    page_bytes = rig.host.get_size_per_token() * rig.page
    b, p = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
    return {"backup_s": b, "prefetch_s": p, "backup_pages_s": pages / b, "prefetch_pages_s": pages / p,
            "backup_gbs": pages * page_bytes / b / 1e9, "prefetch_gbs": pages * page_bytes / p / 1e9,
            "page_bytes": page_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="memkv-bench-sglang-")
    node = None
    try:
        key = generate_auth_key()
        lic, pub = write_throwaway_license(workdir, licensee="bench")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKV_")}
        node = subprocess.Popen([sys.executable, "-P", "-m", "nixl_memkv", "server", "--data-dir",
                                 os.path.join(workdir, "node"), "--host", "127.0.0.1", "--port", str(port),
                                 "--admin-port", str(free_port()), "--dram-capacity", "2GiB"],
                                env=dict(env, MEMKV_AUTH_KEY=key), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        memkv = dict(S.MEMKV_DYNAMIC, servers=f"127.0.0.1:{port}", auth_key=key, license=lic, license_pubkey=pub,
                     transport="tcp")
        backends = {
            "memkv (zero-copy)": dict(backend="dynamic", extra=dict(memkv, interface_v1=1)),
            "memkv (flat pages)": dict(backend="dynamic", extra=memkv),
            "file": dict(backend="file", extra={"file_storage_path": os.path.join(workdir, "hicache-file")}),
        }
        results = {}
        for n, (name, spec) in enumerate(backends.items()):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rig = S.Rig(pages=args.pages + 16, **GEOMETRY, **spec)
            try:
                results[name] = measure(rig, args.pages, args.rounds, seed=1000 * (n + 1))
            finally:
                rig.close()
    finally:
        if node is not None:
            node.terminate()
            node.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)

    page_kib = results["file"]["page_bytes"] // 1024
    print(f"\nsglang HiCache through the real controller: {args.pages} pages x {page_kib} KiB "
          f"({GEOMETRY['layout']}), median of {args.rounds} rounds")
    print(f"{'backend':<20} {'backup pages/s':>15} {'GB/s':>7} {'prefetch pages/s':>17} {'GB/s':>7}")
    for name, r in results.items():
        print(f"{name:<20} {r['backup_pages_s']:15.0f} {r['backup_gbs']:7.2f} {r['prefetch_pages_s']:17.0f} "
              f"{r['prefetch_gbs']:7.2f}")
    ours, file_ = results["memkv (zero-copy)"], results["file"]
    print(f"\nmemkv zero-copy vs file (same run): backup {ours['backup_pages_s'] / file_['backup_pages_s']:.2f}x, "
          f"prefetch {ours['prefetch_pages_s'] / file_['prefetch_pages_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    os._exit(0)  # sglang leaves non-daemon threads behind


if __name__ == "__main__":
    main()
