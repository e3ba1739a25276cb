#!/usr/bin/env bash
# Builds the crashvmm guest and software-KVM test-host images from Debian packages.
#
#   guest-images/build.sh [OUT_DIR] [CACHE_DIR]
#
# OUT_DIR   defaults to build/images, CACHE_DIR to build/cache (both relative to the repository
# root when defaulted, relative to the current directory when given). See guest-images/README.md.
#
# Environment overrides (optional):
#   GUEST_KERNEL_PKG  package for the guest kernel, an image or a metapackage
#                     (default: what linux-image-cloud-amd64 depends on)
#   HOST_KERNEL_PKG   the same for the test-host kernel (default: what linux-image-amd64 depends on)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out=${1:-$repo/build/images}
cache=${2:-$repo/build/cache}

say() { printf 'images: %s\n' "$*"; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

# Modules wanted in each initramfs. A trailing '?' marks a module that is skipped when the kernel
# does not ship it as a .ko (absent or built in); the others must be a .ko or built in.
GUEST_MODULES=(pvpanic pvpanic_mmio 'pvpanic_pci?' hv_vmbus
  'virtio?' 'virtio_ring?' 'virtio_mmio?' 'virtio_pci?' 'virtio_blk?' 'virtio_console?'
  'virtio_net?' 'virtio_balloon?' 'virtio_rng?')
# The crash kernel's initramfs (/boot/crash-initrd.cpio.gz in the guest image) is loaded into the
# crashkernel= reservation: only what a dump needs. No virtio_net/balloon/rng (a balloon must not
# run in a crash kernel), no pvpanic_pci.
CRASH_MODULES=(pvpanic pvpanic_mmio hv_vmbus
  'virtio?' 'virtio_ring?' 'virtio_mmio?' 'virtio_pci?' 'virtio_blk?' 'virtio_console?')
HOST_MODULES=(irqbypass kvm ccp kvm_amd 'kvm_intel?'
  'virtio?' 'virtio_ring?' 'virtio_pci?' 'netfs?' 'fscache?' 9pnet 9pnet_virtio 9p)
# Shared libraries put into the test host so that dynamically linked programs built on this
# machine (crashvmm itself, a Rust binary linked against glibc) run from /share.
HOST_GLIBC_LIBS=(libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1)
HOST_PACKAGES=(busybox-static cpio kexec-tools makedumpfile qemu-system-x86 binutils gzip)

# ---------------------------------------------------------------------------------------------
# Host tools

[[ $(uname -m) == x86_64 ]] || die "this build runs on x86_64 only (found $(uname -m))"
if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  die "needs a Debian host with dpkg and apt-get"
fi

pkg_installed() {
  local st
  st=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
  [[ $st == *" ok installed" ]]
}

ensure_host_packages() {
  local missing=() p
  for p in "${HOST_PACKAGES[@]}"; do
    pkg_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  if ((EUID != 0)); then
    die "missing host packages: ${missing[*]} (run as root, or: apt-get install --no-install-recommends ${missing[*]})"
  fi
  say "installing host packages: ${missing[*]}"
  local log="$cache/apt-install.log"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    say "apt-get install failed; running apt-get update and retrying"
    apt-get update >>"$log" 2>&1 || die "apt-get update failed (see $log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
      || die "apt-get install ${missing[*]} failed (see $log)"
  fi
}

# The crashtest lockup module (guest-images/lockup: every CPU spins with interrupts off), built
# once per kernel release against Debian's headers package for that kernel (installed when
# missing), and staged as /lib/modules/REL/extra/crashtest-lockup.ko (loaded with insmod).
build_lockup_module() {
  local rel=$1 root=$2 hdr="/usr/src/linux-headers-$1" ko="$cache/crashtest-lockup-$1.ko"
  if [[ ! -f $ko || $here/lockup/lockup.c -nt $ko ]]; then
    if [[ ! -d $hdr ]]; then
      ((EUID == 0)) || die "building the lockup module needs linux-headers-$rel (run as root, or install it)"
      say "installing linux-headers-$rel (for the lockup test module)"
      local log="$cache/apt-install.log"
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "linux-headers-$rel" >>"$log" 2>&1 || {
        apt-get update >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
          "linux-headers-$rel" >>"$log" 2>&1
      } || die "apt-get install linux-headers-$rel failed (see $log)"
    fi
    local src="$cache/lockup-build"
    rm -rf "$src" && mkdir -p "$src" && cp "$here/lockup/lockup.c" "$here/lockup/Kbuild" "$src/"
    make -s -C "$hdr" M="$src" modules >"$cache/lockup-build.log" 2>&1 \
      || die "building the lockup module failed (see $cache/lockup-build.log)"
    cp "$src/lockup.ko" "$ko"
  fi
  install -D -m 0644 "$ko" "$root/lib/modules/$rel/extra/crashtest-lockup.ko"
}

mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
cache=$(cd "$cache" && pwd)

# One build at a time per cache directory.
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
fi

ensure_host_packages
for t in busybox cpio gzip strings ldd ldconfig dpkg-deb apt-cache find sort cmp; do
  command -v "$t" >/dev/null || die "required tool '$t' not found"
done
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing (package busybox-static)"
KEXEC=$(command -v kexec || true)
MAKEDUMPFILE=$(command -v makedumpfile || true)
VMCORE_DMESG=$(command -v vmcore-dmesg || true)
[[ -n $KEXEC ]] || die "kexec not found (package kexec-tools)"
[[ -n $MAKEDUMPFILE ]] || die "makedumpfile not found (package makedumpfile)"

# ---------------------------------------------------------------------------------------------
# Kernels: resolve, download (cached), extract (cached)

# The linux-image-6.1.0-NN-FLAVOUR package a metapackage currently depends on.
resolve_kernel_pkg() {
  apt-cache depends "$1" 2>/dev/null \
    | awk '!found && $1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2; found = 1 }' || true
}

candidate_version() {
  apt-cache show --no-all-versions "$1" 2>/dev/null \
    | awk '!found && /^Version:/ { print $2; found = 1 }' || true
}

# fetch_kernel METAPKG OVERRIDE -> sets KDEB (path of the cached .deb)
fetch_kernel() {
  local meta=$1 pkg=$2 ver deb
  if [[ -z $pkg ]]; then
    pkg=$(resolve_kernel_pkg "$meta")
  else
    # The override may itself be a metapackage (e.g. linux-image-6.12-cloud-amd64).
    ver=$(resolve_kernel_pkg "$pkg")
    [[ -z $ver ]] || pkg=$ver
  fi
  if [[ -n $pkg ]]; then
    ver=$(candidate_version "$pkg")
    [[ -n $ver || -z $2 ]] || die "apt knows no package $pkg (from the override for $meta)"
  fi
  if [[ -z $pkg || -z ${ver:-} ]]; then
    # Offline fallback: newest cached .deb of this flavour.
    local flavour=${meta#linux-image-}
    deb=$(find "$cache" -maxdepth 1 -regextype posix-extended \
      -regex ".*/linux-image-[0-9][0-9.+a-z]*(-[0-9]+)?-${flavour}(-unsigned)?_[^/]*_amd64\.deb" | sort -V | tail -n 1)
    [[ -n $deb ]] || die "cannot resolve a kernel package from $meta (apt lists missing? run apt-get update)"
    say "apt cannot resolve $meta; using cached $(basename "$deb")"
    KDEB=$deb
    return
  fi
  deb="$cache/${pkg}_${ver//:/%3a}_amd64.deb"
  if [[ -s $deb ]]; then
    say "kernel $pkg $ver (cached)"
  else
    say "downloading $pkg $ver"
    (cd "$cache" && apt-get download "$pkg=$ver" >"$cache/apt-download.log" 2>&1) \
      || die "apt-get download $pkg=$ver failed (see $cache/apt-download.log)"
    [[ -s $deb ]] || die "apt-get download did not produce $deb"
  fi
  KDEB=$deb
}

# extract_kernel DEB -> sets KROOT (extracted tree) and KREL (kernel release)
extract_kernel() {
  local deb=$1 name dir
  name=$(basename "$deb" .deb)
  dir="$cache/extract/$name"
  if [[ ! -e $dir/.extracted ]]; then
    say "extracting $(basename "$deb")"
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$dir.tmp"
    dpkg-deb -x "$deb" "$dir.tmp" || die "dpkg-deb -x $deb failed"
    touch "$dir.tmp/.extracted"
    mv "$dir.tmp" "$dir"
  fi
  local rels=("$dir"/lib/modules/*/)
  if ((${#rels[@]} != 1)) || [[ ! -d ${rels[0]} ]]; then
    die "expected one lib/modules/<release> in $deb"
  fi
  KREL=$(basename "${rels[0]}")
  KROOT=$dir
  [[ -f $KROOT/boot/vmlinuz-$KREL ]] || die "no boot/vmlinuz-$KREL in $deb"
}

fetch_kernel linux-image-cloud-amd64 "${GUEST_KERNEL_PKG:-}"
GUEST_DEB=$KDEB
fetch_kernel linux-image-amd64 "${HOST_KERNEL_PKG:-}"
HOST_DEB=$KDEB
extract_kernel "$GUEST_DEB"
GUEST_ROOT=$KROOT GUEST_REL=$KREL
extract_kernel "$HOST_DEB"
HOST_ROOT=$KROOT HOST_REL=$KREL

# Drop extracted trees whose .deb is no longer in the cache (delete a .deb to free its tree).
for d in "$cache"/extract/*/; do
  [[ -d $d ]] || continue
  d=${d%/}
  [[ -f $cache/$(basename "$d").deb ]] || { say "pruning $(basename "$d")"; rm -rf "$d"; }
done

# ---------------------------------------------------------------------------------------------
# Helpers for staging an initramfs

# Copy SRC to DST only when the content differs (keeps mtimes stable for make).
install_if_changed() {
  local src=$1 dst=$2
  if [[ -f $dst ]] && cmp -s "$src" "$dst"; then
    return 1
  fi
  mkdir -p "$(dirname "$dst")"
  cp "$src" "$dst.tmp"
  mv "$dst.tmp" "$dst"
}

# Copy a file into the staging root at the same absolute path, following symlinks.
stage_file() {
  local src=$1 root=$2 dst=${3:-$1}
  mkdir -p "$root$(dirname "$dst")"
  cp -L "$src" "$root$dst"
}

# stage_elf SRC ROOT DST: a dynamically linked program plus every library ldd lists (and the
# ELF interpreter), each at its absolute path.
stage_elf() {
  local src=$1 root=$2 dst=$3 line lib
  stage_file "$src" "$root" "$dst"
  chmod 0755 "$root$dst"
  while IFS= read -r line; do
    line=${line#"${line%%[![:space:]]*}"}
    case $line in
      *"=> not found"*) die "ldd: $src needs ${line%% *}, which is not installed" ;;
      *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
      /*) lib=${line%% (*} ;;
      *) continue ;;
    esac
    [[ -e $root$lib ]] || stage_file "$lib" "$root"
  done < <(ldd "$src" 2>/dev/null || true)
}

stage_busybox() {
  local root=$1 p
  stage_file "$BUSYBOX" "$root" /bin/busybox
  chmod 0755 "$root/bin/busybox"
  while IFS= read -r p; do
    [[ -n $p && ! -e $root/$p && ! -L $root/$p ]] || continue
    [[ -d $root/${p%/*} ]] || mkdir -p "$root/${p%/*}"
    ln -s /bin/busybox "$root/$p"
  done < <("$BUSYBOX" --list-full)
}

stage_skeleton() {
  local root=$1
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,mnt,lib,lib64}
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  stage_busybox "$root"
}

# Print a (possibly compressed) kernel module to stdout.
mod_cat() {
  case $1 in
    *.ko) cat "$1" ;;
    *.ko.xz) command -v xz >/dev/null || die "xz needed for $1 (package xz-utils)"; xz -dc "$1" ;;
    *.ko.zst) command -v zstd >/dev/null || die "zstd needed for $1 (package zstd)"; zstd -dc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) die "unknown module format: $1" ;;
  esac
}

declare -A MODIDX MODSTATE MODDEPS BUILTIN
MODORDER=()

# stage_modules KROOT KREL ROOT NAME...: copies the modules and their dependencies (decompressed,
# as .ko) to ROOT/lib/modules/KREL and writes modules.dep for busybox modprobe.
stage_modules() {
  local kroot=$1 krel=$2 root=$3
  shift 3
  local moddir="$kroot/lib/modules/$krel" f rel name
  MODIDX=() MODSTATE=() MODDEPS=() BUILTIN=() MODORDER=()
  while IFS= read -r -d '' f; do
    rel=${f#"$moddir"/}
    name=${f##*/}
    name=${name%%.ko*}
    MODIDX[${name//-/_}]=$rel
  done < <(find "$moddir/kernel" -type f -name '*.ko*' -print0)
  if [[ -f $moddir/modules.builtin ]]; then
    while IFS= read -r rel; do
      name=${rel##*/}
      name=${name%%.ko*}
      BUILTIN[${name//-/_}]=1
    done <"$moddir/modules.builtin"
  fi

  local want optional
  for want in "$@"; do
    optional=0
    [[ $want == *'?' ]] && optional=1 && want=${want%'?'}
    want=${want//-/_}
    if [[ -z ${MODIDX[$want]:-} ]]; then
      if [[ -n ${BUILTIN[$want]:-} ]]; then
        say "  $want: built into $krel"
      elif ((optional)); then
        say "  $want: not in $krel, skipped"
      else
        die "module $want not found in $krel"
      fi
      continue
    fi
    mod_visit "$moddir" "$want"
  done

  local dst="$root/lib/modules/$krel"
  mkdir -p "$dst"
  [[ -f $moddir/modules.builtin ]] && cp "$moddir/modules.builtin" "$dst/"
  [[ -f $moddir/modules.order ]] && cp "$moddir/modules.order" "$dst/"
  : >"$dst/modules.dep"
  local m d deps line
  for m in "${MODORDER[@]}"; do
    rel=${MODIDX[$m]}
    rel=${rel%.ko*}.ko
    mkdir -p "$dst/$(dirname "$rel")"
    mod_cat "$moddir/${MODIDX[$m]}" >"$dst/$rel"
    # modules.dep lists all (transitive) dependencies, the one to load first last.
    declare -A closure=()
    mod_closure "$m"
    deps=()
    for d in "${MODORDER[@]}"; do
      [[ $d != "$m" && -n ${closure[$d]:-} ]] && deps=("${MODIDX[$d]%.ko*}.ko" "${deps[@]}")
    done
    unset closure
    line="$rel:"
    ((${#deps[@]})) && line+=" ${deps[*]}"
    printf '%s\n' "$line" >>"$dst/modules.dep"
  done
  # Load order (dependencies first), for the record and for init scripts that prefer insmod.
  for m in "${MODORDER[@]}"; do
    rel=${MODIDX[$m]}
    printf '%s\n' "${rel%.ko*}.ko"
  done >"$dst/modules.load-order"
  say "  modules in $krel: ${MODORDER[*]}"
}

mod_visit() {
  local moddir=$1 n=${2//-/_} deps d
  case ${MODSTATE[$n]:-} in
    visited) return 0 ;;
    visiting) die "module dependency cycle at $n" ;;
  esac
  if [[ -z ${MODIDX[$n]:-} ]]; then
    [[ -n ${BUILTIN[$n]:-} ]] && { MODSTATE[$n]=visited; return 0; }
    die "module $n (a dependency) not found"
  fi
  MODSTATE[$n]=visiting
  deps=$(mod_cat "$moddir/${MODIDX[$n]}" | strings | awk '!found && /^depends=/ { sub(/^depends=/, ""); print; found = 1 }')
  MODDEPS[$n]=${deps//,/ }
  for d in ${MODDEPS[$n]}; do
    mod_visit "$moddir" "$d"
  done
  MODSTATE[$n]=visited
  MODORDER+=("$n")
}

# Fills the caller's associative array 'closure' with NAME's transitive dependencies.
mod_closure() {
  local d
  for d in ${MODDEPS[$1]:-}; do
    d=${d//-/_}
    [[ -n ${closure[$d]:-} || -z ${MODIDX[$d]:-} ]] && continue
    closure[$d]=1
    mod_closure "$d"
  done
  return 0
}

# pack_cpio ROOT DST: deterministic newc archive, gzip'd. Compression (the slow part) is skipped
# when the uncompressed archive is byte-identical to the one DST was made from.
pack_cpio() {
  local root=$1 dst=$2 sum label
  label="$(basename "$(dirname "$dst")")/$(basename "$dst")"
  find "$root" -exec touch -h -d @0 {} +
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$dst.cpio"
  sum=$(sha256sum <"$dst.cpio")
  sum=${sum%% *}
  if [[ -f $dst && -f $dst.sha256 && $(<"$dst.sha256") == "$sum" ]]; then
    rm -f "$dst.cpio"
    say "$label unchanged ($(stat -c %s "$dst") bytes)"
    return 0
  fi
  gzip -n -9 <"$dst.cpio" >"$dst.new"
  rm -f "$dst.cpio"
  mv "$dst.new" "$dst"
  printf '%s\n' "$sum" >"$dst.sha256"
  say "wrote $label ($(stat -c %s "$dst") bytes)"
}

copy_kernel_files() {
  local kroot=$1 krel=$2 dir=$3
  mkdir -p "$dir"
  install_if_changed "$kroot/boot/vmlinuz-$krel" "$dir/vmlinuz" && say "wrote $dir/vmlinuz ($krel)"
  install_if_changed "$kroot/boot/config-$krel" "$dir/config" || true
  printf '%s\n' "$krel" >"$dir/kernel-release.new"
  install_if_changed "$dir/kernel-release.new" "$dir/kernel-release" || true
  rm -f "$dir/kernel-release.new"
}

# The same /init and scenario scripts in the guest and in the crash-kernel initramfs.
stage_init_and_scenarios() {
  local root=$1 s
  install -m 0755 "$here/guest-init.sh" "$root/init"
  mkdir -p "$root/scenarios"
  for s in "$here"/scenarios/*.sh; do
    [[ -e $s ]] || die "no scenarios in $here/scenarios"
    install -m 0755 "$s" "$root/scenarios/"
  done
  printf 'kernel=%s\npackage=%s\n' "$GUEST_REL" "$(basename "$GUEST_DEB")" >"$root/etc/crashtest-image"
}

# ---------------------------------------------------------------------------------------------
# Crash-kernel initramfs (goes into the guest image as /boot/crash-initrd.cpio.gz)

say "crash initramfs: kernel $GUEST_REL"
copy_kernel_files "$GUEST_ROOT" "$GUEST_REL" "$out/guest"
croot="$cache/stage/crash"
stage_skeleton "$croot"
stage_elf "$MAKEDUMPFILE" "$croot" /usr/bin/makedumpfile
[[ -n $VMCORE_DMESG ]] && stage_elf "$VMCORE_DMESG" "$croot" /sbin/vmcore-dmesg
stage_modules "$GUEST_ROOT" "$GUEST_REL" "$croot" "${CRASH_MODULES[@]}"
stage_init_and_scenarios "$croot"
printf 'crash-initrd=1\n' >>"$croot/etc/crashtest-image"
pack_cpio "$croot" "$out/guest/crash-initrd.cpio.gz"

# ---------------------------------------------------------------------------------------------
# Guest image

say "guest: kernel $GUEST_REL"
groot="$cache/stage/guest"
stage_skeleton "$groot"
stage_elf "$KEXEC" "$groot" /sbin/kexec
stage_elf "$MAKEDUMPFILE" "$groot" /usr/bin/makedumpfile
[[ -n $VMCORE_DMESG ]] && stage_elf "$VMCORE_DMESG" "$groot" /sbin/vmcore-dmesg
stage_modules "$GUEST_ROOT" "$GUEST_REL" "$groot" "${GUEST_MODULES[@]}"
build_lockup_module "$GUEST_REL" "$groot"
stage_init_and_scenarios "$groot"
# For crashtest=kdump: the kernel to kexec into (the same bzImage) and the crash initramfs.
mkdir -p "$groot/boot"
cp "$out/guest/vmlinuz" "$groot/boot/vmlinuz"
cp "$out/guest/crash-initrd.cpio.gz" "$groot/boot/crash-initrd.cpio.gz"
pack_cpio "$groot" "$out/guest/initramfs.cpio.gz"

# ---------------------------------------------------------------------------------------------
# Test-host image

say "host: kernel $HOST_REL"
copy_kernel_files "$HOST_ROOT" "$HOST_REL" "$out/host"
hroot="$cache/stage/host"
stage_skeleton "$hroot"
stage_modules "$HOST_ROOT" "$HOST_REL" "$hroot" "${HOST_MODULES[@]}"
for l in "${HOST_GLIBC_LIBS[@]}"; do
  p=$(ldconfig -p | awk -v so="$l" '!found && $1 == so && /x86-64/ { print $NF; found = 1 }')
  [[ -n $p ]] || die "host library $l not found"
  stage_file "$p" "$hroot"
done
stage_file /lib64/ld-linux-x86-64.so.2 "$hroot"
install -m 0755 "$here/host-init.sh" "$hroot/init"
printf 'kernel=%s\npackage=%s\n' "$HOST_REL" "$(basename "$HOST_DEB")" >"$hroot/etc/testhost-image"
pack_cpio "$hroot" "$out/host/initramfs.cpio.gz"

{
  printf 'guest.kernel_release=%s\nguest.package=%s\n' "$GUEST_REL" "$(basename "$GUEST_DEB")"
  printf 'host.kernel_release=%s\nhost.package=%s\n' "$HOST_REL" "$(basename "$HOST_DEB")"
} >"$out/build-info.new"
install_if_changed "$out/build-info.new" "$out/build-info" || true
rm -f "$out/build-info.new"
say "done: $out"
