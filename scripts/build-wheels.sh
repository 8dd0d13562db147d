#!/usr/bin/env bash
# Builds MemKV's wheels into dist/ (or the directory given):
#   nixl_memkv-<ver>-<tags>.whl     the core (what `pip install .` installs: nixl_memkv with
#                                   both engine plugins)
#   memkv_lmcache-<ver>-<tags>.whl  the LMCache plugin with the core it runs on
#   memkv_sglang-<ver>-<tags>.whl   the sglang plugin with the core it runs on
# The core is compiled once (scikit-build-core, in the build directory pyproject.toml
# names, so a rerun or an earlier `pip install .` makes this incremental); the plugin
# wheels are repackaged from it (scripts/lib/plugin_wheels.py), so all three carry the
# same native modules. Needs, in the Python it runs with (PYTHON, default python3):
# scikit-build-core, cython, wheel (the build is not isolated, to reuse the build tree).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${1:-dist}
mkdir -p "$out"
if ! "$py" -c 'import scikit_build_core, Cython, wheel' 2>/dev/null; then
  echo "build-wheels.sh: $py lacks scikit-build-core, cython or wheel:" \
    "$py -m pip install 'scikit-build-core>=0.10' 'cython>=3.0' wheel" >&2
  exit 1
fi
version=$("$py" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
rm -f "$out"/nixl_memkv-"$version"-*.whl "$out"/memkv_lmcache-"$version"-*.whl "$out"/memkv_sglang-"$version"-*.whl
echo "building the core wheel (C++ and Cython: minutes the first time, seconds when the build tree is current)"
"$py" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$out" .
core=$(ls "$out"/nixl_memkv-"$version"-*.whl)
echo "$core"
"$py" scripts/lib/plugin_wheels.py "$core" "$out"
