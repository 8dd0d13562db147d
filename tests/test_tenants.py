"""Tenants on the native protocol, against real nodes: `memkv tenant`
add/list/remove, the tenants file's errors, each tenant's own keyspace (no op
of one tenant reaches another's keys, nor the cluster key's), DRAM and disk
quotas under load, SIGHUP adding and revoking tenants, usage rebuilt after a
restart, per-tenant metrics, and the NIXL plugin bound to a tenant."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import struct

import numpy as np
import pytest

from nixl_helpers import KvbmBlocks, backend_params, blocks, memkv_agent, seq_hashes
from nixl_memkv import AuthError, Client, ConfigError, KeyTooLong, ServerError
from nixl_memkv._client import _RawSession

MiB = 1 << 20
PUT, GET = 0x01, 0x02
STATUS_KEY_INVALID = 11


def memkv(*args: str, cwd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nixl_memkv", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60)


def add_tenant(path: str, name: str, *quota: str) -> dict:
    out = memkv("tenant", "add", name, "--file", path, *quota, cwd=os.path.dirname(path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def tenants_file(tmp_path) -> str:
    return str(tmp_path / "tenants.yaml")


@pytest.fixture
def tenant_node(make_node, tenants_file):
    """A DRAM-only node with tenants a (a 4 MiB DRAM quota) and b."""
    creds = {"a": add_tenant(tenants_file, "team-a", "--dram-quota", "4MiB"), "b": add_tenant(tenants_file, "team-b")}
    node = make_node("--tenants", tenants_file, "--dram-capacity", "128MiB", "--disk-capacity", "0")
    return node, creds


def as_tenant(client_for, node, cred: dict, **kw) -> Client:
    return client_for([node], auth_key=cred["auth_key"], tenant=cred["tenant"], **kw)


def test_tenant_cli_add_list_remove(tmp_path, tenants_file):
    a = add_tenant(tenants_file, "team-a", "--dram-quota", "8GiB", "--disk-quota", "100GiB")
    assert set(a) == {"tenant", "auth_key", "s3_access_key", "s3_secret_key"} and a["tenant"] == "team-a"
    assert len(bytes.fromhex(a["auth_key"])) == 32 and len(a["s3_secret_key"]) == 40
    b = add_tenant(tenants_file, "team-b")
    assert len({a["auth_key"], b["auth_key"]}) == 2 and a["s3_access_key"] != b["s3_access_key"]
    assert stat.S_IMODE(os.stat(tenants_file).st_mode) == 0o600  # it holds every tenant's secrets
    listed = [json.loads(line) for line in memkv("tenant", "list", "--file", tenants_file, cwd=str(tmp_path))
              .stdout.splitlines()]
    assert listed == [{"tenant": "team-a", "s3_access_key": a["s3_access_key"], "dram_quota": "8GiB",
                       "disk_quota": "100GiB"},
                      {"tenant": "team-b", "s3_access_key": b["s3_access_key"], "dram_quota": None,
                       "disk_quota": None}]
    assert a["auth_key"] not in memkv("tenant", "list", "--file", tenants_file, cwd=str(tmp_path)).stdout

    again = memkv("tenant", "add", "team-a", "--file", tenants_file, cwd=str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = memkv("tenant", "add", "team/a", "--file", tenants_file, cwd=str(tmp_path))
    assert bad.returncode == 2 and "A-Z a-z 0-9 . _ -" in bad.stderr
    quota = memkv("tenant", "add", "team-c", "--file", tenants_file, "--dram-quota", "lots", cwd=str(tmp_path))
    assert quota.returncode == 2 and "--dram-quota" in quota.stderr
    gone = memkv("tenant", "remove", "team-a", "--file", tenants_file, cwd=str(tmp_path))
    assert gone.returncode == 0 and json.loads(gone.stdout) == {"removed": "team-a"}
    assert "team-a" not in memkv("tenant", "list", "--file", tenants_file, cwd=str(tmp_path)).stdout
    missing = memkv("tenant", "remove", "team-a", "--file", tenants_file, cwd=str(tmp_path))
    assert missing.returncode == 2 and "no tenant team-a" in missing.stderr


@pytest.mark.parametrize("body, message", [
    ("tenants:\n  t1:\n    auth_key: xyz\n    s3_access_key: MKAAAAAAAAAAAAAAAAAA\n"
     "    s3_secret_key: " + "s" * 40 + "\n", "tenant t1: auth_key"),
    ("tenants:\n  t1:\n    auth_key: " + "a" * 64 + "\n", "tenant t1: missing s3_access_key"),
    ("tenants:\n  t1:\n    auth_key: " + "a" * 64 + "\n    s3_access_key: MKAAAAAAAAAAAAAAAAAA\n"
     "    s3_secret_key: " + "s" * 40 + "\n    dram_qouta: 1GiB\n", "unknown field 'dram_qouta'"),
    ("tenants:\n  t1:\n    auth_key: " + "a" * 64 + "\n    s3_access_key: MKAAAAAAAAAAAAAAAAAA\n"
     "    s3_secret_key: " + "s" * 40 + "\n    dram_quota: much\n", "tenant t1: dram_quota"),
    ("tenants:\n  bad name:\n    auth_key: " + "a" * 64 + "\n", "is not a tenant name"),
    ("[1, 2]\n", "one top-level key `tenants`"),
])
def test_bad_tenants_file_stops_the_node_naming_file_tenant_and_field(make_node, tmp_path, body, message):
    path = tmp_path / "tenants.yaml"
    path.write_text(body)
    n = make_node("--tenants", str(path), "--dram-capacity", "64MiB", "--disk-capacity", "0", start=False)
    with pytest.raises(RuntimeError) as e:
        n.start()
    assert message in str(e.value) and str(path) in str(e.value)
    assert "a" * 64 not in str(e.value)  # a key is never echoed


def test_each_tenant_has_its_own_keyspace(tenant_node, client_for, auth_key):
    node, creds = tenant_node
    a, b = as_tenant(client_for, node, creds["a"]), as_tenant(client_for, node, creds["b"])
    cluster = client_for([node])
    for c, tag in ((a, b"A"), (b, b"B"), (cluster, b"C")):
        c.put("shared-name", tag * 64)
        c.batch_put([f"batch-{i}" for i in range(8)], [tag * 32] * 8)
    # Same names, three keyspaces: each sees only its own values.
    for c, tag in ((a, b"A"), (b, b"B"), (cluster, b"C")):
        assert c.get("shared-name") == tag * 64
        assert all(v == tag * 32 for v in c.batch_get([f"batch-{i}" for i in range(8)]))
    b.put("only-b", b"secret of b")
    assert a.get("only-b") is None and not a.exists("only-b") and a.stat("only-b") is None
    assert cluster.get("only-b") is None and not cluster.exists("only-b")
    assert a.batch_get(["only-b"]) == [None] and a.batch_exists(["only-b"]) == [False]
    assert a.batch_remove(["only-b"]) == [False]
    assert not a.remove("only-b") and not cluster.remove("only-b")
    assert a.batch_remove([f"batch-{i}" for i in range(8)]) == [True] * 8
    assert b.get("only-b") == b"secret of b"
    assert all(v == b"B" * 32 for v in b.batch_get([f"batch-{i}" for i in range(8)]))
    # No key can reach into a tenant's storage: the node reserves the leading NUL.
    for forge in (lambda: cluster.put("\x00team-b/only-b", b"forged"), lambda: cluster.get("\x00team-b/only-b"),
                  lambda: a.remove("\x00team-b/only-b")):
        with pytest.raises(KeyTooLong, match="NUL byte"):
            forge()
    assert b.get("only-b") == b"secret of b"
    s = node.status()["tenants"]
    assert s["team-b"]["keys"] == 10 and s["team-a"]["keys"] == 1


def test_raw_frames_cannot_name_a_tenants_storage_either(tenant_node, client_for, auth_key):
    """Below the client's own checks: the node refuses NUL-led keys from anyone."""
    node, creds = tenant_node
    as_tenant(client_for, node, creds["b"]).put("only-b", b"secret of b")
    forged = b"\x00team-b/only-b"
    for s in (_RawSession("127.0.0.1", node.port, bytes.fromhex(auth_key)),
              _RawSession("127.0.0.1", node.port, bytes.fromhex(creds["a"]["auth_key"]), tenant="team-a")):
        meta = struct.pack("<H", len(forged)) + forged + struct.pack("<QI", 6, 0)
        s.send_raw(s.encode_sealed(PUT, meta, [b"forged"]))
        assert s.recv_status() == STATUS_KEY_INVALID
        s.send_raw(s.encode(GET, struct.pack("<H", len(forged)) + forged + struct.pack("<QQ", 0, 2**64 - 1)))
        assert s.recv_status() == STATUS_KEY_INVALID
    assert as_tenant(client_for, node, creds["b"]).get("only-b") == b"secret of b"


