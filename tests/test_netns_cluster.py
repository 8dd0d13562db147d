"""A real multi-host cluster in network namespaces: three nodes and two
clients, each with its own address on a bridge; node B is cut off (link
down, then `tc netem` delay and loss) and healed. The scenario and its
bounds live in tests/netns_scenario.py (scripts/netns_cluster.py runs the
same one and prints the timings table). Needs root, as CI has; without it
the test fails saying so rather than skipping."""

from __future__ import annotations

import os
import subprocess

import pytest

import netns_harness
import netns_scenario

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_partitioned_node_fails_fast_and_rejoins(tmp_path):
    try:
        timings = netns_scenario.run(str(tmp_path))
    except netns_harness.NetnsUnavailable as exc:
        pytest.fail(f"{exc}")
    phases = {t.phase for t in timings}
    assert {"healthy", "cut", "healed", "delay 2s", "loss 40%"} <= phases
    # Nothing of this run is left behind.
    assert [ns for ns in netns_harness.list_namespaces() if ns.startswith(f"{netns_harness.PREFIX}{os.getpid()}-")] == []


def test_stale_namespaces_of_a_crashed_run_are_removed():
    """A namespace named for a pid that no longer exists (a run killed with
    SIGKILL) is deleted by the next run; a live run's are left alone."""
    stale = f"{netns_harness.PREFIX}{_dead_pid()}-sw"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with netns_harness.Network() as net:
            live = net.switch
            assert stale not in netns_harness.list_namespaces()
            assert live in netns_harness.list_namespaces()
            # A second network of this same (live) process keeps the first.
            netns_harness.remove_stale()
            assert live in netns_harness.list_namespaces()
        assert live not in netns_harness.list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
