"""A real multi-host cluster in network namespaces: three nodes and two
clients, each with its own address on a bridge; node B is cut off (link
down, then `tc netem` delay and loss) and healed. The scenario and its
bounds live in tests/netns_scenario.py (scripts/netns_cluster.py runs the
same one and prints the timings table). Needs root, as CI has; without it
the test fails saying so rather than skipping."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import netns_harness
import netns_scenario

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_partitioned_node_fails_fast_and_rejoins(tmp_path):
    try:
        timings = netns_scenario.run(str(tmp_path))
    except netns_harness.NetnsUnavailable as exc:
        pytest.fail(f"{exc}")
    phases = {t.phase for t in timings}
    assert {"healthy", "cut", "healed", "delay 2s", "loss 40%"} <= phases
    # Nothing of this run is left behind.
    mine = f"{netns_harness.PREFIX}{os.getpid()}-"
    assert [ns for ns in netns_harness.list_namespaces() if ns.startswith(mine)] == []


def test_stale_namespaces_of_a_crashed_run_are_removed():
    """A namespace named for a pid that no longer exists (a run killed with
    SIGKILL) is deleted by the next run, with what still runs inside it; a
    live run's namespaces are left alone."""
    stale = f"{netns_harness.PREFIX}{_dead_pid()}-sw"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    leftover = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
    try:
        with netns_harness.Network() as net:
            assert stale not in netns_harness.list_namespaces()
            assert leftover.wait(10) == -9
            assert net.switch in netns_harness.list_namespaces()
            netns_harness.remove_stale()  # this process is alive: its network stays
            assert net.switch in netns_harness.list_namespaces()
        assert net.switch not in netns_harness.list_namespaces()
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)


def test_without_root_fails_saying_so():
    """CI runs as root; elsewhere the test must fail with the reason, not skip."""
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import netns_harness; netns_harness.Network()",
                        HERE], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "NetnsUnavailable: the netns cluster test needs root" in r.stderr, r.stderr[-2000:]


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
