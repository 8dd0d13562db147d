"""Writes the per-engine wheels (memkv-lmcache, memkv-sglang) from the core
wheel (nixl-memkv) that scripts/build-wheels.sh has just built.

Each plugin wheel carries its plugin package and the whole `nixl_memkv`
package, native modules included, byte for byte as in the core wheel: the
product documents install a plugin wheel with one `pip install` and no index
for our core, so a plugin wheel cannot depend on `nixl-memkv`. Its metadata
keeps the core's run-time requirements (not its extras) and its tags.
Unpacking and packing (RECORD, file name from WHEEL's tags) is the `wheel`
tool's.

    python scripts/lib/plugin_wheels.py CORE_WHEEL OUT_DIR
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

# distribution name -> (its package, the other engine packages it leaves out, summary)
PLUGINS = {
    "memkv-lmcache": ("memkv_lmcache", ("memkv_sglang",),
                      "MemKV's LMCache storage plugin (memkv_lmcache.backend.MemKVStorageBackend), "
                      "with the MemKV client core (nixl_memkv) it runs on"),
    "memkv-sglang": ("memkv_sglang", ("memkv_lmcache",),
                     "MemKV's sglang HiCache storage backend (memkv_sglang.backend.MemKVHiCacheStorage), "
                     "with the MemKV client core (nixl_memkv) it runs on"),
}
DROP_HEADERS = ("name", "summary", "provides-extra", "description-content-type")


def plugin_metadata(core: str, name: str, summary: str) -> str:
    """The core's METADATA headers with this distribution's name and summary,
    without the core's extras and long description."""
    head = core.split("\n\n", 1)[0]
    lines = [f"Name: {name}", f"Summary: {summary}"]
    for line in head.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in DROP_HEADERS or (key == "requires-dist" and "extra ==" in line):
            continue
        lines.append(line)
    # Metadata-Version first, as readers expect.
    lines.sort(key=lambda ln: not ln.startswith("Metadata-Version:"))
    return "\n".join(lines) + "\n\n" + summary + ".\n"


def wheel_tool(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "wheel", *args], check=True, stdout=subprocess.DEVNULL)


def build(core_wheel: str, out_dir: str) -> list[str]:
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        wheel_tool("unpack", "-d", tmp, core_wheel)
        (core_root,) = os.listdir(tmp)  # nixl_memkv-<version>
        version = core_root.split("-", 1)[1]
        core_dir = os.path.join(tmp, core_root)
        core_info = os.path.join(core_dir, f"nixl_memkv-{version}.dist-info")
        with open(os.path.join(core_info, "METADATA")) as f:
            core_meta = f.read()
        for name, (package, others, summary) in PLUGINS.items():
            stem = f"{name.replace('-', '_')}-{version}"
            root = os.path.join(tmp, "out", stem)
            shutil.copytree(core_dir, root, ignore=shutil.ignore_patterns("__pycache__"))
            for other in others:
                shutil.rmtree(os.path.join(root, other))
            assert os.path.isdir(os.path.join(root, package)), f"{package} is missing from {core_wheel}"
            info = os.path.join(root, f"{stem}.dist-info")
            os.rename(os.path.join(root, f"nixl_memkv-{version}.dist-info"), info)
            os.remove(os.path.join(info, "RECORD"))  # `wheel pack` writes it anew
            with open(os.path.join(info, "METADATA"), "w") as f:
                f.write(plugin_metadata(core_meta, name, summary))
            before = set(os.listdir(out_dir))
            wheel_tool("pack", "-d", out_dir, root)
            made += sorted(set(os.listdir(out_dir)) - before) or [n for n in os.listdir(out_dir) if n.startswith(stem)]
    return made


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for w in build(sys.argv[1], sys.argv[2]):
        print(os.path.join(sys.argv[2], w))
