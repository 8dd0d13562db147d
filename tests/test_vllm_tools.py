"""The user-facing tools around the real engine: `memkv demo --engine vllm`
and scripts/bench_ttft.py (its short version: the tiny model, one length),
run as a user runs them, start to finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vLLM's CPU build is installed by scripts/test.sh")

from conftest import clean_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(900)


def run(args: list[str], tmp_path, timeout: float = 800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(tmp_path), env=clean_env(COLUMNS="200"))


def test_demo_vllm_reports_a_verified_cross_replica_hit(tmp_path):
    r = run(["-m", "nixl_memkv", "demo", "--engine", "vllm", "--prompt-tokens", "600",
             "--workdir", str(tmp_path / "demo")], tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out = r.stdout
    assert "identical tokens and logprobs" in out
    assert "512 by replica B, 2 of 2 chunks from MemKV" in out
    assert "TTFT MemKV hit (B, other replica)" in out
    # Everything it started is gone: no process still runs from its directory.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "demo") not in ps


def test_demo_vllm_refuses_a_prompt_shorter_than_a_chunk(tmp_path):
    r = run(["-m", "nixl_memkv", "demo", "--engine", "vllm", "--prompt-tokens", "100"], tmp_path, timeout=120)
    assert r.returncode != 0
    assert "--prompt-tokens 100 is shorter than one LMCache chunk (256 tokens)" in r.stderr + r.stdout


def test_bench_ttft_short_run(tmp_path):
    out_json = tmp_path / "ttft.json"
    chart = tmp_path / "ttft.png"
    r = run([os.path.join(ROOT, "scripts", "bench_ttft.py"), "--model", "tiny", "--lengths", "512", "--prompts",
             "1", "--peers", "none", "--json", str(out_json), "--chart", str(chart)], tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    res = json.loads(out_json.read_text())
    assert set(res["ttft_median_s"]) == {"recompute", "memkv miss+store", "LMCache L1 hit", "memkv L2 hit"}
    assert all(v["512"] > 0 for v in res["ttft_median_s"].values())
    assert res["model"]["kv_bytes_per_token"] == 2 * 4 * 4 * 64 * 4
    assert chart.stat().st_size > 10_000 and chart.read_bytes()[:4] == b"\x89PNG"
    assert "MemKV L2 hit at 512 tokens:" in r.stdout


def test_bench_ttft_names_a_bad_peer(tmp_path):
    r = run([os.path.join(ROOT, "scripts", "bench_ttft.py"), "--peers", "lm"], tmp_path, timeout=120)
    assert r.returncode == 2
    assert "--peers: unknown ['lm']; choose from fs, redis, none, auto" in r.stderr
