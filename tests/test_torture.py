"""The short version of scripts/torture.py (the long run is 200 loops, by
hand): SIGKILL loops under both fsync modes and torn-write rounds, through
the real node and client. Fails on any wrong, stale, lost or phantom value."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "torture.py")


def test_short_crash_torture(tmp_path):
    out = tmp_path / "torture.json"
    r = subprocess.run([sys.executable, "-P", SCRIPT, "--loops", "6", "--torn", "2", "--writers", "2",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["loops"] == 6 and doc["torn_rounds"] == 2
    assert doc["acks"] > 50 and doc["batch_acks"] > 0 and doc["part_acks"] > 0 and doc["deletes"] > 0
    assert doc["wrong"] == doc["stale"] == doc["lost"] == doc["phantom"] == doc["resurrected"] == doc["torn_wrong"] == 0
    assert r.stdout.strip().splitlines()[-1].startswith("torture: 6 loops")
