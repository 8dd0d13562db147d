#!/usr/bin/env bash
# Runs a command where real RDMA verbs work, on a host without an RDMA NIC.
#
# It boots a throw-away qemu guest (software emulation: KVM hangs on some
# hosts) with Debian's stock kernel, whose soft-RoCE driver (rdma_rxe) gives
# real verbs: RC queue pairs, memory registration, RDMA READ/WRITE. The guest
# sees this host's root file system read-only (so the same Python, packages
# and build outputs) and the current directory read-write, and runs COMMAND
# there, in a chroot. Inside:
#   - rxe0 is a soft-RoCE device on a dummy netdev `memkv0` holding
#     10.77.0.1/24 and 10.77.0.2/24 (two "hosts"), and rxe1 a second one
#     (a second rail) on `memkv1` with 10.77.1.1/24; no other network exists;
#   - /tmp, /run and /dev/shm are fresh tmpfs; RDMA_VM=1 is set.
#
# usage: scripts/rdma-vm.sh [--cpus N] [--mem MiB] [--timeout S] [--console] -- COMMAND [ARG...]
#        scripts/rdma-vm.sh --prepare
#   --console: also print the guest's whole console (boot, module loading) at the end
#   --prepare: only install the packages and build the boot files (no guest), so a
#              later run starts at once and runs no apt-get of its own
# exit status: COMMAND's; 124 on timeout; 125 when the guest cannot start.
#
# The first run installs Debian packages (qemu, rdma-core, perftest, ...) and
# builds a kernel + initramfs under $MEMKV_RDMA_VM_CACHE
# (default ~/.cache/memkv-rdma-vm), about a minute; later boots take ~10 s.
set -euo pipefail

cpus=2 mem=4096 timeout_s=1800 show_console=0 prepare_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) cpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --console) show_console=1; shift ;;
    --prepare) prepare_only=1; shift ;;
    --) shift; break ;;
    *) echo "rdma-vm: unknown option $1 (usage: rdma-vm.sh [--cpus N] [--mem MiB] [--timeout S] -- COMMAND...)" >&2
       exit 125 ;;
  esac
done
[ $# -gt 0 ] || [ "$prepare_only" = 1 ] || { echo "rdma-vm: give a command after --" >&2; exit 125; }

cache_root=${MEMKV_RDMA_VM_CACHE:-$HOME/.cache/memkv-rdma-vm}
# Boot files are kept per version of this script: a changed init or module
# list builds them again.
cache="$cache_root/$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
mkdir -p "$cache"
say() { echo "rdma-vm: $*" >&2; }

# ---- host packages -------------------------------------------------------------------------
packages=(qemu-system-x86 rdma-core ibverbs-providers ibverbs-utils libibverbs-dev perftest python3-pyverbs iproute2
          busybox-static cpio kmod xz-utils zstd)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (once, about a minute)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           "${missing[@]}"; } >"$cache/apt.log" 2>&1; then
    say "apt-get install failed; see $cache/apt.log"
    exit 125
  fi
fi

