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

# Modules of the test-host image (a trailing '?': skipped when the kernel does not ship it as a
# .ko; the guest images' lists are in crashtest-image.sh).
HOST_MODULES=(irqbypass kvm ccp kvm_amd 'kvm_intel?'
  'virtio?' 'virtio_ring?' 'virtio_pci?' 'netfs?' 'fscache?' 9pnet 9pnet_virtio 9p
  tun)
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

# One build at a time per cache directory (crashtest-image.sh, run below, is told that it is held).
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
fi

CACHE_DIR=$cache
# shellcheck source=guest-images/debian.sh
source "$here/debian.sh"
# The staging and kernel-package functions (the guest images are made by running it, below).
# shellcheck source=guest-images/crashtest-image.sh
source "$here/crashtest-image.sh"
# This script's progress lines go to stdout (crashtest-image.sh's own to stderr).
say() { printf 'images: %s\n' "$*"; }
: >"$(apt_log)"

if ((!fetch_only)); then
  apt_install "${HOST_PACKAGES[@]}" || exit 1
  for t in busybox cpio gzip strings ldd ldconfig find sort cmp; do
    command -v "$t" >/dev/null || die "required tool '$t' not found"
  done
  BUSYBOX=/bin/busybox
  [[ -x $BUSYBOX ]] || die "$BUSYBOX missing (package busybox-static)"
fi
for t in apt-cache dpkg-deb; do
  command -v "$t" >/dev/null || die "required tool '$t' not found"
done

# ---------------------------------------------------------------------------------------------
# The kernel set: the guest kernel, the test-host kernel, the guest kernel's headers (for the
# crashtest module) and its -dbg package (the vmlinux with debug info that `crash` reads),
# resolved together from one set of apt lists so that the image, its modules, its headers and
# its symbols are always one ABI. Each .deb is cached by its exact version; the set
# last fetched is recorded in CACHE/kernel-set, which a build that cannot reach the archive uses.

# The kernel package helpers (resolve_kernel_pkg, abi_of, deb_name, cached_deb, fetch_deb,
# extract_kernel) are crashtest-image.sh's.

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

# The headers are needed unless the crashtest module of this exact kernel is cached or they are
# installed at the image's version.
headers_needed() {
  [[ -s $(crashtest_package_ko "$GUEST_ABI" "$GUEST_VER") ]] && return 1
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

# The headers (and what they depend on, from the same lists): installed for the build, only
# downloaded into CACHE/apt with --fetch-only.
fetch_headers() {
  local opts=(-y --no-install-recommends -o "Dir::Cache::archives=$cache/apt") verb=install
  if ((fetch_only)); then
    opts+=(--download-only)
    verb=download
  else
    headers_needed || return 0
    ((EUID == 0)) || die "building the crashtest module needs $HDR_PKG $HDR_VER (run as root, or install it)"
  fi
  mkdir -p "$cache/apt/partial"
  say "${verb}ing $HDR_PKG $HDR_VER (for the crashtest module)"
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
# Guest images: OUT/guest from crashtest-image.sh, for the exact package resolved above (it holds
# no lock of its own: this script holds CACHE/.lock). The crashtest module is part of the set here.

"$here/crashtest-image.sh" --out "$out/guest" --cache "$cache" --package "$GUEST_PKG=$GUEST_VER" --lock-held
if ! grep -qx 'module=yes' "$out/guest/image-info"; then
  die "the crashtest module was not built for $GUEST_REL: $(sed -n 's/^module_reason=//p' "$out/guest/image-info")"
fi
extract_vmlinux "$GUEST_REL" "$(cached_deb "$DBG_PKG" "$DBG_VER")"

# ---------------------------------------------------------------------------------------------
# Test-host image

say "host: kernel $HOST_REL"
copy_kernel_files "$HOST_ROOT/boot/vmlinuz-$HOST_REL" "$HOST_ROOT/boot/config-$HOST_REL" "$HOST_REL" "$out/host"
hroot="$cache/stage/host"
stage_skeleton "$hroot"
stage_modules "$HOST_ROOT/lib/modules/$HOST_REL" "$hroot" "${HOST_MODULES[@]}"
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
