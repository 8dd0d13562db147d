"""A throwaway multi-host network made of Linux network namespaces.

One switch namespace holds a bridge; every host (node or client) gets its
own namespace, joined to the bridge by a veth pair whose switch end lives in
the switch namespace, so a test can cut or degrade one host's link there
(`ip link set ... down`, `tc netem`) while the host itself notices nothing.
Nothing is created in, or changed in, the root namespace: the veth pairs are
made inside the switch namespace and their host ends moved straight into
the host namespaces, and deleting the namespaces deletes the veths.

Names carry the creating process's pid (`mkvt<pid>-...`), so a run that
crashed leaves namespaces a later run recognises as stale (their pid is
gone) and deletes. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

PREFIX = "mkvt"
SUBNET = "10.88.0"  # a private /24 used only inside the test namespaces
_CLONE_NEWNET = 0x40000000
_NAME = re.compile(rf"^{PREFIX}(\d+)-")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be created here (not root, no iproute2)."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r


def list_namespaces() -> list[str]:
    out = _run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Deletes test namespaces left by runs whose process is gone."""
    removed = []
    for ns in list_namespaces():
        m = _NAME.match(ns)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _run("ip", "netns", "delete", ns, check=False)
            removed.append(ns)
    return removed


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Runs fn on a thread that has entered namespace `ns` (setns applies to
    the calling thread only), so sockets it opens live in `ns`."""
    out: dict = {}

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (re-raised on the caller's thread)
            out["error"] = exc

    t = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


class Network:
    """Switch + hosts. `add_host(name)` returns the host's address;
    `exec_prefix(name)` the argv prefix that runs a command inside it."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("the netns cluster test needs root (it creates network namespaces, "
                                   "veth pairs and a bridge); run it as root, as CI does")
        if shutil.which("ip") is None or shutil.which("tc") is None:
            raise NetnsUnavailable("the netns cluster test needs iproute2 (`ip`, `tc`): apt-get install iproute2")
        remove_stale()
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, str] = {}   # host name -> address
        self._ports: dict[str, str] = {}  # host name -> switch-side veth
        self._namespaces: list[str] = []
        self._netem: set[str] = set()
        try:
            self._add_ns(self.switch)
            self._sw("ip", "link", "add", "br0", "type", "bridge")
            self._sw("ip", "link", "set", "br0", "up")
        except subprocess.SubprocessError as exc:
            self.close()
            raise NetnsUnavailable(f"cannot create test network namespaces: {exc}") from exc
        except RuntimeError as exc:
            self.close()
            raise NetnsUnavailable(f"cannot create test network namespaces: {exc}") from exc

    def _add_ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _sw(self, *cmd: str) -> None:
        _run("ip", "netns", "exec", self.switch, *cmd)

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def add_host(self, host: str) -> str:
        ns = self.ns(host)
        port = f"p{len(self._ports)}"
        addr = f"{SUBNET}.{len(self._ports) + 10}"
        self._add_ns(ns)
        # Made inside the switch namespace, host end moved straight to `ns`.
        self._sw("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._sw("ip", "link", "set", port, "master", "br0")
        self._sw("ip", "link", "set", port, "up")
        _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        self.hosts[host] = addr
        self._ports[host] = port
        return addr

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host)]

    # -- faults, applied at the switch end of a host's link (and, for netem,
    # -- also at the host end, so both directions suffer) --------------------
    def link(self, host: str, up: bool) -> None:
        self._sw("ip", "link", "set", self._ports[host], "up" if up else "down")

    def netem(self, host: str, *spec: str) -> None:
        """`tc netem` on both ends of the host's link, e.g. ("delay", "2000ms")."""
        verb = "change" if host in self._netem else "add"
        self._sw("tc", "qdisc", verb, "dev", self._ports[host], "root", "netem", *spec)
        _run("ip", "netns", "exec", self.ns(host), "tc", "qdisc", verb, "dev", "eth0", "root", "netem", *spec)
        self._netem.add(host)

    def clear_netem(self, host: str) -> None:
        if host in self._netem:
            self._sw("tc", "qdisc", "del", "dev", self._ports[host], "root")
            _run("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "del", "dev", "eth0", "root")
            self._netem.discard(host)

    def close(self) -> None:
        """Deletes every namespace this network made (their veths go with them)."""
        for ns in reversed(self._namespaces):
            _run("ip", "netns", "delete", ns, check=False)
        self._namespaces.clear()

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
