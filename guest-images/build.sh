#!/usr/bin/env bash
# Builds the crashvmm guest and software-KVM test-host images from Debian packages.
#
#   guest-images/build.sh [--fetch-only] [OUT_DIR] [CACHE_DIR]
#
# OUT_DIR   defaults to build/images, CACHE_DIR to build/cache (both relative to the repository
# root when defaulted, relative to the current directory when given). See guest-images/README.md.
#
# --fetch-only  resolve the kernel set (guest and test-host kernels, the guest's headers and its
#               -dbg package), bring it into the cache and print it; installs nothing and builds
#               no image.
#
# Environment overrides (optional):
#   GUEST_KERNEL_PKG  package for the guest kernel, an image or a metapackage
#                     (default: what linux-image-cloud-amd64 depends on)
#   HOST_KERNEL_PKG   the same for the test-host kernel (default: what linux-image-amd64 depends on)
#   APT_LISTS_MAX_AGE_HOURS  apt lists older than this are refreshed before a download (24)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
fetch_only=0
if [[ ${1:-} == --fetch-only ]]; then
  fetch_only=1
  shift
fi
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

mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
cache=$(cd "$cache" && pwd)

# One build at a time per cache directory.
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
fi

CACHE_DIR=$cache
# shellcheck source=guest-images/debian.sh
source "$here/debian.sh"
: >"$(apt_log)"

if ((!fetch_only)); then
  apt_install "${HOST_PACKAGES[@]}" || exit 1
  for t in busybox cpio gzip strings ldd ldconfig find sort cmp; do
    command -v "$t" >/dev/null || die "required tool '$t' not found"
  done
  BUSYBOX=/bin/busybox
  [[ -x $BUSYBOX ]] || die "$BUSYBOX missing (package busybox-static)"
  KEXEC=$(command -v kexec || true)
  MAKEDUMPFILE=$(command -v makedumpfile || true)
  VMCORE_DMESG=$(command -v vmcore-dmesg || true)
  [[ -n $KEXEC ]] || die "kexec not found (package kexec-tools)"
  [[ -n $MAKEDUMPFILE ]] || die "makedumpfile not found (package makedumpfile)"
fi
for t in apt-cache dpkg-deb; do
  command -v "$t" >/dev/null || die "required tool '$t' not found"
done

# ---------------------------------------------------------------------------------------------
# The kernel set: the guest kernel, the test-host kernel, the guest kernel's headers (for the
# lockup test module) and its -dbg package (the vmlinux with debug info that `crash` reads),
# resolved together from one set of apt lists so that the image, its modules, its headers and
# its symbols are always one ABI. Each .deb is cached by its exact version; the set
# last fetched is recorded in CACHE/kernel-set, which a build that cannot reach the archive uses.

# The linux-image-6.1.0-NN-FLAVOUR package a metapackage currently depends on (empty for an
# image package itself).
resolve_kernel_pkg() {
  apt-cache depends "$1" 2>/dev/null \
    | awk '!found && $1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2; found = 1 }' || true
}

