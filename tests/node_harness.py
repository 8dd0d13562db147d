"""Real `memkv server` processes for tests: each with its own data dir and
ports, on 127.0.0.1 (or, inside the soft-RoCE guest, the guest's own
addresses). Kept free of heavy imports: the RDMA suite runs it in an
emulated guest where every import costs seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from nixl_memkv.license import write_throwaway_license
from nixl_memkv.ports import free_port


def make_licence(directory: str, days: int = 30) -> tuple[str, str]:
    """A licence file and the issuer's public key that verifies it."""
    return write_throwaway_license(directory, licensee="tests", plan="enterprise", days=days)


def make_tenants(path: str, *names: str) -> dict[str, dict]:
    """A tenants file holding fresh tenants `names`; their credentials by name."""
    from nixl_memkv.tenants import load_or_empty, new_tenant, save_tenants

    tenants = load_or_empty(path)
    made = {name: new_tenant(name) for name in names}
    tenants.update(made)
    save_tenants(path, tenants)
    return {name: t.credentials() for name, t in made.items()}


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKV_")}
    env.update(extra)
    return env


class NodeProc:
    """One `memkv server` child process."""

    def __init__(self, data_dir: str, auth_key: str, *args: str, port: int | None = None, env: dict | None = None,
                 host: str = "127.0.0.1", netns: str | None = None):
        self.data_dir = data_dir
        self.auth_key = auth_key
        self.args = list(args)
        self.host = host
        # In a network namespace of its own (tests/netns_harness.py) the node
        # owns its address, so any fixed port is free there.
        self.netns = netns
        self.port = port or (7400 if netns else free_port(host))
        self.admin_port = self.port + 1
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.path.dirname(data_dir.rstrip("/")), f"node-{self.port}.log")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True) -> "NodeProc":
        log = open(self.log_path, "ab")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        cmd = [*prefix, sys.executable, "-m", "nixl_memkv", "server", "--data-dir", self.data_dir, "--host", self.host,
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
                if self._admin_get("/v1/health", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node not ready after {timeout}s: {self.log()}")

    def _admin_get(self, path: str, timeout: float) -> tuple[int, bytes]:
        def get() -> tuple[int, bytes]:
            # The key: a node reached on any address but loopback asks for it (--admin-auth).
            req = urllib.request.Request(f"http://{self.host}:{self.admin_port}{path}",
                                         headers={"Authorization": f"Bearer {self.auth_key}"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        if self.netns:  # the admin port is reachable only inside the node's namespace
            from netns_harness import in_netns
            return in_netns(self.netns, get)
        return get()

    def status(self) -> dict:
        return json.loads(self._admin_get("/v1/status", timeout=5)[1])

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
        """SIGSTOP: the node hangs with its sockets open. Returns once every
        thread has stopped (a signal takes effect asynchronously: a request
        sent right after kill() may otherwise still be answered)."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        task_dir = f"/proc/{self.proc.pid}/task"
        while time.monotonic() < deadline:
            states = []
            for tid in os.listdir(task_dir):
                try:
                    with open(f"{task_dir}/{tid}/stat") as f:
                        states.append(f.read().rsplit(")", 1)[1].split()[0])
                except OSError:
                    pass
            if states and all(st in ("T", "t") for st in states):
                return
            time.sleep(0.001)
        raise AssertionError(f"node {self.address} did not stop within 10 s of SIGSTOP")

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> "NodeProc":
        self.stop()
        return self.start()
