"""`memkv rdma-info` against independent views of rxe0: ibv_devinfo (the
verbs' own tool) and the two sources the command reads (pyverbs, sysfs)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import DEVICE, path_mtu


def rdma_info(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "nixl_memkv", "rdma-info", "--json", *args], capture_output=True,
                         text=True, check=True, cwd="/tmp").stdout
    return json.loads(out)


def test_rdma_info_matches_the_device():
    pv = rdma_info("--source", "pyverbs")
    fs = rdma_info("--source", "sysfs")
    assert pv["source"] == "pyverbs" and fs["source"] == "sysfs"
    assert pv["rdma_transport_built"] and pv["rdma_unavailable"] == ""
    for doc in (pv, fs):
        [dev] = [d for d in doc["devices"] if d["name"] == DEVICE]
        [port] = dev["ports"]
        assert port["state"] == "ACTIVE" and port["link_layer"] == "Ethernet"
        assert port["active_mtu"] == path_mtu()
        v2 = [g for g in port["gids"] if g["type"] == "RoCE v2"]
        assert any(g["gid"].endswith(":ffff:0a4d:0001") for g in v2), port["gids"]  # ::ffff:10.77.0.1
        assert {g["netdev"] for g in port["gids"]} == {"memkv0"}
    by_name = {d["name"]: d for d in fs["devices"]}
    assert {d["name"] for d in pv["devices"]} == set(by_name)
    for d in pv["devices"]:
        assert [g["gid"] for g in d["ports"][0]["gids"]] == [g["gid"] for g in by_name[d["name"]]["ports"][0]["gids"]]


def test_rdma_info_table_names_the_devices_to_configure():
    out = subprocess.run([sys.executable, "-m", "nixl_memkv", "rdma-info"], capture_output=True, text=True,
                         check=True, cwd="/tmp").stdout
    assert f"MEMKV_RDMA_DEVICES={DEVICE}" in out and "RDMA transport: available" in out
    assert "0a4d:0001" in out  # the GID carrying 10.77.0.1