# The kernel release a linux-image package's name carries.
abi_of() {
  local abi=${1#linux-image-}
  printf '%s' "${abi%-unsigned}"
}

# deb_name PKG VER: the file name apt gives that package's .deb (an epoch's ':' as %3a).
deb_name() { printf '%s_%s_amd64.deb' "$1" "${2//:/%3a}"; }
cached_deb() { printf '%s/%s' "$cache" "$(deb_name "$1" "$2")"; }
lockup_ko() { printf '%s/crashtest-lockup-%s_%s.ko' "$cache" "$1" "${2//:/%3a}"; }
# Whether the lockup module of the guest kernel is built, from the current lockup.c.
lockup_current() {
  local ko
  ko=$(lockup_ko "$GUEST_ABI" "$GUEST_VER")
  [[ -f $ko && ! $here/lockup/lockup.c -nt $ko ]]
}

# resolve_image ROLE META OVERRIDE: sets ROLE_PKG, ROLE_VER (candidate) and ROLE_ABI (the release
# the package name carries) from the current lists, or RESOLVE_ERR.
resolve_image() {
  local role=$1 meta=$2 pkg=${3:-$2} dep ver
  dep=$(resolve_kernel_pkg "$pkg")
  [[ -z $dep ]] || pkg=$dep
  ver=$(candidate_version "$pkg")
  if [[ -z $ver || $pkg != linux-image-[0-9]* ]]; then
    if [[ -n ${3:-} ]]; then
      RESOLVE_ERR="apt knows no kernel image package $pkg (from the override for $meta)"
    else
      RESOLVE_ERR="apt lists name no kernel for $meta"
    fi
    return 1
  fi
  printf -v "${role}_PKG" %s "$pkg"
  printf -v "${role}_VER" %s "$ver"
  printf -v "${role}_ABI" %s "$(abi_of "$pkg")"
}

resolve_set() {
  resolve_image GUEST linux-image-cloud-amd64 "${GUEST_KERNEL_PKG:-}" || return 1
  resolve_image HOST linux-image-amd64 "${HOST_KERNEL_PKG:-}" || return 1
  HDR_PKG=linux-headers-$GUEST_ABI
  HDR_VER=$(candidate_version "$HDR_PKG")
  if [[ $HDR_VER != "$GUEST_VER" ]]; then
    RESOLVE_ERR="the apt lists have $GUEST_PKG $GUEST_VER but $HDR_PKG ${HDR_VER:-not at all}"
    return 1
  fi
  DBG_PKG=linux-image-$GUEST_ABI-dbg
  DBG_VER=$(candidate_version "$DBG_PKG")
  if [[ $DBG_VER != "$GUEST_VER" ]]; then
    RESOLVE_ERR="the apt lists have $GUEST_PKG $GUEST_VER but $DBG_PKG ${DBG_VER:-not at all}"
    return 1
  fi
}

set_text() { printf 'guest %s %s, host %s %s' "$GUEST_PKG" "$GUEST_VER" "$HOST_PKG" "$HOST_VER"; }

# The headers are needed unless the lockup module of this exact kernel is cached or they are
# installed at the image's version.
headers_needed() {
  lockup_current && return 1
  [[ $(pkg_installed_version "$HDR_PKG" || true) != "$HDR_VER" ]]
}

set_cached() {
  [[ -s $(cached_deb "$GUEST_PKG" "$GUEST_VER") && -s $(cached_deb "$HOST_PKG" "$HOST_VER") ]] || return 1
  [[ -s $(cached_deb "$DBG_PKG" "$DBG_VER") ]] || return 1
  if ((fetch_only)); then
    [[ -s $cache/apt/$(deb_name "$HDR_PKG" "$HDR_VER") ]]
  elif headers_needed; then
    return 1
  fi
}

# fetch_deb PKG VER: apt-get download into the cache, unless it is there (or in CACHE/apt, where
# `make deps` leaves what it installed: linked from there).
fetch_deb() {
  local deb
  deb=$(cached_deb "$1" "$2")
  [[ -s $deb ]] && return 0
  if [[ -s $cache/apt/$(deb_name "$1" "$2") ]] && ln -f "$cache/apt/$(deb_name "$1" "$2")" "$deb" 2>/dev/null; then
    return 0
  fi
  say "downloading $1 $2"
  if ! (cd "$cache" && apt-get download "$1=$2" >>"$(apt_log)" 2>&1) || [[ ! -s $deb ]]; then
    FETCH_ERR="$1 $2 cannot be downloaded"
    return 1
  fi
}

# The headers (and what they depend on, from the same lists): installed for the build, only
# downloaded into CACHE/apt with --fetch-only.
fetch_headers() {
  local opts=(-y --no-install-recommends -o "Dir::Cache::archives=$cache/apt") verb=install
  if ((fetch_only)); then
    opts+=(--download-only)
    verb=download
  else
    headers_needed || return 0
    ((EUID == 0)) || die "building the lockup module needs $HDR_PKG $HDR_VER (run as root, or install it)"
  fi
  mkdir -p "$cache/apt/partial"
  say "${verb}ing $HDR_PKG $HDR_VER (for the lockup test module)"
  DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" install "$HDR_PKG=$HDR_VER" >>"$(apt_log)" 2>&1 && return 0
  FETCH_ERR="$HDR_PKG $HDR_VER cannot be ${verb}ed"
  return 1
}

fetch_set() {
  fetch_deb "$GUEST_PKG" "$GUEST_VER" && fetch_deb "$HOST_PKG" "$HOST_VER" && fetch_headers \
    && fetch_deb "$DBG_PKG" "$DBG_VER"
}

write_set_record() {
  {
    printf 'guest.package=%s\nguest.version=%s\n' "$GUEST_PKG" "$GUEST_VER"
    printf 'host.package=%s\nhost.version=%s\n' "$HOST_PKG" "$HOST_VER"
    printf 'headers.package=%s\nheaders.version=%s\n' "$HDR_PKG" "$HDR_VER"
    printf 'dbg.package=%s\ndbg.version=%s\n' "$DBG_PKG" "$DBG_VER"
  } >"$cache/kernel-set.new"
  mv "$cache/kernel-set.new" "$cache/kernel-set"
}

# The set last fetched, when the archive cannot be reached and it is complete in the cache (and
# matches an override, if one is given).
use_set_record() {
  local f=$cache/kernel-set
  [[ -f $f ]] || return 1
  rec() { sed -n "s/^$1=//p" "$f"; }
  GUEST_PKG=$(rec guest.package) GUEST_VER=$(rec guest.version)
  HOST_PKG=$(rec host.package) HOST_VER=$(rec host.version)
  HDR_PKG=$(rec headers.package) HDR_VER=$(rec headers.version)
  GUEST_ABI=$(abi_of "$GUEST_PKG") HOST_ABI=$(abi_of "$HOST_PKG")
  DBG_PKG=$(rec dbg.package) DBG_VER=$(rec dbg.version)
  [[ -n $DBG_PKG ]] || return 1
  [[ -z ${GUEST_KERNEL_PKG:-} || $GUEST_KERNEL_PKG == "$GUEST_PKG" ]] || return 1
  [[ -z ${HOST_KERNEL_PKG:-} || $HOST_KERNEL_PKG == "$HOST_PKG" ]] || return 1
  set_cached
}

resolve_kernel_set() {
  if resolve_set && set_cached; then
    say "kernels: $(set_text) (cached)"
    return 0
  fi
  apt_refresh_if_stale
  local err
  while :; do
    if resolve_set; then
      say "kernels: $(set_text)"
      fetch_set && { write_set_record; return 0; }
      err=$FETCH_ERR
    else
      err=$RESOLVE_ERR
    fi
    ((APT_REFRESHED)) && break
    say "$err; refreshing the apt lists and resolving everything again"
    apt_refresh || break
  done
  if use_set_record; then
    say "$err; using the set cached in $cache/kernel-set: $(set_text)"
    return 0
  fi
  if ((APT_UNREACHABLE)); then
    die "$err, the Debian archive cannot be reached (see $(apt_log)) and $cache holds no complete kernel set: connect this machine to the archive, or copy a complete $cache from one that can"
  fi
  die "$err, even from freshly updated apt lists (see $(apt_log)): set GUEST_KERNEL_PKG=/HOST_KERNEL_PKG= to a kernel package that 'apt-cache policy' lists, or put a complete set into $cache"
}

# extract_kernel DEB ABI -> sets KROOT (extracted tree) and KREL (kernel release)
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
  [[ $KREL == "$2" ]] || die "$deb holds kernel $KREL, not the $2 its name says"
  [[ -f $KROOT/boot/vmlinuz-$KREL ]] || die "no boot/vmlinuz-$KREL in $deb"
}

