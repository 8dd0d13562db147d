"""The RDMA suite: real verbs on soft-RoCE. It runs inside the qemu guest of
scripts/rdma-vm.sh (scripts/test.sh starts it there), where rxe0 sits on a
dummy netdev holding 10.77.0.1 and 10.77.0.2. Nodes bind those addresses
and serve rxe0; clients reach them through the real native client, the
NIXL plugin and the LMCache/sglang plugins.

Only light imports here: every import costs seconds in the emulated guest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: node_harness
# This suite drives LMCache and sglang through the harnesses, which stand in
# for the engine. LMCache imports vLLM (only for its hash seed) whenever it
# is installed, and under emulation that import alone takes minutes and
# GiBs; vLLM is tested for real outside the guest (tests/test_vllm_engine.py).
sys.modules.setdefault("vllm", None)

from node_harness import NodeProc, make_licence  # noqa: E402

from nixl_memkv import Client  # noqa: E402
from nixl_memkv.auth import generate_auth_key  # noqa: E402
from nixl_memkv.config import load_client_config  # noqa: E402

DEVICE = "rxe0"
HOST_A, HOST_B = "10.77.0.1", "10.77.0.2"
SYSFS = f"/sys/class/infiniband/{DEVICE}"


def pytest_collection_modifyitems(config, items):
    if not os.path.isdir(SYSFS):
        skip = pytest.mark.skip(reason=f"no {DEVICE}: run the RDMA suite through scripts/rdma-vm.sh")
        for item in items:
            item.add_marker(skip)


def port_counter(name: str, device: str = DEVICE) -> int:
    """A soft-RoCE port counter (hw_counters: sent_pkts, rcvd_pkts, ...)."""
    with open(f"/sys/class/infiniband/{device}/ports/1/hw_counters/{name}") as f:
        return int(f.read())


def path_mtu() -> int:
    """Bytes per packet at most (the port's active MTU)."""
    out = subprocess.run(["ibv_devinfo", "-d", DEVICE], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if "active_mtu" in line:
            return int(line.split()[1])
    raise AssertionError(f"no active_mtu in ibv_devinfo: {out}")


def queue_pairs() -> list[dict]:
    """Every queue pair the kernel knows on this host (iproute2's `rdma`)."""
    out = subprocess.run(["rdma", "-j", "resource", "show", "qp"], capture_output=True, text=True, check=True).stdout
    return [qp for qp in json.loads(out or "[]") if qp.get("type") == "RC"]


@pytest.fixture(scope="session")
def auth_key() -> str:
    return generate_auth_key()


@pytest.fixture(scope="session")
def licence(tmp_path_factory):
    return make_licence(str(tmp_path_factory.mktemp("licence")))


class Nodes:
    """Starts nodes on the guest's addresses; stops them all at the end."""

    def __init__(self, root, auth_key: str):
        self.root = root
        self.auth_key = auth_key
        self.nodes: list[NodeProc] = []

    def start(self, *args: str, host: str = HOST_A, rdma: bool = True, name: str | None = None,
              key: str | None = None) -> NodeProc:
        d = self.root / (name or f"node{len(self.nodes)}") / "data"
        d.parent.mkdir(parents=True, exist_ok=True)
        extra = ["--rdma-devices", DEVICE] if rdma else []
        n = NodeProc(str(d), key or self.auth_key, "--dram-capacity", "192MiB", "--disk-capacity", "256MiB",
                     *extra, *args, host=host)
        self.nodes.append(n)
        return n.start(wait=True)

    def stop_all(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, auth_key):
    ns = Nodes(tmp_path_factory.mktemp("nodes"), auth_key)
    yield ns
    ns.stop_all()


@pytest.fixture(scope="module")
def cluster3(nodes) -> list[NodeProc]:
    """Three RDMA nodes: two on one guest address, one on the other."""
    return [nodes.start(host=HOST_A, name="r0"), nodes.start(host=HOST_A, name="r1"),
            nodes.start(host=HOST_B, name="r2")]


@pytest.fixture
def make_client(auth_key):
    """Factory: make_client(nodes, transport="rdma", **settings) -> Client; all closed at the end."""
    clients: list[Client] = []

    def make(nodes, *, transport: str = "rdma", **settings) -> Client:
        given = {"servers": ",".join(n.address if isinstance(n, NodeProc) else n for n in nodes),
                 "auth_key": settings.pop("auth_key", auth_key), "transport": transport,
                 "rdma_devices": settings.pop("rdma_devices", DEVICE), "connect_timeout_ms": 3000,
                 "op_timeout_ms": 15000, **settings}
        c = Client(config=load_client_config(given, overrides_source="test"))
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
