"""The S3 door against stock clients: boto3 (put/get/range/head/delete/
list, errors, signatures, clock skew, payload checks) and NIXL's own OBJ
backend from nixl-cu12 (KVBM's shapes), with the same blocks read through
our MEMKV plugin and the Python client, and the other way round."""

from __future__ import annotations

import datetime
import socket
import time
import urllib.request

import boto3
import botocore.auth
import botocore.config
import numpy as np
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from nixl_helpers import KvbmBlocks, backend_params, blocks, finish, memkv_agent, seq_hashes
from nixl_memkv import Client

from nixl_cu12 import nixl_agent, nixl_agent_config

MiB = 1 << 20


@pytest.fixture
def door(make_node, tmp_path):
    """A node with its S3 door and tenants s3-a and s3-b."""
    from node_harness import make_tenants

    tenants = str(tmp_path / "tenants.yaml")
    creds = make_tenants(tenants, "s3-a", "s3-b")
    node = make_node("--tenants", tenants, "--s3-port", "0", "--dram-capacity", "256MiB", "--disk-capacity", "512MiB")
    return node, node.status()["s3"]["port"], creds


def s3_client(port: int, cred: dict, secret: str | None = None):
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id=cred["s3_access_key"], aws_secret_access_key=secret or cred["s3_secret_key"],
                        config=botocore.config.Config(s3={"addressing_style": "path"},
                                                      retries={"max_attempts": 1, "mode": "standard"}))


def code_of(call) -> str:
    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def test_boto3_object_round_trip(door):
    node, port, creds = door
    s3 = s3_client(port, creds["s3-a"])
    s3.create_bucket(Bucket="bucket-a")
    s3.head_bucket(Bucket="bucket-a")
    body = bytes(range(256)) * 40_000  # 10 MB, one PutObject
    etag = s3.put_object(Bucket="bucket-a", Key="dir/big", Body=body)["ETag"]
    got = s3.get_object(Bucket="bucket-a", Key="dir/big")
    assert got["Body"].read() == body and got["ETag"] == etag and got["ContentLength"] == len(body)
    part = s3.get_object(Bucket="bucket-a", Key="dir/big", Range="bytes=1000-1999")
    assert part["Body"].read() == body[1000:2000] and part["ContentRange"] == f"bytes 1000-1999/{len(body)}"
    assert s3.get_object(Bucket="bucket-a", Key="dir/big", Range="bytes=-10")["Body"].read() == body[-10:]
    assert s3.get_object(Bucket="bucket-a", Key="dir/big", IfMatch=etag)["Body"].read() == body
    assert code_of(lambda: s3.get_object(Bucket="bucket-a", Key="dir/big", IfMatch='"0"')) == "PreconditionFailed"
    assert code_of(lambda: s3.get_object(Bucket="bucket-a", Key="dir/big", Range=f"bytes={len(body)}-")) == \
        "InvalidRange"
    head = s3.head_object(Bucket="bucket-a", Key="dir/big")
    assert head["ContentLength"] == len(body) and head["ETag"] == etag
    s3.put_object(Bucket="bucket-a", Key="empty", Body=b"")
    assert s3.get_object(Bucket="bucket-a", Key="empty")["Body"].read() == b""
    s3.delete_object(Bucket="bucket-a", Key="dir/big")
    assert code_of(lambda: s3.get_object(Bucket="bucket-a", Key="dir/big")) == "NoSuchKey"
    assert code_of(lambda: s3.head_object(Bucket="bucket-a", Key="dir/big")) == "404"
    # An S3 object is the tenant's native key BUCKET/KEY: the Python client reads it.
    s3.put_object(Bucket="bucket-a", Key="shared", Body=b"from s3")
    native = Client([node.address], creds["s3-a"]["auth_key"], tenant="s3-a", transport="tcp")
    assert native.get("bucket-a/shared") == b"from s3"
    native.put("bucket-a/from-native", b"from the client")
    assert s3.get_object(Bucket="bucket-a", Key="from-native")["Body"].read() == b"from the client"
    native.close()
    # The door's counters, as Prometheus scrapes them.
    with urllib.request.urlopen(f"http://127.0.0.1:{node.admin_port}/metrics", timeout=5) as r:
        samples = {(s.name, s.labels.get("direction")): s.value
                   for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}
    st = node.status()["s3"]
    assert samples[("memkv_s3_requests_total", None)] == st["requests"] >= 15
    assert samples[("memkv_s3_errors_total", None)] == st["errors"] >= 3  # PreconditionFailed, InvalidRange, 404s
    assert samples[("memkv_s3_bytes_total", "in")] >= len(body)
    assert samples[("memkv_s3_bytes_total", "out")] >= 2 * len(body)
    assert samples[("memkv_s3_connections_total", None)] >= 1


