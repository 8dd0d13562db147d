"""Rough edges a new user hit, each through the real CLI and real node
processes: errors name the flag or argument typed, `memkv status` says which
admin address failed, a DRAM tier larger than memory warns, a failed start
leaves no data dir behind, the demo's progress is in the report's units."""

from __future__ import annotations

import json
import math
import os
import socket

from test_admin_cli import memkv


def test_bench_servers_error_names_the_flag():
    r = memkv("bench", "--servers", "127.0.0.1:abc", check=False, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--servers='127.0.0.1:abc' is not valid" in r.stderr and "backend param" not in r.stderr
    r = memkv("bench", "--threads", "two", check=False, timeout=60)
    assert r.returncode == 2 and "--threads 'two'" in r.stderr


def test_status_errors_name_the_servers_argument():
    r = memkv("status", check=False, timeout=60)  # clean_env: no MEMKV_SERVERS
    assert r.returncode == 2 and "memkv status HOST:PORT" in r.stderr and "backend param" not in r.stderr
    r = memkv("status", "127.0.0.1:1", "127.0.0.1:xyz", check=False, timeout=60)
    assert r.returncode == 2 and "SERVERS='127.0.0.1:1,127.0.0.1:xyz' is not valid" in r.stderr

    r = memkv("status", "127.0.0.1:9900", "--admin", "127.0.0.1", check=False, timeout=60)
    assert r.returncode == 2 and "--admin '127.0.0.1' is not valid ('127.0.0.1' has no port)" in r.stderr
    r = memkv("status", "127.0.0.1:9900", "--admin", "h:1", "--admin", "h:2", check=False, timeout=60)
    assert r.returncode == 2 and "--admin was given 2 times for 1 server(s)" in r.stderr


def test_status_of_a_down_node_says_which_admin_address_failed(node, make_node):
    down = make_node(start=False, name="down")
    r = memkv("status", node.address, down.address, check=False, timeout=60)
    assert r.returncode == 1
    url = f"http://127.0.0.1:{down.port + 1}/v1/status"
    row = next(line for line in r.stdout.splitlines() if down.address in line and "down" in line)
    assert "refused" not in row  # the table's columns hold what they are named for
    assert f"{down.address} is down: {url}: [Errno 111] Connection refused" in r.stdout
    assert "give --admin HOST:PORT" in r.stdout
    doc = json.loads(memkv("status", node.address, down.address, "--json", check=False, timeout=60).stdout)
    assert doc[node.address]["serving"] and doc[down.address]["error"].startswith(url + ": ")


def test_dram_capacity_larger_than_memory_warns(make_node, node):
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gib = math.ceil(2 * memory / 2**30)
    big = make_node("--dram-capacity", f"{gib}GiB", "--disk-capacity", "0", name="big")
    st = big.status()
    assert st["serving"] and st["tiers"]["dram"]["capacity_bytes"] == gib << 30
    log = big.log()
    assert f"DRAM tier {gib}GiB (from --dram-capacity) is larger than the memory this node can use" in log
    # Pre-faulting it would have the node OOM-killed before it served anything.
    assert "not pre-faulting it" in log and st["tiers"]["dram"]["arena_prefaulted_bytes"] == 0
    assert "larger than the memory" not in node.log()  # a tier that fits says nothing


def test_failed_start_leaves_no_data_dir(tmp_path, auth_key):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ("--host", "127.0.0.1", "--port", str(port), "--dram-capacity", "64MiB", "--disk-capacity", "64MiB")
        fresh = tmp_path / "new" / "data"
        r = memkv("server", "--data-dir", str(fresh), *args, env={"MEMKV_AUTH_KEY": auth_key}, check=False,
                  timeout=60)
        assert r.returncode == 2 and "Address already in use" in r.stderr and "--port" in r.stderr
        assert not (tmp_path / "new").exists()
        kept = tmp_path / "kept"
        kept.mkdir()
        (kept / "mine").write_text("x")
        r = memkv("server", "--data-dir", str(kept), *args, env={"MEMKV_AUTH_KEY": auth_key}, check=False,
                  timeout=60)
        assert r.returncode == 2 and (kept / "mine").read_text() == "x"  # a dir it did not make stays


def test_demo_progress_is_in_the_reports_units():
    r = memkv("demo", "--client-only", "--blocks", "8", "--block-size", "1MiB", timeout=120)
    assert "8 x 1MiB = 8MiB" in r.stdout and "every byte equal" in r.stdout
    assert "8.0/8.0 MiB" in r.stdout and " MB " not in r.stdout
