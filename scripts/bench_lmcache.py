#!/usr/bin/env python3
"""LMCache with MemKV vs LMCache's own tiers, one run, same workload.

The workload: a prompt of 64 chunks x 256 tokens (256 is the vLLM guide's
chunk_size, docs/compatibility.md) of a model whose KV is 4 MiB per chunk
(bf16, 8 layers x 512 hidden), driven through LMCache's real cache engine on
the CPU (tests/lmcache_harness.py). Tiers:

  local-cpu  LMCache's local CPU backend only: the floor
  memkv      + our storage plugin, one MemKV node on loopback
  lm         + LMCache's `lm://` server (python -m lmcache.v1.server)
  redis      + Debian's redis-server (skipped when not installed)

Per tier and round (fresh tokens each round): store (the call vLLM waits
on), until acknowledged (every put acknowledged by the remote store), lookup
and retrieve after LMCache's local CPU copy is cleared (the floor keeps it:
that is what "floor" means), each retrieve checked bit-exact. Figures are
medians over the rounds; the targets are ratios within this run.

    python3 scripts/bench_lmcache.py [--rounds 3] [--chunks 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("LMCACHE_TRACK_USAGE", "false")
os.environ.setdefault("PYTHONHASHSEED", "0")

from nixl_memkv.bench_peers import wait_port  # noqa: E402
from nixl_memkv.ports import free_port  # noqa: E402

LAYERS, HEADS = 8, 8  # 2 x 8 x 256 x 512 x 2 B = 4 MiB per chunk


def child(tier: str, yaml_path: str, rounds: int, chunks: int) -> dict:
    import torch
    import lmcache_harness as H

    ntokens = chunks * H.CHUNK
    eng = H.Engine(yaml_path, ntokens, layers=LAYERS, heads=HEADS)
    remote = [b for name, b in eng.storage_manager.storage_backends.items() if name != "LocalCPUBackend"]
    if tier != "local-cpu" and not remote:
        raise SystemExit(f"tier {tier}: LMCache did not load its remote backend (see its log above)")
    in_plugin = [0.0]
    plugin = eng.plugin
    if plugin is not None:  # time spent inside our plugin, apart from LMCache's own work
        inner = plugin.batched_get_blocking

        def timed(keys):
            t = time.perf_counter()
            try:
                return inner(keys)
            finally:
                in_plugin[0] += time.perf_counter() - t
        plugin.batched_get_blocking = timed
    rows = []
    for r in range(rounds + 1):  # round 0 warms up allocators and connections
        tokens = H.tokens_for(1000 + r, ntokens)
        data = eng.fill(1000 + r, ntokens)
        keys = [k for _, _, k in eng.engine.token_database.process_tokens(tokens)]
        t0 = time.perf_counter()
        eng.store(tokens)
        t_store = time.perf_counter() - t0
        while any(b.exists_in_put_tasks(k) for b in remote for k in keys):
            time.sleep(0.0005)
        t_ack = time.perf_counter() - t0
        if tier != "local-cpu":
            eng.clear_local()
        t0 = time.perf_counter()
        hit = eng.lookup(tokens)
        t_lookup = time.perf_counter() - t0
        in_plugin[0] = 0.0
        t0 = time.perf_counter()
        n, got = eng.retrieve(tokens)
        t_retrieve = time.perf_counter() - t0
        if hit != ntokens or n != ntokens or not torch.equal(got, data):
            raise SystemExit(f"tier {tier}: round {r} looked up {hit} and retrieved {n} of {ntokens} tokens "
                             f"(bit-exact: {torch.equal(got, data)})")
        if r:
            rows.append({"store_ms": t_store * 1e3, "ack_ms": t_ack * 1e3, "lookup_ms": t_lookup * 1e3,
                         "retrieve_ms": t_retrieve * 1e3, "retrieve_in_plugin_ms": in_plugin[0] * 1e3})
    result = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    print("RESULT " + json.dumps(result), flush=True)
    # LMCache 0.5.6's redis connector can hang in close(); the figures are out.
    closer = threading.Thread(target=eng.close, daemon=True)
    closer.start()
    closer.join(20)
    return result


def run_tier(tier: str, yaml_text: str, workdir: str, rounds: int, chunks: int, env: dict) -> dict:
    path = os.path.join(workdir, f"{tier}.yaml")
    with open(path, "w") as f:
        f.write(yaml_text)
    out = subprocess.run([sys.executable, __file__, "--child", tier, path, "--rounds", str(rounds),
                          "--chunks", str(chunks)], env=env, capture_output=True, text=True, timeout=900)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"tier {tier} failed (rc={out.returncode})")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--child", nargs=2, metavar=("TIER", "YAML"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.rounds, args.chunks)
        os._exit(0)

    import lmcache_harness as H
    from nixl_memkv.auth import generate_auth_key
    from nixl_memkv.bench import raw_loopback_gbps
    from nixl_memkv.license import write_throwaway_license

    workdir = tempfile.mkdtemp(prefix="memkv-bench-lmcache-")
    procs: list[subprocess.Popen] = []
    env = dict(os.environ)
    env.pop("MEMKV_CONFIG", None)
    cpu_gb = max(1.0, round(3 * args.chunks * 4 / 1024 + 0.25, 2))  # room for the store and a retrieve
    try:
        key = generate_auth_key()
        lic, pub = write_throwaway_license(workdir, licensee="bench")
        mport = free_port()
        node_env = dict(env, MEMKV_AUTH_KEY=key)
        procs.append(subprocess.Popen([sys.executable, "-P", "-m", "nixl_memkv", "server", "--data-dir",
                                       os.path.join(workdir, "node"), "--host", "127.0.0.1", "--port", str(mport),
                                       "--admin-port", str(free_port())],
                                      env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(mport, procs[-1], "memkv node")
        lport = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "lmcache.v1.server", "127.0.0.1", str(lport)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(lport, procs[-1], "lm:// server")
        tiers = {
            "local-cpu": H.config_yaml(extra={}, plugin=False, cpu_gb=cpu_gb),
            "memkv": H.config_yaml(extra={"memkv.servers": f"127.0.0.1:{mport}", "memkv.auth_key": key,
                                          "memkv.license": lic, "memkv.license_pubkey": pub,
                                          "memkv.transport": "tcp"}, cpu_gb=cpu_gb),
            "lm": H.config_yaml(extra={}, plugin=False, cpu_gb=cpu_gb, remote_url=f"lm://127.0.0.1:{lport}"),
        }
        if shutil.which("redis-server"):
            rport = free_port()
            procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no", "--protected-mode", "no"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(rport, procs[-1], "redis-server")
            tiers["redis"] = H.config_yaml(extra={}, plugin=False, cpu_gb=cpu_gb,
                                           remote_url=f"redis://127.0.0.1:{rport}")
        else:
            print("redis-server not installed (apt-get install redis-server): redis tier skipped", file=sys.stderr)
        results = {}
        raw = []
        for tier, text in tiers.items():
            print(f"running {tier} ...", file=sys.stderr, flush=True)
            raw.append(raw_loopback_gbps(1.0, working_set=64 << 20))
            results[tier] = run_tier(tier, text, workdir, args.rounds, args.chunks, env)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    mib = args.chunks * 4
    print(f"\nLMCache, {args.chunks} chunks x 256 tokens, 4 MiB per chunk ({mib} MiB), median of {args.rounds} rounds")
    print(f"{'tier':<10} {'store ms':>9} {'ack ms':>9} {'lookup ms':>10} {'retrieve ms':>12} {'retrieve GB/s':>14}")
    for tier, r in results.items():
        gbps = mib / 1024 / (r["retrieve_ms"] / 1e3) * 1.073741824
        print(f"{tier:<10} {r['store_ms']:9.1f} {r['ack_ms']:9.1f} {r['lookup_ms']:10.2f} {r['retrieve_ms']:12.1f} "
              f"{gbps:14.2f}")
    floor, ours = results["local-cpu"], results["memkv"]
    raw_gbps = statistics.median(raw)
    fetch_ms = ours["retrieve_ms"] - floor["retrieve_ms"]
    socket_ms = mib / 1024 * 1.073741824 / raw_gbps * 1e3
    print(f"\nraw loopback socket, one stream (median of {len(raw)} samples in this run): {raw_gbps:.2f} GB/s; "
          f"moving {mib} MiB through it takes {socket_ms:.0f} ms.")
    print(f"memkv retrieve minus the local-cpu floor: {fetch_ms:.0f} ms ({socket_ms / max(fetch_ms, 1e-9):.2f}x "
          "the raw socket's speed)")
    print(f"time inside the memkv plugin per retrieve: {ours['retrieve_in_plugin_ms']:.0f} ms "
          f"({socket_ms / max(ours['retrieve_in_plugin_ms'], 1e-9):.2f}x the raw socket's speed)")
    checks = [("memkv retrieve / local-cpu retrieve", ours["retrieve_ms"] / floor["retrieve_ms"], 1.5, "<="),
              ("memkv store / local-cpu store", ours["store_ms"] / floor["store_ms"], 1.2, "<=")]
    for peer in ("lm", "redis"):
        if peer in results:
            checks.append((f"{peer} retrieve / memkv retrieve", results[peer]["retrieve_ms"] / ours["retrieve_ms"],
                           3.0, ">="))
    print("\ntargets (ratios within this run):")
    for name, value, limit, op in checks:
        ok = value <= limit if op == "<=" else value >= limit
        print(f"  {name:<40} {value:6.2f}  (target {op} {limit})  {'met' if ok else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "checks": [dict(zip(("name", "value", "limit", "op"), c)) for c in checks]},
                      f, indent=2)


if __name__ == "__main__":
    main()
