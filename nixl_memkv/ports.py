"""Free ports for processes this package starts (tests, demos, benchmarks)."""

from __future__ import annotations

import random
import socket


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1", span: int = 2) -> int:
    """A free port whose span-1 successors are free too (a node's data port
    + admin port), below the kernel's ephemeral range: a port from that range
    can be taken by some client's outgoing connection before the server
    binds it, and a health check polling a port that is not listening yet
    can connect to itself (same source and destination port) and read its
    own request."""
    low = max(2000, _ephemeral_low() - span)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(1024, low)
        sockets = [socket.socket() for _ in range(span)]
        try:
            for i, s in enumerate(sockets):
                s.bind((host, port + i))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return port
    raise RuntimeError("no free port range")
