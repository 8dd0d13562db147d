#!/usr/bin/env bash
# Installs MemKV and runs the main job on an embedded default (`memkv demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/build-deps.sh
. scripts/lib/build-deps.sh
install_memkv nixl  # NIXL depends on torch: the CPU build goes first
report_conflicts
cd /tmp && exec python3 -m nixl_memkv demo "$@"
