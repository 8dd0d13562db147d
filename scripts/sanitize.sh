#!/usr/bin/env bash
# Builds the native core, client, node and NIXL plugin under sanitizers and
# runs the node, client and NIXL tests against those builds.
#
#   address: AddressSanitizer + UndefinedBehaviorSanitizer (any UB aborts)
#   thread:  ThreadSanitizer
#
# Each build goes into its own venv (build/sanitize/KIND/venv, seeing this
# machine's packages, so nothing is downloaded) and leaves the normal install
# alone. Nodes the tests start run the same build (they inherit LD_PRELOAD).
# Reports are written under build/sanitize/KIND/reports; the last line says
# how many there were, and the exit status is non-zero if there were any or
# a test failed.
#
# usage: scripts/sanitize.sh [address] [thread] [-- PYTEST ARGS...]
#   default: both kinds, over the test files in $TESTS below.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

kinds=()
while [ $# -gt 0 ]; do
  case "$1" in
    address|thread) kinds+=("$1"); shift ;;
    --) shift; break ;;
    *) echo "sanitize.sh: unknown argument '$1' (usage: sanitize.sh [address] [thread] [-- PYTEST ARGS])" >&2
       exit 2 ;;
  esac
done
[ ${#kinds[@]} -gt 0 ] || kinds=(address thread)
if [ $# -gt 0 ]; then
  tests=("$@")
else
  tests=(tests/test_data_path.py tests/test_security.py tests/test_failures.py tests/test_durability.py
         tests/test_tenants.py tests/test_nixl_plugin.py tests/test_s3_door.py)
fi

export LMCACHE_TRACK_USAGE=false VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1
total=0 failed=0
for kind in "${kinds[@]}"; do
  dir=$root/build/sanitize/$kind
  reports=$dir/reports
  rm -rf "$reports"
  mkdir -p "$reports"
  if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv --system-site-packages "$dir/venv"
  fi
  echo "sanitize: building with MEMKV_SANITIZE=$kind (a few minutes)"
  "$dir/venv/bin/python" -m pip install --no-deps --no-build-isolation -q \
    -C cmake.define.MEMKV_SANITIZE="$kind" -C build-dir="$dir/cmake" -C cmake.build-type=RelWithDebInfo . \
    >"$dir/build.log" 2>&1 || { echo "sanitize: build failed, see $dir/build.log" >&2; exit 1; }
  # libstdc++ is preloaded too: the runtime's C++ interceptors (__cxa_throw)
  # bind when it starts, and Python loads libstdc++ only later.
  cxx=$(gcc -print-file-name=libstdc++.so)
  case $kind in
    address)
      runtime="$(gcc -print-file-name=libasan.so) $cxx"
      # Python's own allocations are never freed at exit: leak reports would be noise.
      export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$reports/asan:strict_string_checks=1"
      export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan"
      unset TSAN_OPTIONS
      # NIXL's stock OBJ plugin bundles aws-sdk-cpp, which frees with free()
      # what it took with operator new: a report in third-party code that
      # would abort the run, so the two tests driving stock OBJ against our S3
      # door are left out here.
      skip=(--deselect tests/test_s3_door.py::test_stock_nixl_obj_backend_and_the_memkv_plugin_share_blocks
            --deselect tests/test_s3_door.py::test_bench_s3_short_run) ;;
    thread)
      runtime="$(gcc -print-file-name=libtsan.so) $cxx"
      export TSAN_OPTIONS="log_path=$reports/tsan:second_deadlock_stack=1:report_signal_unsafe=0:suppressions=$root/scripts/tsan.supp"
      unset ASAN_OPTIONS UBSAN_OPTIONS
      skip=() ;;
  esac
  echo "sanitize: $kind: ${tests[*]}"
  rc=0
  # TSan needs the low-entropy address layout some kernels no longer give by default.
  launcher=()
  [ "$kind" = thread ] && command -v setarch >/dev/null && launcher=(setarch "$(uname -m)" -R)
  LD_PRELOAD=$runtime ${launcher[@]+"${launcher[@]}"} "$dir/venv/bin/python" -P -m pytest -q -p no:cacheprovider --color=no \
    --timeout 900 ${skip[@]+"${skip[@]}"} "${tests[@]}" || rc=$?
  n=$(find "$reports" -type f | wc -l)
  for f in $(find "$reports" -type f | head -5); do
    echo "---- $f"
    head -40 "$f"
  done
  echo "sanitize: $kind: pytest exit $rc, $n report(s) in $reports"
  total=$((total + n))
  [ "$rc" -eq 0 ] || failed=1
done
echo "sanitize summary: ${kinds[*]}: $total report(s), tests $([ $failed -eq 0 ] && echo passed || echo FAILED)"
[ "$total" -eq 0 ] && [ "$failed" -eq 0 ]