# ---- kernel and initramfs (once) -----------------------------------------------------------
# Modules the guest needs; their dependencies are added from each module's
# own `depends` field, loaded dependencies first. crc32_generic is named
# because rxe asks the crypto API for "crc32" and there is no modprobe to
# load it on demand.
wanted=(crc32_generic virtio_pci 9pnet_virtio 9p dummy rdma_rxe ib_uverbs rdma_ucm)
build_boot_files() {
  local work kpkg kroot kver order
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$kpkg" ] || { say "cannot resolve linux-image-amd64 (apt-get update?)"; return 1; }
  (cd "$work" && apt-get download "$kpkg" >/dev/null 2>&1) || { say "cannot download $kpkg"; return 1; }
  dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
  kroot="$work/kernel/lib/modules"
  kver=$(ls "$kroot")
  mkdir -p "$work/initrd"/{bin,modules,proc,sys,dev,root}
  declare -A path_of=()
  while IFS= read -r f; do
    local name; name=$(basename "$f"); name=${name%%.ko*}
    path_of[${name//-/_}]=$f
  done < <(find "$kroot/$kver" -name '*.ko*')
  declare -A seen=()
  order=()
  add_module() {  # depth-first: dependencies before the module
    local m=${1//-/_} f plain dep
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    f=${path_of[$m]:-}
    [ -n "$f" ] || { say "module $m is not in $kpkg"; return 1; }
    plain="$work/initrd/modules/$m.ko"
    case "$f" in
      *.xz) xz -dc "$f" >"$plain" ;;
      *.zst) zstd -qdc "$f" >"$plain" ;;
      *) cp "$f" "$plain" ;;
    esac
    for dep in $(modinfo -F depends "$plain" | tr ',' ' '); do add_module "$dep" || return 1; done
    order+=("$m")
  }
  for m in "${wanted[@]}"; do add_module "$m" || return 1; done
  printf '%s\n' "${order[@]}" >"$work/initrd/modules/order"
  cp /bin/busybox "$work/initrd/bin/busybox"
  cat >"$work/initrd/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m.ko || echo "rdma-vm: insmod $m failed"; done
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | base64 -d; }
cwd=$(arg memkv_cwd); script=$(arg memkv_script)

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /root
for d in proc sys dev; do mount --bind /$d /root/$d; done
for d in tmp run dev/shm; do mount -t tmpfs tmpfs /root/$d; done
mkdir -p "/root$cwd" 2>/dev/null  # a checkout under /tmp sits on the fresh tmpfs
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=524288 work "/root$cwd"
ip link set lo up
ip link add memkv0 type dummy && ip link set memkv0 up
ip addr add 10.77.0.1/24 dev memkv0; ip addr add 10.77.0.2/24 dev memkv0
ip link add memkv1 type dummy && ip link set memkv1 up
ip addr add 10.77.1.1/24 dev memkv1
chroot /root /usr/bin/rdma link add rxe0 type rxe netdev memkv0
chroot /root /usr/bin/rdma link add rxe1 type rxe netdev memkv1
echo "==MEMKV-RDMA-VM-START=="
chroot /root /bin/sh -c "cd '$cwd' && exec /bin/sh '$script'"
echo "==MEMKV-RDMA-VM-EXIT $?=="
poweroff -f
INIT
  chmod +x "$work/initrd/init"
  (cd "$work/initrd" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$cache/initrd.gz.new"
  cp "$work/kernel/boot/vmlinuz-$kver" "$cache/vmlinuz.new"
  mv "$cache/initrd.gz.new" "$cache/initrd.gz"
  mv "$cache/vmlinuz.new" "$cache/vmlinuz"
}
if [ ! -s "$cache/vmlinuz" ] || [ ! -s "$cache/initrd.gz" ]; then
  say "preparing the guest kernel and initramfs (once)"
  build_boot_files || exit 125
fi
[ "$prepare_only" = 1 ] && exit 0

# The guest mounts a fresh tmpfs on /tmp: a Python environment there is not
# in the guest.
for env_dir in "${VIRTUAL_ENV:-}" "$(dirname "$(dirname "$(command -v python3 || echo /)")")"; do
  if [[ "$env_dir/" == /tmp/* ]]; then
    say "warning: $env_dir (the Python on PATH) is under /tmp, which the guest replaces with its own" \
        "tmpfs: it is not there (make the environment outside /tmp)"
    break
  fi
done

# ---- run -------------------------------------------------------------------------------
cwd=$(pwd -P)
script="$cwd/.memkv-rdma-vm.$$.sh"
console=$(mktemp)
trap 'rm -f "$script" "$console"' EXIT
{
  echo "export PATH='$PATH' HOME=/tmp RDMA_VM=1 PYTHONDONTWRITEBYTECODE=1"
  for v in VIRTUAL_ENV PYTHONPATH LMCACHE_TRACK_USAGE HF_HUB_OFFLINE TRANSFORMERS_OFFLINE VLLM_NO_USAGE_STATS \
           TORCH_EXTENSIONS_DIR; do
    [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
  done
  while IFS='=' read -r name _; do printf 'export %s=%q\n' "$name" "${!name}"; done < <(env | grep '^MEMKV_' || true)
  printf '%q ' "$@"
  echo
} >"$script"
b64() { printf %s "$1" | base64 -w0; }
set +e
# The command's output is what the console prints between the markers,
# passed on as it comes.
timeout "$timeout_s" qemu-system-x86_64 -accel tcg -cpu max -smp "$cpus" -m "$mem" \
  -nographic -no-reboot -nodefaults -serial stdio \
  -kernel "$cache/vmlinuz" -initrd "$cache/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=1 panic=-1 memkv_cwd=$(b64 "$cwd") memkv_script=$(b64 "$script")" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$cwd",mount_tag=work,security_model=none,multidevs=remap \
  </dev/null 2>&1 | tee "$console" | awk '/==MEMKV-RDMA-VM-EXIT/ {on = 0} on {sub(/\r$/, ""); print; fflush()}
                                           /==MEMKV-RDMA-VM-START==/ {on = 1}'
qemu_rc=${PIPESTATUS[0]}
set -e
[ "$show_console" = 1 ] && tr -d '\r' <"$console" >&2
rc=$(sed -n 's/.*==MEMKV-RDMA-VM-EXIT \([0-9]*\)==.*/\1/p' "$console" | tail -1)
if [ -z "$rc" ]; then
  if [ "$qemu_rc" -eq 124 ]; then say "timed out after ${timeout_s}s"; exit 124; fi
  say "the guest did not run the command (qemu exit $qemu_rc); last console lines:"
  tail -30 "$console" >&2
  exit 125
fi
exit "$rc"
