"""Two rails: MEMKV_RDMA_DEVICES=rxe0,rxe1 on the client and
--rdma-devices rxe0,rxe1 on the nodes. Server i uses rail i mod 2, the start-up
line names its device, and each rail carries its server's bytes."""

from __future__ import annotations

import logging

import numpy as np
from conftest import HOST_A, HOST_B, path_mtu, port_counter

RAILS = ("rxe0", "rxe1")


def test_each_server_rides_its_rail(nodes, make_client, caplog):
    caplog.set_level(logging.INFO, logger="memkv-client")
    servers = [nodes.start("--rdma-devices", ",".join(RAILS), host=h, name=f"rail{i}", rdma=False)
               for i, h in enumerate((HOST_A, HOST_B))]
    c = make_client(servers, rdma_devices=",".join(RAILS))
    assert [c._native.rail_device(i) for i in range(2)] == list(RAILS)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Server mapped to rail")]
    assert lines == [f'Server mapped to rail server="{s.address}" rail={i} device={RAILS[i]}'
                     for i, s in enumerate(servers)]
    keys = [f"rails/{i}" for i in range(40)]
    vals = [np.random.default_rng(i).integers(0, 256, 256 << 10, dtype=np.uint8) for i in range(40)]
    per_server = [sum(v.nbytes for k, v in zip(keys, vals) if c.server_for(k) == s.address) for s in servers]
    assert all(per_server)
    before = [port_counter("sent_pkts", d) for d in RAILS]
    c.batch_put(keys, vals)
    outs = [np.zeros_like(v) for v in vals]
    c.batch_get_into(keys, outs)
    assert all(np.array_equal(a, b) for a, b in zip(vals, outs))
    for rail, (b, moved) in enumerate(zip(before, per_server)):
        assert (port_counter("sent_pkts", RAILS[rail]) - b) * path_mtu() >= 2 * moved, RAILS[rail]
    # The node served each connection on the device of the client's rail.
    assert [s.status()["rdma"]["bytes_in"] for s in servers] == per_server
