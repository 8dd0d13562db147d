#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of every parser the network or the data
# directory can feed: the handshake, frames and seals, each op's body on a
# real node, multi-part bookkeeping, the S3 door's HTTP and SigV4, shard
# records and the index snapshot (fuzz/*.cpp, ASan + UBSan), and with atheris
# the LMCache chunk header and the admin HTTP port (fuzz/python/*.py).
#
# Installs clang-14 and libclang-rt-14-dev when missing (Debian, as root),
# builds into build/fuzz/ (-O1; --ci: build/fuzz-ci/, -O0, faster to build),
# runs each target for --time seconds from its seed corpus (fuzz/corpus/T/,
# grown in build/fuzz*/corpus/T/), and prints per target the executions,
# exec/s, coverage (libFuzzer's cov: and ft:), crashes, hangs and sanitizer
# reports. Exit status 1 if any target crashed, hung (-timeout), leaked, ran
# out of memory or had a sanitizer report; 2 for a usage or build error.
#
# usage: scripts/fuzz.sh [--time SECONDS] [--targets a,b,...] [--ci] [--seeds]
#                        [--corpus-from DIR] [--python PYTHON] [--hang-timeout S]
#   --time N        seconds per target (default 60)
#   --targets LIST  a subset (names: fuzz/*.cpp and fuzz/python/*.py without fuzz_)
#   --ci            the short CI build (tests/test_fuzz.py)
#   --seeds         rewrite fuzz/corpus/ with fuzz/make_seeds first
#   --corpus-from D seed every target from D/T/ instead of fuzz/corpus/T/
#   --python P      the interpreter with atheris for the Python targets (default python3)
#   --hang-timeout S  one input running S seconds is a hang (default 10)
#   (fuzz/fuzz_canary.cpp fails on purpose: tests/test_fuzz.py runs it by name)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

time_s=60 hang_s=10 ci=0 reseed=0 targets="" corpus_from="$root/fuzz/corpus" python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --time) time_s=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --ci) ci=1; shift ;;
    --seeds) reseed=1; shift ;;
    --corpus-from) corpus_from=$(cd "$2" && pwd); shift 2 ;;
    --python) python=$2; shift 2 ;;
    --hang-timeout) hang_s=$2; shift 2 ;;
    *) echo "fuzz.sh: unknown argument '$1' (see the usage at the top of scripts/fuzz.sh)" >&2; exit 2 ;;
  esac
done
for n in "$time_s" "$hang_s"; do
  case "$n" in '' | *[!0-9]*) echo "fuzz.sh: --time and --hang-timeout want whole seconds, not '$n'" >&2; exit 2 ;; esac
done

native=(handshake frame seal node_ops parts http sigv4 shard_record snapshot)
py=(chunk_header admin)
if [ -z "$targets" ]; then
  selected=("${native[@]}" "${py[@]}")
else
  IFS=, read -r -a selected <<<"$targets"
fi
want_native=0
for t in "${selected[@]}"; do
  if [ -f "fuzz/fuzz_$t.cpp" ]; then want_native=1
  elif [ ! -f "fuzz/python/fuzz_$t.py" ]; then
    echo "fuzz.sh: no target '$t' (fuzz/fuzz_$t.cpp or fuzz/python/fuzz_$t.py)" >&2; exit 2
  fi
done

# clang-14 with its sanitizer and libFuzzer runtimes (Debian bookworm).
ensure_clang() {
  local need=()
  command -v clang++-14 >/dev/null 2>&1 || need+=(clang-14)
  dpkg -s libclang-rt-14-dev >/dev/null 2>&1 || need+=(libclang-rt-14-dev)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "fuzz.sh: needs ${need[*]} (as root: apt-get install -y ${need[*]})" >&2
    exit 2
  fi
  echo "fuzz.sh: installing ${need[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
      { echo "fuzz.sh: apt-get install ${need[*]} failed" >&2; exit 2; }
  fi
}

