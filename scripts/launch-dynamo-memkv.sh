#!/usr/bin/env bash
# Launch NVIDIA Dynamo (vLLM runtime) with KVBM offloading to a MemKV cluster
# through the MEMKV NIXL plugin.
#
# The container gets:
#   * libplugin_MEMKV.so bind-mounted where NIXL scans for plugins
#     (/opt/nvidia/nvda_nixl/lib/plugins/libplugin_MEMKV.so);
#   * DYN_KVBM_NIXL_BACKEND=MEMKV and DYN_KVBM_REMOTE_STORAGE_TYPE=memkv;
#   * the MEMKV_* connection settings and the licence file;
#   * libucx0, which the prebuilt NIXL stack needs and vllm images lack;
#   * optionally a rebuilt KVBM (KVBM_CORE_SO) and its Python overlay (KVBM_PY_SRC).
#
# Usage: MEMKV_SERVERS=host-a:9900,host-b:9900 MEMKV_AUTH_KEY=<64 hex> MEMKV_LICENSE=/path/minio.license \
#          scripts/launch-dynamo-memkv.sh --model-dir Llama-3.1-8B [--dry-run] [options]
# Run with --help for every option.
set -euo pipefail

usage() {
  cat <<'EOF'
launch-dynamo-memkv.sh: run Dynamo + KVBM with MemKV as the remote KV tier.

Required environment:
  MEMKV_SERVERS           host:port,... of the MemKV nodes
  MEMKV_AUTH_KEY          the cluster's 64-hex auth key (passed through, never printed)
  MEMKV_LICENSE           path of the licence file on this host

Optional environment (passed to the container when set):
  MEMKV_TRANSPORT (auto), MEMKV_RDMA_DEVICES, MEMKV_NUM_CONNECTIONS (4),
  MEMKV_STAGING_SIZE_MB (256), MEMKV_STAGING_SLOT_MB (16), MEMKV_LICENSE_PUBKEY,
  DYN_KVBM_CPU_CACHE_GB (60), CUDA_VISIBLE_DEVICES (0,1,2,3,4,5,6,7),
  MEMKV_PLUGIN_SO         plugin on this host (default: $(memkv plugin-dir)/libplugin_MEMKV.so)
  KVBM_CORE_SO            a rebuilt KVBM cdylib, installed over the image's copy at start-up
  KVBM_PY_SRC             a KVBM Python overlay directory, put first on PYTHONPATH

Options:
  --model-dir DIR         model directory under --models-root (required)
  --models-root DIR       host directory with the models (default /path/to/models)
  --image IMAGE           runtime image (default nvcr.io/nvidia/ai-dynamo/vllm-runtime:latest)
  --tp N                  tensor-parallel size (default 8)
  --port PORT             HTTP port (default 8810)
  --max-model-len N       maximum sequence length (default 32768)
  --name NAME             container name (default dynamo-memkv-vllm)
  --dry-run               print the docker command instead of running it
  -h, --help              this help
EOF
}

die() {
  echo "launch-dynamo-memkv.sh: $*" >&2
  exit 2
}

model_dir=""
models_root="/path/to/models"
image="nvcr.io/nvidia/ai-dynamo/vllm-runtime:latest"
tp=8
port=8810
max_model_len=32768
name="dynamo-memkv-vllm"
dry_run=0

while [ $# -gt 0 ]; do
  case "$1" in
    --model-dir) model_dir="${2:?--model-dir needs a value}"; shift 2 ;;
    --models-root) models_root="${2:?--models-root needs a value}"; shift 2 ;;
    --image) image="${2:?--image needs a value}"; shift 2 ;;
    --tp) tp="${2:?--tp needs a value}"; shift 2 ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --max-model-len) max_model_len="${2:?--max-model-len needs a value}"; shift 2 ;;
    --name) name="${2:?--name needs a value}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[ -n "$model_dir" ] || die "--model-dir is required (a directory under --models-root)"
[ -n "${MEMKV_SERVERS:-}" ] || die "MEMKV_SERVERS is not set (host:port,... of the MemKV nodes)"
[ -n "${MEMKV_AUTH_KEY:-}" ] || die "MEMKV_AUTH_KEY is not set (64 hex characters; generate one with 'memkv keygen')"
[[ "$MEMKV_AUTH_KEY" =~ ^[0-9a-fA-F]{64}$ ]] || die "MEMKV_AUTH_KEY must be 64 hex characters (32 bytes)"
[ -n "${MEMKV_LICENSE:-}" ] || die "MEMKV_LICENSE is not set (path of the licence file)"
[ -f "$MEMKV_LICENSE" ] || die "MEMKV_LICENSE=$MEMKV_LICENSE: no such file"
for n in "$tp" "$port" "$max_model_len"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "'$n' is not a number (--tp, --port and --max-model-len take integers)"
done

