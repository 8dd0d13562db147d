# shellcheck shell=bash
# Sourced by scripts/demo.sh, demo-vllm.sh and test.sh: the Debian packages the
# native build and tests need (OpenSSL headers; the verbs header for the RDMA
# transport; iproute2 for the netns cluster test). Installed when missing
# and we may (root with apt-get); otherwise the build says what it lacks
# (without the verbs header it builds the TCP transport only).
ensure_build_debs() {
  local need=() p
  for p in libssl-dev libibverbs-dev iproute2; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing build packages: ${need[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}"; } >/dev/null 2>&1 || echo "warning: apt-get install ${need[*]} failed" >&2
  else
    echo "note: ${need[*]} not installed (needs root); the build may lack them (RDMA needs libibverbs-dev)" >&2
  fi
}

# pip, quiet, under the project's constraints (the CPU torch, and the
# versions LMCache, sglang and vLLM agree on).
pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check -c scripts/requirements/constraints.txt "$@"
}

# The build packages, the CPU build of torch, then MemKV with the extras
# named ("test", "nixl", ...). Torch goes first: a bare `torch` requirement
# would pull a multi-GB CUDA build.
install_memkv() {
  ensure_build_debs
  pip_install "torch==2.13.0"
  pip_install ".[$1]"
}
