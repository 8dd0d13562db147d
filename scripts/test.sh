#!/usr/bin/env bash
# Installs MemKV with everything its tests need, then runs the test suite.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# The CPU build of torch first: a bare `torch` requirement would pull a
# multi-GB CUDA build (torch tensors are one of the buffer types we test).
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check ".[test]"

export LMCACHE_TRACK_USAGE=false  # no library telemetry from test runs
# -P: import the installed package, not the source tree in the working directory.
exec python3 -P -m pytest -q -p no:cacheprovider "$@"
