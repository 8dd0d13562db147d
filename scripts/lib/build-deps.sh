# shellcheck shell=bash
# Sourced by scripts/demo.sh, demo-vllm.sh and test.sh: the Debian packages the
# native build and tests need (OpenSSL headers; the verbs header for the RDMA
# transport; iproute2 for the netns cluster test). Installed when missing
# and we may (root with apt-get); otherwise the build says what it lacks
# (without the verbs header it builds the TCP transport only).
ensure_build_debs() {
  ensure_debs libssl-dev libibverbs-dev iproute2 || echo "note: the build may lack them (RDMA needs libibverbs-dev)" >&2
}

# Debian packages by name, installed when missing and we may; fails when
# they are missing and we may not.
ensure_debs() {
  local need=() p
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "Debian packages: ${need[*]} (apt-get, about a minute)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}"; } >/dev/null 2>&1 || echo "warning: apt-get install ${need[*]} failed" >&2
  else
    echo "note: ${need[*]} not installed (needs root)" >&2
    return 1
  fi
}

# pip runs quietly, so each install says first what it installs and
# roughly how long that takes on a fresh machine (seconds when cached).
step() {
  echo "installing $*"
}

# pip, quiet, under the project's constraints (the CPU torch, and the
# versions LMCache, sglang and vLLM agree on). pip's own conflict report is
# off: sglang is installed without its CUDA pins on purpose, and pip would
# print every one of them as an ERROR after each later install;
# report_conflicts lists the others once, at the end.
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
    -c scripts/requirements/constraints.txt "$@"
}

# What `pip check` finds besides the requirements left out on purpose:
# sglang's CUDA pins and the torchaudio/torchcodec that vllm-cpu.sh removes.
report_conflicts() {
  local all other
  all=$(python3 -m pip check 2>/dev/null || true)
  other=$(grep -v -e '^sglang ' -e '^vllm-cpu .* requires torch\(audio\|codec\),' -e '^No broken' <<<"$all" || true)
  if grep -q '^sglang ' <<<"$all"; then
    echo "note: sglang's CUDA requirements are left out on purpose (its HiCache code runs without them;" \
      "\`pip check\` lists them)"
  fi
  if [ -n "$other" ]; then
    echo "warning: pip check reports:" >&2
    echo "$other" >&2
  fi
}

# The build packages, the CPU build of torch, then MemKV with the extras
# named ("test", "nixl", ...). Torch goes first: a bare `torch` requirement
# would pull a multi-GB CUDA build.
install_memkv() {
  ensure_build_debs
  step "torch 2.13.0, the CPU build (about 200 MB; 1 minute)"
  pip_install "torch==2.13.0"
  # The wheels are built once (scripts/build-wheels.sh: the core, and the
  # LMCache and sglang wheels the engines' documents install), and the core
  # wheel is what gets installed: the same files `pip install .` installs.
  step "MemKV's wheels (scripts/build-wheels.sh: its C++ core and Cython bindings, 2-4 minutes)," \
    "then the core with its [$1] extra"
  pip_install "scikit-build-core>=0.10" "cython>=3.0" "wheel>=0.40"
  PYTHON=python3 bash scripts/build-wheels.sh dist
  local core
  core=$(ls dist/nixl_memkv-*.whl)
  # The version stays 0.1.0 from commit to commit, so pip would call an earlier
  # install of it "already satisfied" and keep its stale files: replace them
  # first, then add the extra's requirements.
  pip_install --force-reinstall --no-deps "$core"
  pip_install "${core}[$1]"
}
