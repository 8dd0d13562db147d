#!/usr/bin/env python3
"""Time to first token with and without MemKV, real vLLM on this CPU.

One run, one model, the same prompts in every series:

  recompute     vLLM with no KV connector: every prompt is a full prefill
  miss+store    vLLM → LMCache MP server → MemKV, first sight of a prompt
  LMCache L1    the same prompt again: LMCache's own DRAM answers
  MemKV L2      after the LMCache server and vLLM restart (L1 empty): every
                chunk is loaded from the MemKV nodes
  <peer> L2     the same with one of LMCache's own L2 adapters instead of
                MemKV (fs: a local directory; redis: Debian's redis-server
                through LMCache's RESP adapter, when installed)

Each figure is the median over --prompts distinct prompts per length.
Every hit is checked: the same greedy tokens and logprobs (1e-4) as the
recompute, and LMCache's log must show the prompt's chunks loaded from
where the series says (L1, or L2 with 0 L1). Results go to JSON and a PNG.

The default model (`bench`, ~100M parameters, float32) is sized so a
4k-token prefill takes seconds on 2 cores; `--model tiny --lengths 512,1024
--prompts 1 --peers none` is the short version CI runs.

    python3 scripts/bench_ttft.py [--lengths 512,1024,2048,4096,8192] [--prompts 3]
        [--peers fs,redis] [--json docs/bench/ttft.json] [--chart docs/bench/ttft.png]
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
import time

from nixl_memkv.engine.completions import Completion, complete
from nixl_memkv.engine.lmcache_log import activity
from nixl_memkv.engine.model import PRESETS, prompt_tokens, write_model
from nixl_memkv.engine.stack import ManagedProcess, ServingStack
from nixl_memkv.ports import free_port

CHUNK = 256
LOGPROB_TOL = 1e-4
TARGET = 0.3  # MemKV L2 hit TTFT / recompute at the longest length


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(PRESETS), default="bench")
    p.add_argument("--lengths", default="512,1024,2048,4096,8192", help="prompt lengths in tokens")
    p.add_argument("--prompts", type=int, default=3, help="distinct prompts per length (the median is reported)")
    p.add_argument("--peers", default="auto", help="LMCache L2 adapters to compare: fs,redis | none | auto "
                   "(fs, plus redis when redis-server is installed)")
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--cpus", default=None, help="cores for vLLM (VLLM_CPU_OMP_THREADS_BIND), default all")
    p.add_argument("--json", dest="json_path", default=None)
    p.add_argument("--chart", default=None, help="PNG path (matplotlib)")
    p.add_argument("--workdir", default=None, help="keep logs and data here (default: a temp dir, removed)")
    a = p.parse_args()
    a.lengths = [int(x) for x in a.lengths.split(",") if x]
    if a.peers == "auto":
        a.peers = ["fs"] + (["redis"] if shutil.which("redis-server") else [])
    elif a.peers == "none":
        a.peers = []
    else:
        a.peers = [x for x in a.peers.split(",") if x]
        unknown = set(a.peers) - {"fs", "redis"}
        if unknown:
            p.error(f"--peers: unknown {sorted(unknown)}; choose from fs, redis, none, auto")
        if "redis" in a.peers and not shutil.which("redis-server"):
            p.error("--peers redis: redis-server is not installed (apt-get install redis-server)")
    if a.cpus is None:
        a.cpus = f"0-{os.cpu_count() - 1}" if (os.cpu_count() or 1) > 1 else "0"
    return a


class RedisServer(ManagedProcess):
    name = "redis-server"

    def __init__(self, workdir: str):
        self.port = free_port(span=1)
        super().__init__(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--protected-mode", "no"], dict(os.environ),
                         os.path.join(workdir, "redis.log"), workdir)

    def ready(self) -> bool:
        return "Ready to accept connections" in self.log_text()

    def keys(self) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.port), "dbsize"], capture_output=True, text=True)
        return int(out.stdout.strip() or 0)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: str):
        self.args, self.workdir = args, workdir
        self.spec = PRESETS[args.model]
        self.model_dir = write_model(os.path.join(workdir, "model"), self.spec)
        total_tokens = sum(args.lengths) * args.prompts
        node_gib = max(1, int(total_tokens * self.spec.kv_bytes_per_token() * 1.5 / 2 / 2**30) + 1)
        self.stack = ServingStack(os.path.join(workdir, "stack"), self.model_dir, self.spec.dtype, args.model,
                                  nodes=2, node_dram=f"{node_gib}GiB", node_disk=f"{node_gib * 2}GiB")
        self.l1_gb = max(1, int(total_tokens * self.spec.kv_bytes_per_token() * 1.2 / 2**30) + 1)
        self.max_len = max(args.lengths) + args.max_tokens + 64
        self.prompts = {n: [prompt_tokens(self.spec, n, seed=1000 * n + i) for i in range(args.prompts)]
                        for n in args.lengths}
        self.reference: dict[tuple[int, int], Completion] = {}
        self.ttft: dict[str, dict[int, list[float]]] = {}
        self.l2_fetch_s: dict[str, dict[int, list[float]]] = {}  # LMCache's prefetch time, per L2
        self.extra: list[ManagedProcess] = []

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def replica(self, l2):
        kv_gb = max(1, int(self.max_len * self.spec.kv_bytes_per_token() * 2 / 2**30) + 1)
        return self.stack.add_replica(l2=l2, cpus=self.args.cpus, l1_size_gb=self.l1_gb, max_model_len=self.max_len,
                                      kv_cache_gb=kv_gb)

    def ask(self, replica, prompt) -> Completion:
        return complete(replica.vllm.base_url, self.args.model, prompt, max_tokens=self.args.max_tokens, timeout=900)

    def record(self, series: str, n: int, c: Completion) -> None:
        self.ttft.setdefault(series, {}).setdefault(n, []).append(c.ttft_s)

    def check(self, series: str, n: int, i: int, c: Completion) -> None:
        ref = self.reference[(n, i)]
        if not c.same_output(ref, LOGPROB_TOL):
            raise SystemExit(f"{series}: prompt {i} of {n} tokens gave a different output: {c.difference(ref)}")

    def wait_stored(self, name: str, stored_keys, expected: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while (have := stored_keys()) < expected:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: L2 holds {have} chunks after {timeout:.0f} s, expected {expected}")
            time.sleep(0.1)

    def warm_up(self, replica) -> None:
        self.ask(replica, prompt_tokens(self.spec, 64, seed=7))  # first-request setup, not measured

    def run_recompute(self) -> None:
        r = self.replica(None)
        self.log("recompute: starting vLLM with no KV connector")
        self.stack.start_replicas([r])
        self.warm_up(r)
        for n, prompts in self.prompts.items():
            for i, p in enumerate(prompts):
                c = self.ask(r, p)
                self.reference[(n, i)] = c
                self.record("recompute", n, c)
            self.log(f"recompute {n:>6} tokens: {statistics.median(self.ttft['recompute'][n]):.3f} s")
        self.stack.stop_replicas([r])

    def run_cache(self, name: str, l2, stored_keys) -> None:
        r = self.replica(l2)
        self.log(f"{name}: starting LMCache server and vLLM")
        self.stack.start_replicas([r])
        self.warm_up(r)
        expected = stored_keys()
        for n, prompts in self.prompts.items():
            for i, p in enumerate(prompts):
                miss = self.ask(r, p)
                self.check(f"{name} miss", n, i, miss)
                self.record(f"{name} miss+store", n, miss)
                # Wait for the L2 store to finish, so it competes with
                # nothing measured after it (on a small CPU it would).
                expected += n // CHUNK
                self.wait_stored(name, stored_keys, expected)
                if name == "memkv":  # LMCache's L1 is the same whatever the L2: measured once
                    mark = len(r.lmcache.log_text())
                    hit = self.ask(r, p)
                    self.check("LMCache L1 hit", n, i, hit)
                    seen = activity(r.lmcache.log_text()[mark:])
                    if seen.retrieved_tokens != [n // CHUNK * CHUNK]:
                        raise SystemExit(f"L1 hit for {n} tokens retrieved {seen.retrieved_tokens}")
                    self.record("LMCache L1 hit", n, hit)
        self.log(f"{name}: {expected} chunks in L2; restarting LMCache server and vLLM")
        self.stack.stop_replicas([r])
        self.stack.start_replicas([r])
        self.warm_up(r)
        series = f"{name} L2 hit"
        for n, prompts in self.prompts.items():
            for i, p in enumerate(prompts):
                mark = len(r.lmcache.log_text())
                hit = self.ask(r, p)
                self.check(series, n, i, hit)
                seen = activity(r.lmcache.log_text()[mark:])
                whole = n // CHUNK
                if [(q.l1, q.l2) for q in seen.prefetches] != [(0, whole)]:
                    raise SystemExit(f"{series}: {n} tokens were not all L2 hits: {seen.prefetches}")
                self.record(series, n, hit)
                self.l2_fetch_s.setdefault(name, {}).setdefault(n, []).append(seen.prefetches[0].ms / 1e3)
            self.log(f"{series} {n:>6} tokens: {statistics.median(self.ttft[series][n]):.3f} s")
        self.stack.stop_replicas([r])

    def run(self) -> dict:
        self.run_recompute()
        self.stack.start_nodes()
        self.run_cache("memkv", "memkv", lambda: sum(node.status()["keys"] for node in self.stack.nodes))
        for peer in self.args.peers:
            if peer == "fs":
                base = os.path.join(self.workdir, "fs-l2")
                os.makedirs(base, exist_ok=True)
                self.run_cache("fs", {"type": "fs", "base_path": base},
                               lambda: sum(len(files) for _, _, files in os.walk(base)))
            elif peer == "redis":
                redis = RedisServer(self.workdir)
                self.extra.append(redis)
                redis.start(timeout=30)
                self.run_cache("redis", {"type": "resp", "host": "127.0.0.1", "port": redis.port}, redis.keys)
        return self.results()

    def results(self) -> dict:
        lengths = self.args.lengths
        med = {s: {n: statistics.median(v) for n, v in per.items()} for s, per in self.ttft.items()}
        longest = max(lengths)
        ratio = med["memkv L2 hit"][longest] / med["recompute"][longest]
        # Seconds per token: slopes over the measured lengths (least squares).
        def slope(series: str) -> float:
            xs, ys = lengths, [med[series][n] for n in lengths]
            if len(xs) < 2:
                return ys[0] / xs[0]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        load_s_per_token = slope("memkv L2 hit")
        kv_bytes = self.spec.kv_bytes_per_token()
        fetch = {c: {n: statistics.median(v) for n, v in per.items()} for c, per in self.l2_fetch_s.items()}
        return {
            "model": {"preset": self.args.model, "params": self.spec.__dict__, "kv_bytes_per_token": kv_bytes},
            "machine": {"cpus": os.cpu_count(), "vllm_cpus": self.args.cpus},
            "lengths": lengths, "prompts_per_length": self.args.prompts, "max_tokens": self.args.max_tokens,
            "ttft_median_s": med, "ttft_all_s": self.ttft,
            # Of an L2 hit's TTFT, the part LMCache spent getting the chunks
            # from its L2 into L1 (its "Prefetch request completed" line);
            # the rest is LMCache moving them into vLLM's cache, and vLLM.
            "l2_fetch_median_s": fetch,
            "l2_fetch_gb_s_at_longest": {c: longest * kv_bytes / v[longest] / 1e9 for c, v in fetch.items()
                                         if v.get(longest)},
            "memkv_l2_over_recompute_at_longest": ratio, "target": TARGET, "target_met": ratio <= TARGET,
            "recompute_s_per_token": slope("recompute"),
            "memkv_load_s_per_token": load_s_per_token,
            "memkv_effective_load_gb_s": kv_bytes / load_s_per_token / 1e9 if load_s_per_token > 0 else None,
            # A model whose prefill costs more than this per token gains from a MemKV hit.
            "break_even_prefill_s_per_token": load_s_per_token,
        }

    def stop(self) -> None:
        self.stack.stop()
        for p in self.extra:
            p.stop()


def print_report(res: dict) -> None:
    series = list(res["ttft_median_s"])
    lengths = res["lengths"]
    print("\nTTFT, median seconds (" + f"{res['prompts_per_length']} prompts per length; "
          f"model {res['model']['preset']}, {res['model']['kv_bytes_per_token']} KV bytes per token)")
    print(f"{'series':<20}" + "".join(f"{n:>10}" for n in lengths))
    for s in series:
        row = res["ttft_median_s"][s]
        print(f"{s:<20}" + "".join(f"{row[n]:>10.3f}" for n in lengths))
    rec = res["ttft_median_s"]["recompute"]
    for s in series:
        if s.endswith("hit"):
            print(f"{s + ' / recompute':<32}" + "".join(f"{res['ttft_median_s'][s][n] / rec[n]:>8.2f}x"
                                                       for n in lengths))
    print("\nL2 fetch (LMCache's prefetch into L1), median seconds")
    for c, row in res["l2_fetch_median_s"].items():
        print(f"{c:<20}" + "".join(f"{row[n]:>10.3f}" for n in lengths)
              + f"   {res['l2_fetch_gb_s_at_longest'].get(c, 0):.2f} GB/s at {max(lengths)}")
    print(f"\nrecompute {res['recompute_s_per_token'] * 1e3:.3f} ms/token; MemKV load "
          f"{res['memkv_load_s_per_token'] * 1e3:.4f} ms/token"
          + (f" ({res['memkv_effective_load_gb_s']:.2f} GB/s of KV)" if res["memkv_effective_load_gb_s"] else ""))
    print(f"break-even: a MemKV hit wins when prefill costs more than "
          f"{res['break_even_prefill_s_per_token'] * 1e3:.4f} ms per token")
    verdict = "met" if res["target_met"] else "NOT met"
    print(f"MemKV L2 hit at {max(lengths)} tokens: {res['memkv_l2_over_recompute_at_longest']:.3f}x recompute "
          f"(target <= {res['target']}x: {verdict})")


def write_chart(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for s, row in res["ttft_median_s"].items():
        if "miss" in s:
            continue
        ax.plot(res["lengths"], [row[n] for n in res["lengths"]], marker="o", label=s)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(res["lengths"], [str(n) for n in res["lengths"]])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("time to first token (s, median)")
    ax.set_title(f"vLLM (CPU) TTFT: recompute vs cache hits ({res['model']['preset']} model, "
                 f"{res['machine']['cpus']} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    args = parse_args()
    for k, v in {"LMCACHE_TRACK_USAGE": "false", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(k, v)
    workdir = args.workdir or tempfile.mkdtemp(prefix="memkv-ttft-")
    os.makedirs(workdir, exist_ok=True)
    bench = Bench(args, workdir)
    try:
        res = bench.run()
    finally:
        bench.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(res)
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as f:
            json.dump(res, f, indent=1)
        print(f"results: {args.json_path}")
    if args.chart:
        os.makedirs(os.path.dirname(os.path.abspath(args.chart)), exist_ok=True)
        write_chart(res, args.chart)
        print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