def test_wrong_or_unknown_tenant_credentials_are_refused(tenant_node, client_for):
    node, creds = tenant_node
    with pytest.raises(AuthError, match="different key of tenant 'team-b'.*MEMKV_TENANT"):
        client_for([node], auth_key=creds["a"]["auth_key"], tenant="team-b").get("k")
    with pytest.raises(AuthError, match="no tenant 'team-z'"):
        client_for([node], auth_key=creds["a"]["auth_key"], tenant="team-z").get("k")
    with pytest.raises(AuthError, match="different auth key"):
        client_for([node], auth_key=creds["a"]["auth_key"]).get("k")  # a tenant's key is not the cluster's
    with pytest.raises(ConfigError, match="MEMKV_TENANT"):
        _client_from_env(node, creds["a"]["auth_key"], "no/slashes")
    assert node.status()["auth_failures"] >= 3


def _client_from_env(node, key: str, tenant: str) -> Client:
    old = {k: os.environ.get(k) for k in ("MEMKV_TENANT", "MEMKV_AUTH_KEY")}
    os.environ.update(MEMKV_TENANT=tenant, MEMKV_AUTH_KEY=key)
    try:
        return Client([node.address], transport="tcp")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_dram_quota_evicts_the_tenants_own_values_first(tenant_node, client_for):
    node, creds = tenant_node
    a, b = as_tenant(client_for, node, creds["a"]), as_tenant(client_for, node, creds["b"])
    b.batch_put([f"b-{i}" for i in range(8)], [bytes([i]) * MiB for i in range(8)])

    def churn(t: int):
        for i in range(12):
            a.put(f"a-{t}-{i}", bytes([t]) * MiB)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(churn, range(4)))  # raises the first put that failed
    s = node.status()["tenants"]
    assert s["team-a"]["dram_bytes_used"] <= 4 * MiB and s["team-a"]["evictions_dram"] >= 40
    # b's values were never the victims, though the node had room to spare.
    assert b.batch_get([f"b-{i}" for i in range(8)]) == [bytes([i]) * MiB for i in range(8)]
    assert s["team-b"]["evictions_dram"] == 0 and s["team-b"]["keys"] == 8
    with pytest.raises(ServerError, match="larger than the tenant's quota"):
        a.put("huge", b"x" * (5 * MiB))
    assert node.status()["tenants"]["team-a"]["over_quota"] == 1


