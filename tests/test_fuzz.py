"""The short version of scripts/fuzz.sh (by hand: 60 s or more per target):
every fuzz target builds (clang-14, ASan + UBSan, installed by the script
when missing) and runs a few seconds from its seed corpus with no crash,
hang, leak or sanitizer report; and a target that does fail makes the
script fail, for each kind of failure it promises to catch."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "fuzz.sh")
TARGETS = ["handshake", "frame", "seal", "node_ops", "parts", "http", "sigv4", "shard_record", "snapshot",
           "chunk_header", "admin"]
pytestmark = pytest.mark.skipif(os.environ.get("MEMKV_TEST_FUZZ", "1") == "0",
                                reason="fuzz targets skipped (MEMKV_TEST_FUZZ=0)")
ROW = re.compile(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+|-)\s+(\d+|-)\s+(\d+)\s+(\d+)\s+(\d+)$")


def run_fuzz(*args: str, timeout: int = 1500) -> tuple[subprocess.CompletedProcess, dict[str, tuple]]:
    r = subprocess.run(["bash", SCRIPT, "--ci", "--python", sys.executable, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    rows = {m.group(1): m.groups()[1:] for m in map(ROW.match, r.stdout.splitlines()) if m}
    return r, rows


@pytest.mark.timeout(1800)  # the first build compiles the native core with ASan + UBSan
def test_every_target_runs_clean():
    r, rows = run_fuzz("--time", "3")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert sorted(rows) == sorted(TARGETS), r.stdout
    for name, (execs, _rate, cov, _ft, crashes, hangs, reports) in rows.items():
        assert int(execs) > 20, f"{name} ran only {execs} inputs"
        assert cov != "-" and int(cov) > 20, f"{name} reports no coverage: {r.stdout}"
        assert crashes == hangs == reports == "0", f"{name}: {r.stdout}"
    assert r.stdout.strip().splitlines()[-1].endswith(", 0 failed")


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("word, column", [("CRASH", 4), ("UB", 4), ("LEAK", 4), ("BIG", 4), ("HANG", 5)])
def test_failing_target_fails_the_run(tmp_path, word, column):
    seeds = tmp_path / "canary"
    seeds.mkdir()
    (seeds / "seed").write_bytes(word.encode() + b"-input")
    r, rows = run_fuzz("--time", "3", "--hang-timeout", "2", "--targets", "canary", "--corpus-from", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "canary" in rows, r.stdout
    counts = rows["canary"]
    assert int(counts[column]) >= 1 or int(counts[6]) >= 1, f"{word} not counted: {r.stdout}"
    assert r.stdout.strip().splitlines()[-1].endswith(", 1 failed")
    assert "FAILED" in r.stderr
