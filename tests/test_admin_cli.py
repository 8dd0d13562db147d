"""The admin HTTP port and the `memkv` command line, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import clean_env


def memkv(*args: str, env: dict | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nixl_memkv", *args], capture_output=True, text=True, cwd="/",
                          env=clean_env(**(env or {})), timeout=timeout, check=check)


def in_private_network(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs argv in a network namespace of its own (unshare -n, as root):
    its lo, and a veth pair so that programs wanting an interface besides lo
    find one; nothing in it can be reached from outside."""
    setup = ("ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add 10.254.0.1/24 dev v0 && "
             "ip link set v1 up && ip link set v0 up && exec \"$@\"")
    try:
        return subprocess.run(["unshare", "-n", "sh", "-c", setup, "sh", *argv], capture_output=True, text=True,
                              cwd="/", env=clean_env(), timeout=timeout)
    except FileNotFoundError:  # no unshare
        return subprocess.CompletedProcess(argv, 127, "", "unshare not found")


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_admin_endpoints(node, client_for):
    c = client_for([node])
    c.put("a", b"x" * 1000)
    c.get("a")
    c.get("missing")
    base = f"http://127.0.0.1:{node.admin_port}"
    code, _, body = get(base + "/v1/health")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, ctype, body = get(base + "/v1/status")
    st = json.loads(body)
    assert code == 200 and ctype == "application/json"
    for field in ("node_id", "version", "uptime_s", "keys", "bytes_used", "capacity_bytes", "ops"):
        assert field in st
    assert st["keys"] == 1 and st["ops"]["put"] == 1 and st["ops"]["get"] == 2
    assert st["hits"] == 1 and st["misses"] == 1
    assert st["capacity_bytes"] == (512 << 20) + (1 << 30)
    code, ctype, body = get(base + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    ops = {s.labels["op"]: s.value for s in fams["memkv_ops"].samples if s.name == "memkv_ops_total"}
    assert ops["put"] == 1 and ops["get"] == 2
    assert fams["memkv_keys"].samples[0].value == 1
    assert fams["memkv_evictions_dropped"].samples[0].value == 0
    assert "memkv_s3_requests" not in fams  # no S3 door on this node
    assert get(base + "/nope")[0] == 404


def test_node_id_is_stable_across_restarts(node):
    first = node.status()["node_id"]
    assert node.restart().status()["node_id"] == first


def test_second_node_on_same_data_dir_is_refused(node):
    r = memkv("server", "--data-dir", node.data_dir, "--host", "127.0.0.1", "--port", "1",
              env={"MEMKV_AUTH_KEY": node.auth_key}, check=False, timeout=30)
    assert r.returncode == 2 and "in use by another MemKV node" in r.stderr


def test_server_config_errors_are_clear(tmp_path):
    r = memkv("server", "--data-dir", str(tmp_path), check=False, timeout=30)
    assert r.returncode == 2 and "MEMKV_AUTH_KEY" in r.stderr
    r = memkv("server", "--data-dir", str(tmp_path), "--dram-capacity", "lots", env={"MEMKV_AUTH_KEY": "ab" * 32},
              check=False, timeout=30)
    assert r.returncode == 2 and "--dram-capacity" in r.stderr


def test_server_from_yaml_and_env(tmp_path, auth_key):
    from conftest import NodeProc, free_port
    port = free_port()
    cfg = tmp_path / "memkv.yaml"
    cfg.write_text(f"auth_key: {auth_key}\nnode:\n  data_dir: {tmp_path / 'd'}\n  host: 127.0.0.1\n"
                   f"  port: {port}\n  dram_capacity: 64MiB\n  disk_capacity: 128MiB\n")
    n = NodeProc(str(tmp_path / "d"), auth_key, port=port, env={"MEMKV_CONFIG": str(cfg)})
    n.args = []  # everything from the YAML file (the fixture passes the rest as flags)
    try:
        n.start()
        assert n.status()["tiers"]["dram"]["capacity_bytes"] == 64 << 20
    finally:
        n.stop()


def test_keygen():
    out = memkv("keygen").stdout.strip()
    assert len(out) == 64 and bytes.fromhex(out)


def test_license_issue_and_verify(tmp_path):
    key = tmp_path / "issuer.pem"
    pub = memkv("license", "keygen", "--out", str(key)).stdout.strip()
    lic = tmp_path / "minio.license"
    memkv("license", "issue", "--key", str(key), "--licensee", "ACME", "--plan", "enterprise", "--days", "30",
          "--out", str(lic))
    r = memkv("license", "verify", str(lic), "--pubkey", pub)
    assert "license verified plan=enterprise licensee=ACME" in r.stdout
    r = memkv("license", "verify", env={"MEMKV_LICENSE": str(lic), "MEMKV_LICENSE_PUBKEY": pub})
    assert "license verified" in r.stdout
    text = lic.read_text().replace("A", "B", 1)
    bad = tmp_path / "tampered.license"
    bad.write_text(text)
    r = memkv("license", "verify", str(bad), "--pubkey", pub, check=False)
    assert r.returncode == 2 and "error:" in r.stderr
    r = memkv("license", "verify", check=False)
    assert r.returncode == 2 and "MEMKV_LICENSE" in r.stderr


def test_status_command(cluster3, make_node):
    down = make_node(start=False, name="down")
    servers = [n.address for n in cluster3]
    r = memkv("status", *servers, "--json")
    doc = json.loads(r.stdout)
    assert all(doc[s]["serving"] for s in servers)
    r = memkv("status", *servers, down.address, check=False)
    assert r.returncode == 1 and "down" in r.stdout and "serving" in r.stdout
    r = memkv("status", check=False, env={"MEMKV_SERVERS": ",".join(servers)})
    assert r.returncode == 0 and servers[0] in r.stdout


@pytest.mark.parametrize("path", ["nixl", "client"])
def test_demo_runs_end_to_end(path):
    args = ["demo", "--blocks", "24", "--block-size", "1MiB"] + (["--client-only"] if path == "client" else [])
    r = memkv(*args, timeout=300)
    assert "every byte equal" in r.stdout
    assert "node restart" in r.stdout
    if path == "nixl":
        assert "NIXL agent -> MEMKV plugin" in r.stdout
        assert "Creating memkv engine config=PluginConfig {" in r.stderr
        assert "license verified plan=developer" in r.stderr
        assert 'Server mapped to rail server="127.0.0.1:' in r.stderr


def test_bench_smoke(tmp_path):
    """The benchmark runs and reports, with every installed peer through the
    same loop and its chart; the figures are judged in the closing note, not
    here."""
    from nixl_memkv.bench_peers import PEERS, missing

    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    args = ["bench", "--sizes", "64KiB,4MiB", "--threads", "1", "--seconds", "0.05", "--exists-keys", "500",
            "--new-keys", "32MiB", "--json", str(out), "--plot", str(chart)]
    if in_private_network(["true"]).returncode == 0:
        # Mooncake's transfer engine listens on every interface (and needs one
        # besides lo): the bench runs in a network namespace of its own.
        asked = PEERS
        r = in_private_network([sys.executable, "-m", "nixl_memkv", *args, "--peers", "all"], timeout=300)
    else:  # not root: no namespace, and so no Mooncake
        asked = ("redis", "lm")
        r = memkv(*args, "--peers", ",".join(asked), check=False, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(out.read_text())
    assert doc["raw_loopback_gbps"] > 0 and len(doc["results"]) == 2
    assert all(row["put_gbps"] > 0 and row["get_gbps"] > 0 for row in doc["results"])
    installed = [p for p in asked if missing(p) is None]
    rows = doc["peers"]["results"]
    assert sorted({row["store"] for row in rows}) == sorted(["memkv", *installed]), doc["peers"]
    for row in rows:
        assert row["put_new_gbps"] > 0 and row["get_gbps"] > 0 and row["raw_gbps"] > 0
        assert row["put_new_ratio"] == row["put_new_gbps"] / row["raw_gbps"]
        assert row["title"] in r.stdout
    for p in set(asked) - set(installed):
        assert doc["peers"]["not_run"][p].startswith("not installed (")
        assert f"peer {p}: not installed (" in r.stdout
    png = chart.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 200_000


def test_bench_against_servers_leaves_nothing(node):
    """`--servers` against a real node: every key the bench wrote is deleted."""
    out = node.data_dir + ".bench.json"
    r = memkv("bench", "--servers", node.address, "--sizes", "64KiB,1MiB", "--threads", "1,2", "--seconds", "0.05",
              "--exists-keys", "300", "--new-keys", "8MiB", "--json", out, env={"MEMKV_AUTH_KEY": node.auth_key},
              check=False, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    with open(out) as f:
        doc = json.load(f)
    assert doc["node"] == "external" and len(doc["results"]) == 4 and doc["peers"]["results"] == []
    st = node.status()
    assert st["ops"]["put"] > 300 and st["keys"] == 0 and st["tiers"]["dram"]["bytes_used"] == 0


def get_with(url: str, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}") if "json" in r.headers["Content-Type"] else {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_admin_status_needs_a_key_in_key_mode(make_node, tmp_path, auth_key):
    from node_harness import make_tenants
    creds = make_tenants(str(tmp_path / "tenants.yaml"), "alpha", "beta")
    node = make_node("--dram-capacity", "64MiB", "--disk-capacity", "0", "--admin-auth", "key",
                     "--tenants", str(tmp_path / "tenants.yaml"))
    base = f"http://127.0.0.1:{node.admin_port}"
    code, body = get_with(base + "/v1/status", None)
    assert code == 401 and "Authorization: Bearer" in body["error"] and "--admin-auth none" in body["error"]
    code, body = get_with(base + "/v1/status", "00" * 32)
    assert code == 401 and "neither the cluster auth key nor a tenant's key" in body["error"]
    code, body = get_with(base + "/v1/status", auth_key)
    assert code == 200 and set(body["tenants"]) == {"alpha", "beta"}
    # A tenant's key reads the node's figures and its own tenant only.
    code, body = get_with(base + "/v1/status", creds["alpha"]["auth_key"])
    assert code == 200 and set(body["tenants"]) == {"alpha"} and "keys" in body
    # Health checks and Prometheus need nothing.
    assert get(base + "/v1/health")[0] == 200 and get(base + "/metrics")[0] == 200
    # `memkv status` sends MEMKV_AUTH_KEY, and says what is missing without it.
    r = memkv("status", node.address, env={"MEMKV_AUTH_KEY": auth_key}, timeout=30)
    assert "serving" in r.stdout
    r = memkv("status", node.address, check=False, timeout=30)
    assert r.returncode == 1 and "set MEMKV_AUTH_KEY" in r.stdout


def test_admin_status_default_mode_trusts_only_this_host(node):
    from nixl_memkv.admin import AdminAccess

    # The default (local): loopback reads freely (test_admin_endpoints), other hosts need the key.
    assert get(f"http://127.0.0.1:{node.admin_port}/v1/status")[0] == 200
    key = bytes.fromhex(node.auth_key)
    access = AdminAccess("local", key, lambda: {"t1": b"\1" * 32})
    assert access.scope("127.0.0.1", None) == ("node", "")
    assert access.scope("::ffff:127.0.0.1", None) == ("node", "")
    assert access.scope("10.1.2.3", None)[0] is None
    assert access.scope("10.1.2.3", f"Bearer {node.auth_key}") == ("node", "")
    assert access.scope("10.1.2.3", "Bearer " + "01" * 32) == ("t1", "")
    assert access.scope("10.1.2.3", "Basic " + node.auth_key)[0] is None
    assert AdminAccess("none", key, dict).scope("10.1.2.3", None) == ("node", "")
