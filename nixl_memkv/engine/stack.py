"""The processes of a real serving stack on one machine, each a child with
its own log: MemKV nodes, LMCache multi-process servers using MemKV as their
L2 tier (our MemKVL2Adapter), and vLLM servers connected to them through
vLLM's LMCacheMPConnector. A "replica" is one LMCache server plus the vLLM
that uses it, as on one GPU host; replicas share the MemKV cluster.

Every process runs in its own session so stopping it stops what it started
(vLLM's engine core and workers); every port is bound on 127.0.0.1 unless
told otherwise."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Callable

from ..auth import generate_auth_key
from ..license import write_throwaway_license
from ..ports import free_port

# No library telemetry and nothing fetched from a model hub, ever.
QUIET_ENV = {"LMCACHE_TRACK_USAGE": "false", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0", "LMCACHE_DISABLE_BANNER": "1"}


class StartError(RuntimeError):
    """A process exited or did not become ready; the message ends with the
    tail of its log."""


class ManagedProcess:
    """One child process in its own session, logging to log_path."""

    name = "process"

    def __init__(self, cmd: list[str], env: dict, log_path: str, cwd: str):
        self.cmd, self.env, self.log_path, self.cwd = cmd, env, log_path, cwd
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 300.0):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 300.0) -> None:
        self.wait_for(self.ready, timeout, "ready")

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode} before {what}; "
                                 f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise StartError(f"{self.name} not {what} after {timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to the process group, then SIGKILL what is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # children that outlived their parent
        self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@dataclasses.dataclass
class Secrets:
    """The cluster's auth key and a licence every client presents."""
    auth_key: str
    licence_path: str
    licence_pubkey: str

    @classmethod
    def throwaway(cls, directory: str) -> "Secrets":
        path, pubkey = write_throwaway_license(directory, licensee="memkv-engine-stack", plan="enterprise", days=7)
        return cls(generate_auth_key(), path, pubkey)

    def client_env(self) -> dict:
        return {"MEMKV_AUTH_KEY": self.auth_key, "MEMKV_LICENSE": self.licence_path,
                "MEMKV_LICENSE_PUBKEY": self.licence_pubkey}


def _base_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMKV_")}
    env.update(QUIET_ENV)
    env.update(extra)
    return env


class MemKVNodeProcess(ManagedProcess):
    """`memkv server` on its own data dir (kept across restarts)."""

    name = "MemKV node"

    def __init__(self, workdir: str, index: int, secrets: Secrets, dram: str = "1GiB", disk: str = "8GiB",
                 host: str = "127.0.0.1"):
        self.host, self.port = host, free_port(host)
        self.auth_key = secrets.auth_key
        self.data_dir = os.path.join(workdir, f"node{index}")
        os.makedirs(self.data_dir, exist_ok=True)
        cmd = [sys.executable, "-P", "-m", "nixl_memkv", "server", "--data-dir", self.data_dir, "--host", host,
               "--port", str(self.port), "--admin-port", str(self.port + 1), "--dram-capacity", dram,
               "--disk-capacity", disk]
        super().__init__(cmd, _base_env(MEMKV_AUTH_KEY=secrets.auth_key),
                         os.path.join(workdir, f"node{index}.log"), workdir)
        self.name = f"MemKV node {index} ({self.address})"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def ready(self) -> bool:
        return _http_ok(f"http://{self.host}:{self.port + 1}/v1/health")

    def status(self) -> dict:
        req = urllib.request.Request(f"http://{self.host}:{self.port + 1}/v1/status",
                                     headers={"Authorization": f"Bearer {self.auth_key}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)


def memkv_l2_adapter(memkv_servers: list[str], params: dict | None = None) -> dict:
    """The --l2-adapter value that makes MemKV an LMCache server's L2 tier."""
    return {"type": "plugin", "module_path": "memkv_lmcache.mp_adapter", "class_name": "MemKVL2Adapter",
            "adapter_params": {"servers": ",".join(memkv_servers), "transport": "tcp", "op_timeout_ms": 5000,
                               "connect_timeout_ms": 1000, **(params or {})}}


class LMCacheServerProcess(ManagedProcess):
    """`python -m lmcache.v1.multiprocess.server` with one L2 adapter (ours,
    or any of LMCache's own for comparison). MemKV secrets travel in the
    environment, not on the command line."""

    name = "LMCache server"

    def __init__(self, workdir: str, index: int, secrets: Secrets, l2_adapter: dict, l1_size_gb: float = 1.0,
                 chunk_size: int = 256, host: str = "127.0.0.1"):
        self.host, self.port = host, free_port(host, span=1)
        cmd = [sys.executable, "-P", "-m", "lmcache.v1.multiprocess.server", "--host", host, "--port", str(self.port),
               "--chunk-size", str(chunk_size), "--l1-size-gb", str(l1_size_gb), "--eviction-policy", "LRU",
               "--supported-transfer-mode", "auto", "--disable-metrics", "--l2-adapter", json.dumps(l2_adapter)]
        super().__init__(cmd, _base_env(**secrets.client_env()), os.path.join(workdir, f"lmcache{index}.log"), workdir)
        self.name = f"LMCache server {index} (:{self.port})"

    def ready(self) -> bool:
        return "cache server is running" in self.log_text()


class VLLMServerProcess(ManagedProcess):
    """vLLM's OpenAI server (through nixl_memkv.engine.vllm_entry) with
    LMCacheMPConnector to one LMCache server, or with no KV connector at
    all (lmcache=None: every prefill is recomputed)."""

    name = "vLLM"

    def __init__(self, workdir: str, index: int, model_dir: str, served_name: str,
                 lmcache: LMCacheServerProcess | None, dtype: str = "auto", cpus: str | None = None,
                 max_model_len: int = 4096,
                 kv_cache_gb: int = 1, extra_args: tuple[str, ...] = (), host: str = "127.0.0.1"):
        self.host, self.port, self.served_name = host, free_port(host, span=1), served_name
        cmd = [sys.executable, "-P", "-m", "nixl_memkv.engine.vllm_entry", "--model", model_dir,
               "--served-model-name", served_name, "--dtype", dtype, "--host", host, "--port", str(self.port),
               "--max-model-len", str(max_model_len), "--block-size", "32", "--max-num-seqs", "4",
               # vLLM's own prefix cache would answer every repeat itself: the
               # cache under test is the one behind the connector.
               "--no-enable-prefix-caching", "--enforce-eager", *extra_args]
        if lmcache is not None:
            cmd += ["--kv-transfer-config", json.dumps({
                "kv_connector": "LMCacheMPConnector", "kv_role": "kv_both",
                "kv_connector_extra_config": {"lmcache.mp.host": f"tcp://{lmcache.host}",
                                              "lmcache.mp.port": lmcache.port}})]
        env = _base_env(VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gb))
        if cpus is not None:  # pin the engine's OpenMP threads (replicas sharing a small machine)
            env.update(VLLM_CPU_OMP_THREADS_BIND=cpus, VLLM_CPU_NUM_OF_RESERVED_CPU="0")
        super().__init__(cmd, env, os.path.join(workdir, f"vllm{index}.log"), workdir)
        self.name = f"vLLM {index} (:{self.port})"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ready(self) -> bool:
        return _http_ok(f"{self.base_url}/health")


@dataclasses.dataclass
class Replica:
    """One "host": an LMCache server and the vLLM that uses it (or a vLLM
    alone, with no cache behind it)."""
    lmcache: LMCacheServerProcess | None
    vllm: VLLMServerProcess

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.lmcache, self.vllm) if p is not None]


