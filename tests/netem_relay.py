"""Delay and loss between two interfaces, for kernels built without
sch_netem (`tc qdisc ... netem` answers "Specified qdisc kind is unknown").

    python netem_relay.py IF_A IF_B --delay-ms 2000 --loss-pct 40

Run inside the switch namespace of tests/netns_harness.py: every frame that
arrives on one interface leaves by the other, `delay` later, unless it is
dropped (each frame independently, with probability `loss`), both ways, as
netem on both ends of a link would do. Frames keep their offload metadata
(PACKET_VNET_HDR: TSO super-frames and unfinished checksums pass as they
came), so the relay needs no ethtool changes. Prints "ready" once both
interfaces are bound; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import random
import select
import signal
import socket
import sys
import threading
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
FRAME_MAX = 256 << 10  # a GSO super-frame plus its headers


def open_port(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # not our own sends back
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def pump(src: socket.socket, dst: socket.socket, delay_s: float, loss: float, stop: threading.Event) -> None:
    """Frames from src to dst, each held delay_s (FIFO: the delay is constant)."""
    held: collections.deque = collections.deque()
    while not stop.is_set():
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.2
        readable, _, _ = select.select([src], [], [], min(timeout, 0.2))
        now = time.monotonic()
        if readable:
            while True:
                try:
                    frame = src.recv(FRAME_MAX)
                except BlockingIOError:
                    break
                if random.random() >= loss:
                    held.append((now + delay_s, frame))
        while held and held[0][0] <= now:
            try:
                dst.send(held.popleft()[1])
            except OSError:
                pass  # a full or downed interface drops the frame, as a wire would


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("if_a")
    ap.add_argument("if_b")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--loss-pct", type=float, default=0.0)
    args = ap.parse_args()
    if not 0 <= args.loss_pct <= 100 or args.delay_ms < 0:
        sys.exit("--loss-pct must be 0..100 and --delay-ms at least 0")
    a, b = open_port(args.if_a), open_port(args.if_b)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    delay, loss = args.delay_ms / 1000, args.loss_pct / 100
    threads = [threading.Thread(target=pump, args=(x, y, delay, loss, stop), daemon=True) for x, y in ((a, b), (b, a))]
    for t in threads:
        t.start()
    print("ready", flush=True)
    while not stop.is_set():
        stop.wait(0.5)


if __name__ == "__main__":
    main()