if [ "$ci" = 1 ]; then build=$root/build/fuzz-ci opt=-O0; else build=$root/build/fuzz opt=-O1; fi
if [ "$want_native" = 1 ] || [ "$reseed" = 1 ]; then
  ensure_clang
  t0=$SECONDS
  CXX=clang++-14 cmake -S fuzz -B "$build" -DCMAKE_BUILD_TYPE= -DMEMKV_FUZZ_OPT="$opt" >"$build.cmake.log" 2>&1 ||
    { cat "$build.cmake.log" >&2; echo "fuzz.sh: cmake failed" >&2; exit 2; }
  nice cmake --build "$build" -j "$(nproc)" >"$build.build.log" 2>&1 ||
    { tail -40 "$build.build.log" >&2; echo "fuzz.sh: build failed (log: $build.build.log)" >&2; exit 2; }
  echo "fuzz.sh: built in $((SECONDS - t0)) s ($build)"
fi
if [ "$reseed" = 1 ]; then
  rm -rf fuzz/corpus
  "$build/make_seeds" fuzz/corpus
  echo "fuzz.sh: wrote the seed corpus (fuzz/corpus/)"
fi

# The record and snapshot targets open a store per input: tmpfs keeps their
# syncs and directory scans cheap, and nothing of it outlives the run.
scratch=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")/memkv-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# -timeout: one input running this long is a hang. -malloc_limit_mb: a single
# allocation this large (a length the input declared, allocated before it was
# checked) is a failure, as is a process over -rss_limit_mb.
common=(-timeout="$hang_s" -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 -max_total_time="$time_s")
failures=0 total_execs=0
printf '%-13s %10s %8s %7s %7s %7s %6s %9s\n' target execs exec/s cov ft crashes hangs sanitizer
for t in "${selected[@]}"; do
  corpus=$build/corpus/$t artifacts=$build/artifacts/$t log=$build/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$build/logs"
  rm -f "$artifacts"/*
  [ -d "$corpus_from/$t" ] && cp -n "$corpus_from/$t"/* "$corpus/" 2>/dev/null || true
  if [ -f "fuzz/fuzz_$t.cpp" ]; then
    cmd=("$build/fuzz_$t")
    extra=(-max_len=12288)  # a shard record is a 4 KiB header and its value
    # The node's connection threads end after the client's input does, with
    # OpenSSL's per-thread state freed at thread exit: a per-input leak check
    # sees that in flight. Leaks there are caught at exit, after Node::stop.
    [ "$t" = node_ops ] && extra+=(-detect_leaks=0)
    # ...and OpenSSL's per-thread state of the node's long-lived workers is
    # not a leak (fuzz/lsan-node.supp says why).
    lsan=""
    [ "$t" = node_ops ] && lsan="suppressions=$PWD/fuzz/lsan-node.supp"
  else
    cmd=("$python" "fuzz/python/fuzz_$t.py")
    extra=(-max_len=4096)
    lsan=""
  fi
  # A hard stop well past the run time: a target that wedges is a hang too.
  set +e
  TMPDIR=$scratch LSAN_OPTIONS=$lsan ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    timeout -k 10 $((time_s + 120)) nice "${cmd[@]}" "${common[@]}" "${extra[@]}" -artifact_prefix="$artifacts/" \
    "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | grep -E 'cov:|ft:' | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  crashes=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'oom-*' -o -name 'death-*' \) | wc -l)
  hangs=$(find "$artifacts" -type f -name 'timeout-*' | wc -l)
  reports=$(grep -cE 'ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|runtime error:|Traceback' "$log" || true)
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then hangs=$((hangs + 1)); fi
  printf '%-13s %10s %8s %7s %7s %7s %6s %9s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:--}" "${ft:--}" \
    "$crashes" "$hangs" "$reports"
  total_execs=$((total_execs + ${execs:-0}))
  if [ "$rc" != 0 ] || [ "$crashes" != 0 ] || [ "$hangs" != 0 ] || [ "$reports" != 0 ] || [ -z "$execs" ]; then
    failures=$((failures + 1))
    echo "  FAILED (exit $rc): log $log, inputs in $artifacts/" >&2
    grep -E 'ERROR:|runtime error:|SUMMARY:|Error|abort|^    #[0-9] ' "$log" | head -20 | sed 's/^/  | /' >&2
  fi
done
echo "fuzz.sh: ${#selected[@]} targets, ${time_s} s each, $total_execs executions, $failures failed"
[ "$failures" = 0 ]
