"""Shared fixtures: real `memkv server` processes on 127.0.0.1, each with its
own data dir and ports; every process a test starts is stopped after it."""

from __future__ import annotations

import os

import pytest

import torchvision_cpu_shim  # noqa: F401  (sglang's imports reach torchvision; see the module)

from nixl_memkv import Client
from nixl_memkv.auth import generate_auth_key
from node_harness import NodeProc, clean_env, free_port, make_licence  # noqa: F401  (tests import these from here)

# The RDMA suite (tests/rdma) runs inside the soft-RoCE guest, through
# scripts/rdma-vm.sh; a plain run skips collecting it.
collect_ignore = [] if os.environ.get("RDMA_VM") else ["rdma"]

os.environ["LMCACHE_TRACK_USAGE"] = "false"


@pytest.fixture(scope="session")
def licence(tmp_path_factory):
    return make_licence(str(tmp_path_factory.mktemp("licence")))


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
