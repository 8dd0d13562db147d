#!/usr/bin/env bash
# Installs MemKV and runs the main job on an embedded default (`memkv demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check .
cd /tmp && exec python3 -m nixl_memkv demo "$@"