def test_boto3_listing(door):
    _, port, creds = door
    s3 = s3_client(port, creds["s3-a"])
    s3.create_bucket(Bucket="list-me")
    names = [f"dir/{i:03d}" for i in range(25)] + ["top-1", "top-2", "with space/ünïcode"]
    for n in names:
        s3.put_object(Bucket="list-me", Key=n, Body=n.encode())
    listed = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="list-me", PaginationConfig={"PageSize": 7}):
        listed += [o["Key"] for o in page["Contents"]]
        assert page["KeyCount"] <= 7
    assert listed == sorted(names, key=lambda k: k.encode())
    top = s3.list_objects_v2(Bucket="list-me", Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["top-1", "top-2"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir/", "with space/"]
    sub = s3.list_objects_v2(Bucket="list-me", Prefix="dir/01")
    assert [o["Key"] for o in sub["Contents"]] == [f"dir/{i:03d}" for i in range(10, 20)]
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["list-me"]
    assert code_of(lambda: s3.delete_bucket(Bucket="list-me")) == "BucketNotEmpty"


def test_boto3_auth_and_tenant_errors(door):
    _, port, creds = door
    a, b = s3_client(port, creds["s3-a"]), s3_client(port, creds["s3-b"])
    a.create_bucket(Bucket="a-only")
    a.put_object(Bucket="a-only", Key="k", Body=b"secret of a")
    assert code_of(lambda: s3_client(port, creds["s3-a"], secret="x" * 40).get_object(Bucket="a-only", Key="k")) == \
        "SignatureDoesNotMatch"
    stranger = {"s3_access_key": "MKANOBODY0000000000", "s3_secret_key": "y" * 40}
    assert code_of(lambda: s3_client(port, stranger).list_buckets()) == "InvalidAccessKeyId"
    # Another tenant's bucket: refused for every op, and its name is taken.
    assert code_of(lambda: b.get_object(Bucket="a-only", Key="k")) == "AccessDenied"
    assert code_of(lambda: b.put_object(Bucket="a-only", Key="k", Body=b"overwrite")) == "AccessDenied"
    assert code_of(lambda: b.delete_object(Bucket="a-only", Key="k")) == "AccessDenied"
    assert code_of(lambda: b.list_objects_v2(Bucket="a-only")) == "AccessDenied"
    assert code_of(lambda: b.create_bucket(Bucket="a-only")) == "BucketAlreadyExists"
    assert code_of(lambda: b.get_object(Bucket="no-such-bucket", Key="k")) == "NoSuchBucket"
    assert a.get_object(Bucket="a-only", Key="k")["Body"].read() == b"secret of a"
    assert code_of(lambda: a.create_bucket(Bucket="Bad_Name")) == "InvalidBucketName"


def signed_request(port: int, cred: dict, method: str, path: str, body: bytes = b"", *, when=None,
                   headers: dict | None = None, send: bytes | None = None,
                   added: dict | None = None) -> tuple[int, bytes]:
    """One request signed by botocore's own SigV4 for `body`, sent raw (so
    tests can skew the clock, send other bytes than were signed, or add
    headers after signing)."""
    url = f"http://127.0.0.1:{port}{path}"
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    signer = botocore.auth.S3SigV4Auth(Credentials(cred["s3_access_key"], cred["s3_secret_key"]), "s3", "us-east-1")
    if when is not None:
        real = botocore.auth.datetime.datetime

        class Skewed(real):
            @classmethod
            def utcnow(cls):
                return when

            @classmethod
            def now(cls, tz=None):
                return when if tz is None else when.replace(tzinfo=tz)

        botocore.auth.datetime.datetime = Skewed
        try:
            signer.add_auth(req)
        finally:
            botocore.auth.datetime.datetime = real
    else:
        signer.add_auth(req)
    p = req.prepare()
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in {**p.headers, **(added or {})}.items())
    if body and "Content-Length" not in p.headers:
        head += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + b"Connection: close\r\n\r\n" + (body if send is None else send))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_skewed_clocks_and_payloads_that_lie_are_refused(door):
    _, port, creds = door
    s3 = s3_client(port, creds["s3-a"])
    s3.create_bucket(Bucket="checks")
    assert signed_request(port, creds["s3-a"], "PUT", "/checks/ok", b"fine")[0] == 200
    old = datetime.datetime.utcnow() - datetime.timedelta(minutes=20)
    status, body = signed_request(port, creds["s3-a"], "GET", "/checks/ok", when=old)
    assert status == 403 and b"RequestTimeTooSkewed" in body
    # Bytes changed in transit no longer match the signed payload hash: nothing is stored.
    status, body = signed_request(port, creds["s3-a"], "PUT", "/checks/lie", b"signed bytes", send=b"altered byte")
    assert status == 400 and b"XAmzContentSHA256Mismatch" in body
    assert code_of(lambda: s3.head_object(Bucket="checks", Key="lie")) == "404"
    status, body = signed_request(port, creds["s3-a"], "PUT", "/checks/crc", b"payload",
                                  headers={"x-amz-checksum-crc32": "AAAAAA=="})
    assert status == 400 and b"BadDigest" in body
    # A header added on the way (here one that would change what is verified) is refused.
    status, body = signed_request(port, creds["s3-a"], "PUT", "/checks/ok", b"fine",
                                  added={"x-amz-checksum-crc32": "AAAAAA=="})
    assert status == 403 and b"x-amz-checksum-crc32 is not signed" in body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # unsigned
        s.sendall(b"GET /checks/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 403 ")
    status, body = signed_request(port, creds["s3-a"], "POST", "/checks/big?uploads")
    assert status == 501 and b"multipart uploads are not supported yet" in body


