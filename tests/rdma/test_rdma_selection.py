"""Which transport a client gets, and the errors a wrong setup gets: `auto`
picks RDMA with a device and a node that offers it, TCP otherwise; `rdma`
fails loudly; a client that fails authentication never gets a queue pair."""

from __future__ import annotations

import logging

import pytest
from conftest import DEVICE, HOST_A, queue_pairs

from nixl_memkv import _client
from nixl_memkv.errors import AuthError, ConfigError, MemKVError


@pytest.fixture(scope="module")
def rdma_node(nodes):
    return nodes.start(host=HOST_A, name="sel-rdma")


@pytest.fixture(scope="module")
def tcp_node(nodes):
    return nodes.start(host=HOST_A, name="sel-tcp", rdma=False)


@pytest.fixture
def native_info_logs(caplog):
    logging.getLogger("memkv.native").setLevel(logging.INFO)
    _client.install_native_logging()
    caplog.set_level(logging.INFO)
    yield caplog
    logging.getLogger("memkv.native").setLevel(logging.NOTSET)
    _client.install_native_logging()


def test_auto_uses_rdma_with_a_device_and_an_offering_node(rdma_node, make_client):
    before = rdma_node.status()["rdma"]["connections_total"]
    c = make_client([rdma_node], transport="auto")
    assert c.transport == "rdma" and c._native.transport == "rdma"
    c.put("auto/a", b"x" * 100000)
    assert c.get("auto/a") == b"x" * 100000
    assert rdma_node.status()["rdma"]["connections_total"] > before
    assert rdma_node.status()["rdma"]["bytes_in"] >= 100000


def test_auto_falls_back_to_tcp_per_node_with_one_line(tcp_node, rdma_node, make_client, native_info_logs):
    c = make_client([tcp_node, rdma_node], transport="auto")
    keys = [f"mixed/{i}" for i in range(32)]
    c.batch_put(keys, [b"v" * 5000] * 32)
    assert c.batch_get(keys) == [b"v" * 5000] * 32
    lines = [r.getMessage() for r in native_info_logs.records if "offers no RDMA" in r.getMessage()]
    assert len(lines) == 1 and f"transport=tcp to {tcp_node.address}" in lines[0], lines
    assert tcp_node.status()["rdma"]["connections_total"] == 0
    assert rdma_node.status()["rdma"]["connections_total"] > 0


def test_auto_without_a_visible_device_is_tcp(rdma_node, make_client, caplog):
    caplog.set_level(logging.INFO, logger="memkv-client")
    c = make_client([rdma_node], transport="auto", rdma_devices="mlx5_9")
    assert c.transport == "tcp" and c._native.transport == "tcp"
    assert any("transport selected transport=tcp (no RDMA device from MEMKV_RDMA_DEVICES=mlx5_9 visible"
               in r.getMessage() for r in caplog.records)
    c.put("auto/tcp", b"t")
    assert c.get("auto/tcp") == b"t"


def test_rdma_errors_name_the_problem(rdma_node, tcp_node, make_client):
    with pytest.raises(ConfigError, match="MEMKV_TRANSPORT=rdma needs MEMKV_RDMA_DEVICES"):
        make_client([rdma_node], rdma_devices="")
    with pytest.raises(ConfigError, match=rf"none of MEMKV_RDMA_DEVICES=mlx5_0 is visible .*visible: {DEVICE}"):
        make_client([rdma_node], rdma_devices="mlx5_0")
    c = make_client([tcp_node])
    with pytest.raises(ConfigError, match=rf"MEMKV_TRANSPORT=rdma but node {tcp_node.address} offers no RDMA: "
                                          "the node serves no RDMA device"):
        c.put("strict/a", b"x")


def test_node_with_a_wrong_device_refuses_to_start(nodes):
    with pytest.raises(RuntimeError, match=rf"RDMA device mlx5_7 not found \(visible: {DEVICE}[,)]"):
        nodes.start("--rdma-devices", "mlx5_7", host=HOST_A, name="bad-dev", rdma=False)


def test_wrong_auth_key_gets_no_queue_pair(rdma_node, make_client):
    from nixl_memkv.auth import generate_auth_key
    qps = {qp["lqpn"] for qp in queue_pairs()}
    connections = rdma_node.status()["rdma"]["connections_total"]
    c = make_client([rdma_node], auth_key=generate_auth_key())
    with pytest.raises(AuthError):
        c.put("intruder", b"x")
    with pytest.raises(MemKVError):
        c.get("auto/a")
    assert rdma_node.status()["rdma"]["connections_total"] == connections
    # Queue pairs are made only after the handshake: none appeared on either side.
    assert not {qp["lqpn"] for qp in queue_pairs()} - qps
