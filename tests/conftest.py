"""Shared fixtures: real `memkv server` processes on 127.0.0.1, each with its
own data dir and ports; every process a test starts is stopped after it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import torchvision_cpu_shim  # noqa: F401  (sglang's imports reach torchvision; see the module)

from nixl_memkv import Client
from nixl_memkv.auth import generate_auth_key
from nixl_memkv.license import write_throwaway_license

os.environ["LMCACHE_TRACK_USAGE"] = "false"


def make_licence(directory: str, days: int = 30) -> tuple[str, str]:
    """A licence file and the issuer's public key that verifies it."""
    return write_throwaway_license(directory, licensee="tests", plan="enterprise", days=days)


@pytest.fixture(scope="session")
def licence(tmp_path_factory):
    return make_licence(str(tmp_path_factory.mktemp("licence")))


def free_port() -> int:
    """A port whose successor is free too (data port + admin port)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65000:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKV_")}
    env.update(extra)
    return env


class NodeProc:
    """One `memkv server` child process."""

    def __init__(self, data_dir: str, auth_key: str, *args: str, port: int | None = None, env: dict | None = None):
        self.data_dir = data_dir
        self.auth_key = auth_key
        self.args = list(args)
        self.port = port or free_port()
        self.admin_port = self.port + 1
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.path.dirname(data_dir.rstrip("/")), f"node-{self.port}.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "NodeProc":
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "nixl_memkv", "server", "--data-dir", self.data_dir, "--host", "127.0.0.1",
               "--port", str(self.port), "--admin-port", str(self.admin_port), *self.args]
        # cwd outside the checkout: `python -m` must import the installed package.
        self.proc = subprocess.Popen(cmd, env=clean_env(MEMKV_AUTH_KEY=self.auth_key, **self.env), stdout=log,
                                     stderr=subprocess.STDOUT, cwd=os.path.dirname(self.log_path))
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/v1/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node not ready after {timeout}s: {self.log()}")

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/v1/status", timeout=5) as r:
            return json.load(r)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused node must see the SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the node hangs with its sockets open."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> "NodeProc":
        self.stop()
        return self.start()


@pytest.fixture(scope="session")
def auth_key() -> str:
    return generate_auth_key()


@pytest.fixture
def make_node(tmp_path, auth_key):
    """Factory: make_node(*server_args, name=...) starts a node; all are stopped at the end."""
    nodes: list[NodeProc] = []

    def make(*args: str, name: str | None = None, key: str | None = None, env: dict | None = None,
             start: bool = True) -> NodeProc:
        d = tmp_path / (name or f"node{len(nodes)}") / "data"
        d.parent.mkdir(parents=True, exist_ok=True)
        n = NodeProc(str(d), key or auth_key, *args, env=env)
        nodes.append(n)
        return n.start() if start else n

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture
def node(make_node) -> NodeProc:
    return make_node("--dram-capacity", "512MiB", "--disk-capacity", "1GiB")


@pytest.fixture
def cluster3(make_node) -> list[NodeProc]:
    return [make_node("--dram-capacity", "256MiB", "--disk-capacity", "512MiB", name=f"n{i}") for i in range(3)]


@pytest.fixture
def client_for(auth_key):
    """Factory: client_for(nodes, **config) -> Client; all closed at the end."""
    clients: list[Client] = []

    def make(nodes, **kw) -> Client:
        servers = [n.address if isinstance(n, NodeProc) else n for n in nodes]
        kw.setdefault("transport", "tcp")
        kw.setdefault("connect_timeout_ms", 2000)
        kw.setdefault("op_timeout_ms", 10000)
        c = Client(servers=servers, auth_key=kw.pop("auth_key", auth_key), **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