def test_stock_nixl_obj_backend_and_the_memkv_plugin_share_blocks(door, licence):
    """KVBM's shapes through NIXL's own OBJ backend (no plugin of ours): 16
    blocks, one registration each, devId = the sequence hash, no metaInfo."""
    node, port, creds = door
    a = creds["s3-a"]
    s3_client(port, a).create_bucket(Bucket="kvbm")
    agent = nixl_agent(f"stock-obj-{time.monotonic_ns()}", nixl_agent_config(enable_prog_thread=False, backends=[]))
    agent.create_backend("OBJ", {"endpoint_override": f"127.0.0.1:{port}", "scheme": "http", "region": "us-east-1",
                                 "access_key": a["s3_access_key"], "secret_key": a["s3_secret_key"],
                                 "bucket": "kvbm", "use_virtual_addressing": "false"})
    n, size = 16, 2 * MiB
    host = blocks(n, size, seed=5)
    hashes = seq_hashes(n, seed=5)
    dram = agent.register_memory([(host.ctypes.data, host.nbytes, 0, "")], "DRAM", backends=["OBJ"])
    objs = agent.register_memory([(0, size, h, "") for h in hashes], "OBJ", backends=["OBJ"])

    def xfer(op: str, buf: np.ndarray) -> str:
        local = agent.get_xfer_descs([(buf.ctypes.data + i * size, size, 0) for i in range(n)], "DRAM")
        remote = agent.get_xfer_descs([(0, size, h) for h in hashes], "OBJ")
        return finish(agent, agent.initialize_xfer(op, local, remote, agent.name, backends=["OBJ"]))

    assert xfer("WRITE", host) == "DONE"
    original = host.copy()
    host[:] = 0
    assert xfer("READ", host) == "DONE" and np.array_equal(host, original)
    present = agent.query_memory([(0, size, hashes[0], str(hashes[0])), (0, size, 1, "1")], "OBJ", "OBJ")
    assert present[0] is not None and present[1] is None
    # The same blocks through our MEMKV plugin (namespace = the bucket) and the Python client.
    params = backend_params([node], a["auth_key"], licence, tenant="s3-a", namespace="kvbm/")
    back = np.zeros_like(original)
    kv = KvbmBlocks(memkv_agent(params), back, hashes)
    assert kv.run("READ") == "DONE" and np.array_equal(back, original)
    # ... and the other way round: written by MEMKV, read by stock OBJ.
    fresh = blocks(n, size, seed=6)
    back[:] = fresh
    assert kv.run("WRITE") == "DONE"
    kv.close()
    assert xfer("READ", host) == "DONE" and np.array_equal(host, fresh)
    native = Client([node.address], a["auth_key"], tenant="s3-a", transport="tcp")
    assert native.get(f"kvbm/{hashes[3]}") == fresh[3].tobytes()
    native.close()
    # Tenant s3-b's stock OBJ backend cannot read tenant s3-a's blocks.
    other = nixl_agent(f"stock-obj-b-{time.monotonic_ns()}", nixl_agent_config(enable_prog_thread=False, backends=[]))
    other.create_backend("OBJ", {"endpoint_override": f"127.0.0.1:{port}", "scheme": "http", "region": "us-east-1",
                                 "access_key": creds["s3-b"]["s3_access_key"],
                                 "secret_key": creds["s3-b"]["s3_secret_key"], "bucket": "kvbm",
                                 "use_virtual_addressing": "false"})
    sink = np.zeros((1, size), dtype=np.uint8)
    other.register_memory([(sink.ctypes.data, sink.nbytes, 0, "")], "DRAM", backends=["OBJ"])
    other.register_memory([(0, size, hashes[0], "")], "OBJ", backends=["OBJ"])
    h = other.initialize_xfer("READ", other.get_xfer_descs([(sink.ctypes.data, size, 0)], "DRAM"),
                              other.get_xfer_descs([(0, size, hashes[0])], "OBJ"), other.name, backends=["OBJ"])
    assert finish(other, h) == "ERR"  # AccessDenied: a bucket of another tenant
    # (The SDK streams the error's XML into the buffer; none of tenant s3-a's bytes arrive.)
    assert b"AccessDenied" in sink[0, :1024].tobytes() and not sink[0, 1024:].any()
    agent.deregister_memory(objs, backends=["OBJ"])
    agent.deregister_memory(dram, backends=["OBJ"])


