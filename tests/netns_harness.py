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
import signal
import subprocess
import sys
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
            # Nodes, clients and relays that run's SIGKILL left running in it.
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
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
        self._impaired: dict[str, subprocess.Popen | None] = {}  # host -> its relay (None: tc netem)
        self._has_netem: bool | None = None
        try:
            self._add_ns(self.switch)
            self._sw("ip", "link", "add", "br0", "type", "bridge")
            self._sw("ip", "link", "set", "br0", "up")
        except (subprocess.SubprocessError, RuntimeError) as exc:
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

    # -- faults, applied at the switch end of a host's link -------------------
    def link(self, host: str, up: bool) -> None:
        self._sw("ip", "link", "set", self._ports[host], "up" if up else "down")

    def netem_available(self) -> bool:
        """Whether the kernel has sch_netem (probed once, on the switch's own lo)."""
        if self._has_netem is None:
            r = _run("ip", "netns", "exec", self.switch, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                     "delay", "1ms", check=False)
            self._has_netem = r.returncode == 0
            if self._has_netem:
                self._sw("tc", "qdisc", "del", "dev", "lo", "root")
        return self._has_netem

    def impair(self, host: str, delay_ms: int = 0, loss_pct: int = 0) -> str:
        """Delays and/or drops the host's frames both ways; returns how:
        `tc netem` on both ends of its link, or, on a kernel without
        sch_netem, tests/netem_relay.py spliced into the link at the switch."""
        self.clear_impairment(host)
        if self.netem_available():
            spec = ["delay", f"{delay_ms}ms", "loss", f"{loss_pct}%"]
            self._sw("tc", "qdisc", "add", "dev", self._ports[host], "root", "netem", *spec)
            _run("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "add", "dev", "eth0", "root", "netem", *spec)
            self._impaired[host] = None
            return "tc netem"
        # The host's port leaves the bridge; a new veth pair joins the bridge
        # in its place, and the relay carries frames between the two.
        port = self._ports[host]
        self._sw("ip", "link", "add", f"{port}r", "type", "veth", "peer", "name", f"{port}b")
        self._sw("ip", "link", "set", port, "nomaster")
        self._sw("ip", "link", "set", f"{port}b", "master", "br0")
        self._sw("ip", "link", "set", f"{port}b", "up")
        self._sw("ip", "link", "set", f"{port}r", "up")
        relay = subprocess.Popen(["ip", "netns", "exec", self.switch, sys.executable,
                                  os.path.join(os.path.dirname(os.path.abspath(__file__)), "netem_relay.py"),
                                  port, f"{port}r", "--delay-ms", str(delay_ms), "--loss-pct", str(loss_pct)],
                                 stdout=subprocess.PIPE, text=True)
        self._impaired[host] = relay
        if relay.stdout.readline().strip() != "ready":
            raise RuntimeError(f"netem_relay.py between {port} and {port}r did not start ({relay.poll()})")
        return "netem_relay.py (kernel without sch_netem)"

    def clear_impairment(self, host: str) -> None:
        if host not in self._impaired:
            return
        relay = self._impaired.pop(host)
        if relay is None:
            self._sw("tc", "qdisc", "del", "dev", self._ports[host], "root")
            _run("ip", "netns", "exec", self.ns(host), "tc", "qdisc", "del", "dev", "eth0", "root")
            return
        relay.terminate()
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()
        port = self._ports[host]
        self._sw("ip", "link", "del", f"{port}r")  # its peer goes with it
        self._sw("ip", "link", "set", port, "master", "br0")

    def close(self) -> None:
        """Deletes every namespace this network made (their veths go with them)."""
        for relay in self._impaired.values():
            if relay is not None and relay.poll() is None:
                relay.kill()
                relay.wait()
        self._impaired.clear()
        for ns in reversed(self._namespaces):
            _run("ip", "netns", "delete", ns, check=False)
        self._namespaces.clear()

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
