#!/usr/bin/env bash
# Installs MemKV and runs the main job on an embedded default (`memkv demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/build-deps.sh
. scripts/lib/build-deps.sh
ensure_build_debs
# The CPU build of torch first: NIXL depends on torch, and a bare requirement
# would pull a multi-GB CUDA build.
pip_install "torch==2.13.0"
pip_install ".[nixl]"
cd /tmp && exec python3 -m nixl_memkv demo "$@"