def test_objects_and_buckets_survive_a_restart(door):
    node, port, creds = door
    s3 = s3_client(port, creds["s3-a"])
    s3.create_bucket(Bucket="durable")
    s3.put_object(Bucket="durable", Key="k", Body=b"kept")
    node.restart()
    port = node.status()["s3"]["port"]
    s3 = s3_client(port, creds["s3-a"])
    s3.head_bucket(Bucket="durable")
    assert s3.get_object(Bucket="durable", Key="k")["Body"].read() == b"kept"


def test_bench_s3_short_run(tmp_path):
    """The benchmark's short version: both MemKV series, figures and ratios."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "s3.json"
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bench_s3.py")
    r = subprocess.run([sys.executable, "-P", script, "--blocks", "4", "--block-size", "262144", "--rounds", "1",
                        "--peers", "none", "--json", str(out)], capture_output=True, text=True, timeout=300,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "door / memkv protocol: write" in r.stdout
    figures = json.loads(out.read_text())
    assert set(figures["gb_s"]) == {"memkv S3 door", "memkv protocol"}
    assert all(f["write_gb_s"] > 0 and f["read_gb_s"] > 0 for f in figures["gb_s"].values())
    bad = subprocess.run([sys.executable, "-P", script, "--blocks", "0"], capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path))
    assert bad.returncode == 2 and "--blocks" in bad.stderr
