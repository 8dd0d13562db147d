#!/usr/bin/env python3
"""Partition timings of a real multi-host MemKV cluster, run by hand.

Three nodes and two clients, each in a network namespace of its own on one
bridge (tests/netns_harness.py); node B's link is cut at the switch, healed,
delayed by 2 s with `tc netem`, then made to lose 40% of its packets, and
healed again (tests/netns_scenario.py, the scenario tests/test_netns_cluster.py
runs in CI). Prints every measured time beside the bound the configured
timeouts give, as a table; exits non-zero when a step fails its assertion.

    sudo python3 scripts/netns_cluster.py [--rounds N]

Needs root and iproute2; everything it creates lives in namespaces named
mkvt<pid>-*, removed at the end (and, if a run was killed, by the next one).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import netns_scenario  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1, help="run the scenario this many times (default 1)")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C: nodes, clients and namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"client timeouts: connect_timeout_ms={netns_scenario.CONNECT_MS} op_timeout_ms={netns_scenario.OP_MS}; "
          f"bounds: stale {netns_scenario.STALE_BOUND_S:.2f} s, new connection {netns_scenario.FRESH_BOUND_S:.2f} s, "
          f"lossy {netns_scenario.LOSSY_BOUND_S:.2f} s, normal {netns_scenario.NORMAL_S:.2f} s")
    header = f"{'phase':<10} {'measurement':<44} {'cli':<4} {'seconds':>8} {'bound':>9}"
    rows: dict[tuple[str, str, str], list[float]] = {}
    bounds: dict[tuple[str, str, str], float | None] = {}
    for i in range(args.rounds):
        print(f"\n-- round {i + 1}/{args.rounds}\n{header}", flush=True)
        with tempfile.TemporaryDirectory(prefix="memkv-netns-") as d:
            try:
                timings = netns_scenario.run(d, log=lambda row: print(row, flush=True))
            except AssertionError as exc:
                print(f"FAILED: {exc}", file=sys.stderr)
                return 1
        for t in timings:
            # The parenthesised detail (counts, hits, import time) varies by round.
            what = t.what.split(" (")[0]
            rows.setdefault((t.phase, what, t.client), []).append(t.seconds)
            bounds[(t.phase, what, t.client)] = t.bound
    if args.rounds > 1:
        print(f"\n-- worst of {args.rounds} rounds\n{header}")
        for (phase, what, client), secs in rows.items():
            b = bounds[(phase, what, client)]
            print(f"{phase:<10} {what:<44} {client:<4} {max(secs):>8.3f} {'<= %.2f' % b if b is not None else '':>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