resolve_kernel_set
GUEST_DEB=$(cached_deb "$GUEST_PKG" "$GUEST_VER")
HOST_DEB=$(cached_deb "$HOST_PKG" "$HOST_VER")
extract_kernel "$GUEST_DEB" "$GUEST_ABI"
GUEST_ROOT=$KROOT GUEST_REL=$KREL
extract_kernel "$HOST_DEB" "$HOST_ABI"
HOST_ROOT=$KROOT HOST_REL=$KREL

# Drop extracted trees whose .deb is no longer in the cache (delete a .deb to free its tree).
for d in "$cache"/extract/*/; do
  [[ -d $d ]] || continue
  d=${d%/}
  [[ -f $cache/$(basename "$d").deb ]] || { say "pruning $(basename "$d")"; rm -rf "$d"; }
done

if ((fetch_only)); then
  say "fetched: $(set_text), headers $HDR_PKG $HDR_VER, debug symbols $DBG_PKG $DBG_VER"
  exit 0
fi

# A kernel that changed since the last build (newer apt lists, an override) rebuilds its images.
if [[ -f $out/build-info ]]; then
  for role in guest host; do
    was=$(sed -n "s/^$role.package=//p" "$out/build-info")
    [[ $role == guest ]] && now=$(basename "$GUEST_DEB" .deb) || now=$(basename "$HOST_DEB" .deb)
    was=${was%.deb}
    [[ -z $was || $was == "$now" ]] || say "$role kernel changed: $was -> $now; rebuilding the $role images"
  done
fi

# The crashtest lockup module (guest-images/lockup: every CPU spins with interrupts off), built
# once per kernel package version against Debian's headers of that version (installed by
# resolve_kernel_set), and staged as /lib/modules/REL/extra/crashtest-lockup.ko (loaded with insmod).
build_lockup_module() {
  local rel=$1 root=$2 hdr="/usr/src/linux-headers-$1" ko
  ko=$(lockup_ko "$rel" "$GUEST_VER")
  if ! lockup_current; then
    [[ -d $hdr ]] || die "$hdr missing although $HDR_PKG $HDR_VER is installed"
    local src="$cache/lockup-build"
    rm -rf "$src" && mkdir -p "$src" && cp "$here/lockup/lockup.c" "$here/lockup/Kbuild" "$src/"
    make -s -C "$hdr" M="$src" modules >"$cache/lockup-build.log" 2>&1 \
      || die "building the lockup module failed (see $cache/lockup-build.log)"
    cp "$src/lockup.ko" "$ko"
  fi
  install -D -m 0644 "$ko" "$root/lib/modules/$rel/extra/crashtest-lockup.ko"
}

# The guest kernel's vmlinux with its debug info, for `crash` on the guest's vmcores: the one
# member of the -dbg package (usr/lib/debug/boot/vmlinux-REL, about 590 MB) extracted to
# OUT/guest/vmlinux-REL, once per package version (OUT/guest/vmlinux-REL.source names the .deb it
# came from); the vmlinux of any other release is removed.
extract_vmlinux() {
  local rel=$1 deb=$2 dst="$out/guest/vmlinux-$1" f
  local member=./usr/lib/debug/boot/vmlinux-$rel
  mkdir -p "$out/guest"
  if [[ ! -s $dst || $(cat "$dst.source" 2>/dev/null) != "$(basename "$deb")" ]]; then
    say "extracting vmlinux-$rel from $(basename "$deb")"
    rm -f "$dst" "$dst.source"
    if ! dpkg-deb --fsys-tarfile "$deb" | tar -xO -f - "$member" >"$dst.tmp" 2>"$cache/vmlinux-extract.log" \
      || [[ ! -s $dst.tmp ]]; then
      rm -f "$dst.tmp"
      die "cannot extract $member from $deb (see $cache/vmlinux-extract.log)"
    fi
    mv "$dst.tmp" "$dst"
    basename "$deb" >"$dst.source"
  fi
  for f in "$out"/guest/vmlinux-*; do
    [[ $f == "$dst" || $f == "$dst.source" || ! -e $f ]] || rm -f "$f"
  done
}

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
extract_vmlinux "$GUEST_REL" "$(cached_deb "$DBG_PKG" "$DBG_VER")"
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
  printf 'guest.vmlinux=guest/vmlinux-%s\nguest.dbg_package=%s\n' "$GUEST_REL" "$(deb_name "$DBG_PKG" "$DBG_VER")"
  printf 'host.kernel_release=%s\nhost.package=%s\n' "$HOST_REL" "$(basename "$HOST_DEB")"
} >"$out/build-info.new"
install_if_changed "$out/build-info.new" "$out/build-info" || true
rm -f "$out/build-info.new"
say "done: $out"