class ServingStack:
    """MemKV nodes and replicas in one work directory; stop() stops all of
    them whatever state they are in. Replicas start in parallel (a vLLM takes
    about a minute to start on a small CPU)."""

    def __init__(self, workdir: str, model_dir: str, dtype: str, served_name: str, nodes: int = 3,
                 node_dram: str = "1GiB", node_disk: str = "8GiB", secrets: Secrets | None = None):
        self.workdir, self.model_dir, self.dtype, self.served_name = workdir, model_dir, dtype, served_name
        os.makedirs(workdir, exist_ok=True)
        self.secrets = secrets or Secrets.throwaway(workdir)
        self.nodes = [MemKVNodeProcess(workdir, i, self.secrets, dram=node_dram, disk=node_disk) for i in range(nodes)]
        self.replicas: list[Replica] = []

    def add_replica(self, l2: str | dict | None = "memkv", cpus: str | None = None, l1_size_gb: float = 1.0,
                    adapter_params: dict | None = None, **vllm_kw) -> Replica:
        """l2: "memkv" (this stack's nodes), another --l2-adapter dict, or
        None for a vLLM with no KV connector (every prefill recomputed)."""
        i = len(self.replicas)
        if l2 == "memkv":
            l2 = memkv_l2_adapter([n.address for n in self.nodes], adapter_params)
        lmcache = LMCacheServerProcess(self.workdir, i, self.secrets, l2, l1_size_gb=l1_size_gb) if l2 else None
        vllm = VLLMServerProcess(self.workdir, i, self.model_dir, self.served_name, lmcache, dtype=self.dtype,
                                 cpus=cpus, **vllm_kw)
        self.replicas.append(Replica(lmcache, vllm))
        return self.replicas[-1]

    def start_nodes(self) -> None:
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready(60)

    def start_replicas(self, replicas: list[Replica] | None = None, timeout: float = 600.0) -> None:
        replicas = self.replicas if replicas is None else replicas
        for r in replicas:  # each LMCache server must listen before its vLLM connects
            if r.lmcache is not None:
                r.lmcache.start(wait=False)
        for r in replicas:
            if r.lmcache is not None:
                r.lmcache.wait_ready(180)
        for r in replicas:
            r.vllm.start(wait=False)
        for r in replicas:
            r.vllm.wait_ready(timeout)

    def stop_replicas(self, replicas: list[Replica] | None = None) -> None:
        for r in self.replicas if replicas is None else replicas:
            r.vllm.stop()
            if r.lmcache is not None:
                r.lmcache.stop()

    def stop_nodes(self) -> None:
        for n in self.nodes:
            n.stop()

    def stop(self) -> None:
        try:
            self.stop_replicas()
        finally:
            self.stop_nodes()

    def __enter__(self) -> "ServingStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
