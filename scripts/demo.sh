#!/usr/bin/env bash
# Installs MemKV and runs the main job on an embedded default (`memkv demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/build-deps.sh
. scripts/lib/build-deps.sh
ensure_build_debs
# The CPU build of torch first: NIXL depends on torch, and a bare requirement
# would pull a multi-GB CUDA build.
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check ".[nixl]"
cd /tmp && exec python3 -m nixl_memkv demo "$@"
