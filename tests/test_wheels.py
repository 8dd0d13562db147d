"""The wheels as the product documents install them: each plugin wheel goes
into a fresh venv with one `pip install` (the documents' line, offline), pip
says `Successfully installed memkv-<engine>-<version>`, and the engine loads
the plugin from that venv (LMCache by module path, sglang's `dynamic`
backend) and makes a round trip through a real node.

The core wheel is compiled by scripts/build-wheels.sh (minutes); this test
reuses one in dist/ when there is one and repackages the plugin wheels from it
(scripts/lib/plugin_wheels.py, seconds). The venvs see the global packages
(torch, LMCache, sglang), so the test checks that our packages come from the
venv."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import nixl_memkv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "tests")
VERSION = nixl_memkv.__version__


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, str]:
    out = str(tmp_path_factory.mktemp("dist"))
    cores = glob.glob(os.path.join(ROOT, "dist", f"nixl_memkv-{VERSION}-*.whl"))
    if cores:
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts/lib/plugin_wheels.py"), cores[0], out],
                       check=True, capture_output=True, timeout=120)
    else:
        subprocess.run(["bash", os.path.join(ROOT, "scripts/build-wheels.sh"), out], check=True,
                       env=dict(os.environ, PYTHON=sys.executable), timeout=1800)
    found = {}
    for name in ("memkv_lmcache", "memkv_sglang"):
        (found[name],) = glob.glob(os.path.join(out, f"{name}-{VERSION}-*.whl"))
    return found


def fresh_venv(path) -> str:
    # Without a pip (and setuptools) of its own: the global pip installs into it
    # (`python -m pip` runs in the venv), and LMCache's setuptools pin meets the
    # global setuptools rather than ensurepip's older one.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True,
                   timeout=120)
    py = os.path.join(str(path), "bin", "python")
    if sys.prefix != sys.base_prefix:
        # Run from a venv, the new one's "system" packages would be the base
        # interpreter's: add this venv's (after its own, so ours still win).
        site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip()
        outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        with open(os.path.join(site, "outer-venv.pth"), "w") as f:
            f.write("".join(p + "\n" for p in sorted(outer)))
    return py


def pip_install(py: str, *args: str) -> str:
    # --no-index: the engines are installed globally, and a test reaches no index.
    r = subprocess.run([py, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def child(py: str, harness: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED="0", LMCACHE_TRACK_USAGE="false", HF_HUB_OFFLINE="1")
    r = subprocess.run([py, "-P", os.path.join(HERE, harness), *args], env=env, capture_output=True, text=True,
                       timeout=240, cwd=HERE)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"{harness} {args[0]} printed no result (rc={r.returncode}):\n{r.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def assert_from_venv(files: dict, venv) -> None:
    for module, path in files.items():
        assert path.startswith(str(venv) + os.sep), f"{module} came from {path}, not from the venv {venv}"


def test_each_plugin_wheel_bundles_the_core_and_only_its_own_plugin(wheels):
    for name, other in (("memkv_lmcache", "memkv_sglang"), ("memkv_sglang", "memkv_lmcache")):
        names = zipfile.ZipFile(wheels[name]).namelist()
        tops = {n.split("/", 1)[0] for n in names}
        assert tops == {"nixl_memkv", name, f"{name}-{VERSION}.dist-info"}, tops
        assert any(re.match(r"nixl_memkv/_client\..*\.so$", n) for n in names)
        assert "nixl_memkv/plugins/libplugin_MEMKV.so" in names
        meta = zipfile.ZipFile(wheels[name]).read(f"{name}-{VERSION}.dist-info/METADATA").decode()
        assert f"Name: {name.replace('_', '-')}\n" in meta and "extra ==" not in meta


def test_lmcache_wheel_installs_as_documented_and_lmcache_loads_it(wheels, tmp_path, node, auth_key, licence):
    import lmcache_harness as H

    venv = tmp_path / "venv"
    py = fresh_venv(venv)
    said = pip_install(py, "lmcache", wheels["memkv_lmcache"])  # the document's line
    assert re.search(rf"^Successfully installed .*\bmemkv-lmcache-{re.escape(VERSION)}\b", said, re.M), said
    extra = {"memkv.servers": node.address, "memkv.auth_key": auth_key, "memkv.license": licence[0],
             "memkv.license_pubkey": licence[1], "memkv.transport": "tcp"}
    yaml_path = H.write_config(str(tmp_path / "lmcache.yaml"), extra=extra)
    out = child(py, "lmcache_harness.py", "roundtrip", yaml_path, "3", str(4 * H.CHUNK))
    assert out["backend_loaded"], out
    assert out["retrieved"] == 4 * H.CHUNK and out["bit_exact"], out
    assert set(out["files"]) == {"nixl_memkv", "nixl_memkv._client", "memkv_lmcache.backend"}
    assert_from_venv(out["files"], venv)


def test_sglang_wheel_installs_as_documented_and_sglang_loads_it(wheels, tmp_path, node, auth_key, licence):
    venv = tmp_path / "venv"
    py = fresh_venv(venv)
    said = pip_install(py, wheels["memkv_sglang"])  # the document's line
    assert re.search(rf"^Successfully installed .*\bmemkv-sglang-{re.escape(VERSION)}\b", said, re.M), said
    extra = {"backend_name": "memkv", "module_path": "memkv_sglang.backend", "class_name": "MemKVHiCacheStorage",
             "servers": node.address, "auth_key": auth_key, "license": licence[0], "license_pubkey": licence[1],
             "transport": "tcp", "interface_v1": 1}
    out = child(py, "sglang_harness.py", "roundtrip", json.dumps({"extra": extra, "seed": 5, "n_pages": 8}))
    assert out["backend"] == "memkv_sglang.backend.MemKVHiCacheStorage", out
    assert out["backed"] == out["hit"] == out["done"] == 8 * 4 and out["bit_exact"], out
    assert_from_venv(out["files"], venv)