def test_disk_quota_holds_on_a_durable_node_and_usage_survives_a_restart(make_node, client_for, tenants_file):
    cred = add_tenant(tenants_file, "team-d", "--disk-quota", "6MiB")
    node = make_node("--tenants", tenants_file, "--dram-capacity", "64MiB", "--disk-capacity", "256MiB")
    d = as_tenant(client_for, node, cred)
    for i in range(12):
        d.put(f"d-{i}", bytes([i]) * MiB)
    deadline = time.monotonic() + 30
    while node.status()["dirty_bytes"] and time.monotonic() < deadline:
        time.sleep(0.1)
    s = node.status()["tenants"]["team-d"]
    assert 0 < s["disk_bytes_used"] <= 6 * MiB and s["evictions_disk"] >= 6
    newest = d.get("d-11")
    assert newest == bytes([11]) * MiB
    d.close()
    node.restart()
    after = node.status()["tenants"]["team-d"]
    assert after["disk_bytes_used"] == s["disk_bytes_used"]  # rebuilt from the shards, charged to team-d
    assert as_tenant(client_for, node, cred).get("d-11") == newest


def test_longest_keys_of_a_tenant_survive_on_its_shards(make_node, client_for, tenants_file):
    """A tenant's stored key is its prefix plus up to 512 bytes: shard records and the index snapshot hold it."""
    cred = add_tenant(tenants_file, "t" * 23)  # the longest name, so the longest stored key
    node = make_node("--tenants", tenants_file, "--dram-capacity", "64MiB", "--disk-capacity", "256MiB")
    longest = "k" * 512
    as_tenant(client_for, node, cred).put(longest, b"kept")
    node.restart()  # clean: from the snapshot
    assert as_tenant(client_for, node, cred).get(longest) == b"kept"
    node.kill()  # crash: from a scan of the records
    node.start()
    assert as_tenant(client_for, node, cred).get(longest) == b"kept"
    assert node.status()["corrupt_records"] == 0