plugin="${MEMKV_PLUGIN_SO:-}"
if [ -z "$plugin" ]; then
  command -v memkv >/dev/null 2>&1 || die "memkv is not on PATH: set MEMKV_PLUGIN_SO to libplugin_MEMKV.so"
  plugin="$(memkv plugin-dir)/libplugin_MEMKV.so"
fi
[ -f "$plugin" ] || die "NIXL plugin $plugin not found (set MEMKV_PLUGIN_SO)"

transport="${MEMKV_TRANSPORT:-auto}"
cmd=(docker run -d --name "$name"
  --runtime=nvidia --net=host --shm-size=64g --ipc=host)
if [ "$transport" != "tcp" ]; then
  # The RDMA fast path needs the HCAs and pinned memory inside the container.
  cmd+=(--device=/dev/infiniband --cap-add=IPC_LOCK --ulimit memlock=-1)
fi
cmd+=(-e "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}"
  -e DYN_KVBM_NIXL_BACKEND=MEMKV
  -e DYN_KVBM_REMOTE_STORAGE_TYPE=memkv
  -e "DYN_KVBM_CPU_CACHE_GB=${DYN_KVBM_CPU_CACHE_GB:-60}"
  -e "MEMKV_SERVERS=$MEMKV_SERVERS"
  -e MEMKV_AUTH_KEY
  -e "MEMKV_TRANSPORT=$transport"
  -e "MEMKV_NUM_CONNECTIONS=${MEMKV_NUM_CONNECTIONS:-4}"
  -e "MEMKV_STAGING_SIZE_MB=${MEMKV_STAGING_SIZE_MB:-256}"
  -e "MEMKV_STAGING_SLOT_MB=${MEMKV_STAGING_SLOT_MB:-16}"
  -e MEMKV_LICENSE=/minio.license)
[ -n "${MEMKV_RDMA_DEVICES:-}" ] && cmd+=(-e "MEMKV_RDMA_DEVICES=$MEMKV_RDMA_DEVICES")
[ -n "${MEMKV_LICENSE_PUBKEY:-}" ] && cmd+=(-e "MEMKV_LICENSE_PUBKEY=$MEMKV_LICENSE_PUBKEY")
cmd+=(-v "$models_root:/inference-models:ro"
  -v "$MEMKV_LICENSE:/minio.license:ro"
  -v "$plugin:/opt/nvidia/nvda_nixl/lib/plugins/libplugin_MEMKV.so:ro")

# Optional KVBM overrides: mounted beside the image's copy and installed over
# it at start-up (the image's install path differs between tags).
setup="apt-get update && apt-get install -y --no-install-recommends libucx0"
if [ -n "${KVBM_CORE_SO:-}" ]; then
  [ -f "$KVBM_CORE_SO" ] || die "KVBM_CORE_SO=$KVBM_CORE_SO: no such file"
  cmd+=(-v "$KVBM_CORE_SO:/opt/memkv/kvbm/lib_core.so:ro")
  setup="$setup && kvbm_dir=\$(python3 -c 'import kvbm, os; print(os.path.dirname(kvbm.__file__))') && for so in \"\$kvbm_dir\"/_core*.so; do cp /opt/memkv/kvbm/lib_core.so \"\$so\"; done"
fi
if [ -n "${KVBM_PY_SRC:-}" ]; then
  [ -d "$KVBM_PY_SRC" ] || die "KVBM_PY_SRC=$KVBM_PY_SRC: no such directory"
  cmd+=(-v "$KVBM_PY_SRC:/opt/memkv/kvbm-python-overlay:ro" -e PYTHONPATH=/opt/memkv/kvbm-python-overlay)
fi
serve="dynamo serve /inference-models/$model_dir --host 0.0.0.0 --port $port --tensor-parallel-size $tp"
serve="$serve --enable-prefix-caching --max-model-len $max_model_len --gpu-memory-utilization 0.9"
cmd+=("$image" bash -lc "$setup && $serve")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
command -v docker >/dev/null 2>&1 || die "docker is not installed"
exec "${cmd[@]}"