def test_sighup_adds_and_revokes_tenants(make_node, client_for, tenants_file, tmp_path):
    first = add_tenant(tenants_file, "first")
    node = make_node("--tenants", tenants_file, "--dram-capacity", "64MiB", "--disk-capacity", "0")
    old = as_tenant(client_for, node, first)
    old.put("k", b"v")
    second = add_tenant(tenants_file, "second")
    with pytest.raises(AuthError, match="no tenant 'second'"):
        as_tenant(client_for, node, second).get("k")
    assert memkv("tenant", "remove", "first", "--file", tenants_file, cwd=str(tmp_path)).returncode == 0
    node.proc.send_signal(signal.SIGHUP)
    wait_for_log(node, "revoked: first")
    assert "added: second" in node.log()
    assert as_tenant(client_for, node, second).get("k") is None  # it connects now
    # The revoked tenant's open connection is refused at its next op, and it cannot reconnect.
    with pytest.raises(AuthError, match="no tenant 'first'"):
        old.get("k")
    # A file that breaks is not applied: the tenants loaded before stay.
    with open(tenants_file, "a") as f:
        f.write("  broken: {auth_key: nothex}\n")
    node.proc.send_signal(signal.SIGHUP)
    wait_for_log(node, "tenants not reloaded")
    assert as_tenant(client_for, node, second).get("k") is None


def wait_for_log(node, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in node.log():
        assert time.monotonic() < deadline, f"no {text!r} in the node log:\n{node.log()}"
        time.sleep(0.05)


def test_per_tenant_metrics(tenant_node, client_for):
    node, creds = tenant_node
    a = as_tenant(client_for, node, creds["a"])
    a.put("m", b"x" * 1000)
    assert a.get("m") and a.get("missing") is None
    with urllib.request.urlopen(f"http://{node.host}:{node.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'memkv_tenant_ops_total{tenant="team-a"} 3.0' in text
    assert 'memkv_tenant_hits_total{tenant="team-a"} 1.0' in text
    assert 'memkv_tenant_misses_total{tenant="team-a"} 1.0' in text
    assert 'memkv_tenant_bytes_received_total{tenant="team-a"} 1000.0' in text
    assert 'memkv_tenant_quota_bytes{tenant="team-a",tier="dram"} 4.194304e+06' in text
    assert 'memkv_tenant_keys{tenant="team-b"} 0.0' in text


def test_nixl_plugin_bound_to_a_tenant(tenant_node, auth_key, licence, client_for):
    node, creds = tenant_node
    hashes = seq_hashes(8, seed=11)
    host = blocks(8, 256 << 10, seed=11)
    as_b = backend_params([node], creds["b"]["auth_key"], licence, tenant="team-b")
    kv = KvbmBlocks(memkv_agent(as_b), host, hashes)
    assert kv.run("WRITE") == "DONE"
    kv.close()
    # Tenant a, through the same plugin and the same devIds, finds nothing.
    other = host.copy()
    other[:] = 7
    kv_a = KvbmBlocks(memkv_agent(backend_params([node], creds["a"]["auth_key"], licence, tenant="team-a")),
                      other, hashes)
    assert kv_a.run("READ") != "DONE"
    assert (other == 7).all()
    kv_a.close()
    assert client_for([node]).get(str(hashes[0])) is None  # nor the cluster key
    assert as_tenant(client_for, node, creds["b"]).get(str(hashes[0])) == host[0].tobytes()
    back = np.zeros_like(host)
    kv_b = KvbmBlocks(memkv_agent(as_b), back, hashes)
    assert kv_b.run("READ") == "DONE" and np.array_equal(back, host)
    kv_b.close()
