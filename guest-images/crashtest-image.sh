#!/usr/bin/env bash
# Builds the crash-test images of one Linux kernel: a first-stage initramfs that runs a crashtest
# scenario (guest-init.sh, scenarios/*.sh) and the crash-kernel initramfs inside it.
#
#   guest-images/crashtest-image.sh --out DIR --cache CACHE
#       (--package PKG | --kernel BZIMAGE --modules MODDIR) [--build-tree KDIR]
#
# --package PKG    a Debian kernel image package or metapackage (linux-image-cloud-amd64,
#                  linux-image-6.1.0-57-amd64, ...); PKG=VERSION names an exact version. Resolved
#                  from the apt lists (refreshed when stale), its .deb cached in CACHE by exact
#                  version and unpacked into CACHE/extract/; its headers linux-headers-<abi> at
#                  the same version are installed with apt for the crashtest module (without them
#                  the image is built without the module).
# --kernel BZIMAGE --modules MODDIR
#                  any kernel: its bzImage and its lib/modules/<release> directory. The module is
#                  built against --build-tree KDIR, else MODDIR/build (if it holds a Makefile),
#                  else /usr/src/linux-headers-<release> (if present); otherwise there is none.
# --lock-held      the caller holds CACHE/.lock (build.sh): do not take it again.
#
# Writes DIR/vmlinuz, kernel-release, config (when the kernel's .config is found),
# initramfs.cpio.gz (with /boot/vmlinuz and /boot/crash-initrd.cpio.gz), crash-initrd.cpio.gz and
# image-info (key=value: kernel_release, source, kexec, kexec_reason, module, module_reason,
# hyperv, pvpanic). Progress lines "images: ..." and a failure's one line
# "images: error: ..." (exit status 1) go to stderr; stdout stays empty. Reads only files beside
# it: debian.sh, guest-init.sh, scenarios/*.sh, crashtest/{crashtest.c,Kbuild}.
# See guest-images/README.md.
#
# build.sh sources this file for the staging and kernel-package functions (running it does the
# build; sourcing it only defines them).

ct_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf 'images: %s\n' "$*" >&2; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

# Modules wanted in each initramfs. A trailing '?' marks a module that is skipped when the kernel
# does not ship it as a .ko (absent or built in); the others must be a .ko or built in.
# loop, ext4 and crc32c_generic (ext4 asks the crypto API for crc32c at every mount, which cannot
# autoload it here): the hung-task case's frozen file system.
GUEST_MODULES=(pvpanic pvpanic_mmio 'pvpanic_pci?' 'hv_vmbus?'
  'virtio?' 'virtio_ring?' virtio_mmio 'virtio_pci?' virtio_blk 'virtio_console?'
  'virtio_net?' 'virtio_balloon?' 'virtio_rng?' 'loop?' 'ext4?' 'crc32c_generic?')
# The crash kernel's initramfs (/boot/crash-initrd.cpio.gz in the guest image) is loaded into the
# crashkernel= reservation: only what a dump needs. No virtio_net/balloon/rng (a balloon must not
# run in a crash kernel), no pvpanic_pci.
CRASH_MODULES=(pvpanic pvpanic_mmio 'hv_vmbus?'
  'virtio?' 'virtio_ring?' virtio_mmio 'virtio_pci?' virtio_blk 'virtio_console?')
IMAGE_PACKAGES=(busybox-static cpio kexec-tools makedumpfile binutils gzip)

# ---------------------------------------------------------------------------------------------
# Debian kernel packages (also used by build.sh). $cache is the cache directory.

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

# fetch_deb PKG VER: apt-get download into the cache, unless it is there (or in CACHE/apt, where
# `make deps` leaves what it installed: linked from there). Sets FETCH_ERR on failure.
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

# extract_kernel DEB ABI -> sets KROOT (extracted tree, CACHE/extract/<deb name>) and KREL
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

# ---------------------------------------------------------------------------------------------
# The crashtest module (crashtest/crashtest.c), cached in CACHE/crashtest-modules/ by its source
# (content, not mtime: callers may write the sources afresh each time) and the kernel: a package
# kernel by release and package version, any other by release, .config and Module.symvers of the
# tree it is built against.

crashtest_src_hash() {
  cat "$ct_here/crashtest/crashtest.c" "$ct_here/crashtest/Kbuild" | sha256sum | cut -c1-12
}

# crashtest_package_ko REL VER: where the module of that Debian kernel package is cached.
crashtest_package_ko() {
  printf '%s/crashtest-modules/%s_%s-%s.ko' "$cache" "$1" "${2//:/%3a}" "$(crashtest_src_hash)"
}

# crashtest_tree_ko KDIR REL: where the module built against that build tree is cached.
crashtest_tree_ko() {
  local h
  h=$({
    crashtest_src_hash
    printf '%s\n' "$2"
    cat "$1/.config" "$1/Module.symvers" 2>/dev/null || true
  } | sha256sum | cut -c1-16)
  printf '%s/crashtest-modules/%s-%s.ko' "$cache" "$2" "$h"
}

# build_module KDIR REL KO: builds crashtest.ko against KDIR into KO unless it is there. Sets
# MODULE_REASON when it cannot (not fatal: the image is built without the module).
build_module() {
  local kdir=$1 rel=$2 ko=$3 src="$cache/crashtest-build" log="$cache/crashtest-build.log" vm
  [[ -s $ko ]] && return 0
  if ! command -v make >/dev/null; then
    MODULE_REASON="no make on this machine to build crashtest.ko against $kdir"
    return 1
  fi
  say "building crashtest.ko against $kdir"
  rm -rf "$src"
  mkdir -p "$src"
  cp "$ct_here/crashtest/crashtest.c" "$ct_here/crashtest/Kbuild" "$src/"
  if ! make -s -C "$kdir" M="$src" modules >"$log" 2>&1 || [[ ! -s $src/crashtest.ko ]]; then
    MODULE_REASON="building crashtest.ko against $kdir failed (see $log)"
    return 1
  fi
  vm=$(strings "$src/crashtest.ko" | awk '!found && /^vermagic=/ { sub(/^vermagic=/, ""); print; found = 1 }')
  vm=${vm%% *}
  if [[ $vm != "$rel" ]]; then
    MODULE_REASON="crashtest.ko built against $kdir is for kernel ${vm:-unknown}, not $rel"
    return 1
  fi
  mkdir -p "$(dirname "$ko")"
  cp "$src/crashtest.ko" "$ko.tmp"
  mv "$ko.tmp" "$ko"
}

# ---------------------------------------------------------------------------------------------
# Staging an initramfs (also used by build.sh for the test-host image)

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

# stage_modules MODDIR ROOT NAME...: copies the modules of MODDIR (a lib/modules/<release>
# directory) and their dependencies (decompressed, as .ko) to ROOT/lib/modules/<release> and
# writes modules.dep for busybox modprobe. Leaves MODIDX/BUILTIN describing MODDIR.
stage_modules() {
  local moddir=$1 root=$2
  shift 2
  local krel f rel name
  krel=$(basename "$moddir")
  MODIDX=() MODSTATE=() MODDEPS=() BUILTIN=() MODORDER=()
  if [[ -d $moddir/kernel ]]; then
    while IFS= read -r -d '' f; do
      rel=${f#"$moddir"/}
      name=${f##*/}
      name=${name%%.ko*}
      MODIDX[${name//-/_}]=$rel
    done < <(find "$moddir/kernel" -type f -name '*.ko*' -print0)
  fi
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
        die "module $want not found in $krel (neither a module in $moddir nor built in)"
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

# Whether the modules directory last given to stage_modules has NAME as a module or built in.
mod_available() {
  [[ -n ${MODIDX[$1]:-} || -n ${BUILTIN[$1]:-} ]]
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

# copy_kernel_files VMLINUZ CONFIG REL DIR: DIR/vmlinuz, DIR/config (removed when CONFIG is
# empty) and DIR/kernel-release, each rewritten only when its content changed.
copy_kernel_files() {
  local vmlinuz=$1 config=$2 krel=$3 dir=$4
  mkdir -p "$dir"
  install_if_changed "$vmlinuz" "$dir/vmlinuz" && say "wrote $dir/vmlinuz ($krel)"
  if [[ -n $config ]]; then
    install_if_changed "$config" "$dir/config" || true
  else
    rm -f "$dir/config"
  fi
  printf '%s\n' "$krel" >"$dir/kernel-release.new"
  install_if_changed "$dir/kernel-release.new" "$dir/kernel-release" || true
  rm -f "$dir/kernel-release.new"
}

# ---------------------------------------------------------------------------------------------
# The build

usage() {
  printf 'images: error: %s\n' "$*" >&2
  printf 'usage: crashtest-image.sh --out DIR --cache CACHE (--package PKG | --kernel BZIMAGE --modules MODDIR) [--build-tree KDIR]\n' >&2
  exit 1
}

# The same /init and scenario scripts in the first-stage and in the crash-kernel initramfs;
# /etc/crashtest-image says which kernel (and package or bzImage) the image is for.
stage_init_and_scenarios() {
  local root=$1 s
  install -m 0755 "$ct_here/guest-init.sh" "$root/init"
  mkdir -p "$root/scenarios"
  for s in "$ct_here"/scenarios/*.sh; do
    [[ -e $s ]] || die "no scenarios in $ct_here/scenarios"
    install -m 0755 "$s" "$root/scenarios/"
  done
  printf '%s' "$IMAGE_ID" >"$root/etc/crashtest-image"
}

# The kernel release a bzImage's header names (empty when it has none).
bzimage_release() {
  local off
  off=$(od -An -tu2 -j 526 -N 2 "$1" 2>/dev/null | tr -d ' ')
  [[ -n $off && $off != 0 ]] || return 0
  dd if="$1" bs=1 skip=$((off + 512)) count=128 2>/dev/null | tr '\0' '\n' | awk 'NR == 1 { print $1 }' || true
}

# What kexec -p needs, from the kernel's .config: sets KEXEC and KEXEC_REASON.
kexec_support() {
  local cfg=$1
  KEXEC=yes KEXEC_REASON=
  if [[ -z $cfg ]]; then
    KEXEC=unknown KEXEC_REASON="no .config found for $REL"
  elif ! grep -qE '^CONFIG_KEXEC(_FILE)?=y' "$cfg"; then
    KEXEC=no KEXEC_REASON="neither CONFIG_KEXEC nor CONFIG_KEXEC_FILE is set in the kernel's .config"
  elif ! grep -q '^CONFIG_CRASH_DUMP=y' "$cfg"; then
    KEXEC=no KEXEC_REASON="CONFIG_CRASH_DUMP is not set in the kernel's .config"
  fi
}

# --package: resolve PKG (a metapackage to its image package; PKG=VER as given) from the apt
# lists. Sets IMG_PKG IMG_VER ABI, or RESOLVE_ERR.
resolve_package() {
  local pkg=${PACKAGE%%=*} ver dep
  if [[ $PACKAGE == *=* ]]; then
    ver=${PACKAGE#*=}
  else
    dep=$(resolve_kernel_pkg "$pkg")
    [[ -z $dep ]] || pkg=$dep
    ver=$(candidate_version "$pkg")
  fi
  if [[ -z $ver || $pkg != linux-image-[0-9]* ]]; then
    RESOLVE_ERR="apt knows no kernel image package $PACKAGE"
    return 1
  fi
  IMG_PKG=$pkg IMG_VER=$ver ABI=$(abi_of "$pkg")
  HDR_PKG=linux-headers-$ABI
}

# The package's module is cached, or its headers are installed at the image's version.
headers_ready() {
  [[ -s $(crashtest_package_ko "$ABI" "$IMG_VER") ]] && return 0
  [[ $(pkg_installed_version "$HDR_PKG" || true) == "$IMG_VER" ]]
}

# Install the headers at the image's version unless headers_ready. Sets HDR_ERR on failure.
get_headers() {
  local cand
  headers_ready && return 0
  if ((EUID != 0)); then
    HDR_ERR="$HDR_PKG $IMG_VER is not installed (and installing it needs root)"
    return 1
  fi
  cand=$(candidate_version "$HDR_PKG")
  if [[ $cand != "$IMG_VER" ]]; then
    HDR_ERR="the apt lists have $IMG_PKG $IMG_VER but $HDR_PKG ${cand:-not at all}"
    return 1
  fi
  mkdir -p "$cache/apt/partial"
  say "installing $HDR_PKG $IMG_VER (for the crashtest module)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get -y --no-install-recommends -o "Dir::Cache::archives=$cache/apt" \
    install "$HDR_PKG=$IMG_VER" >>"$(apt_log)" 2>&1; then
    HDR_ERR="$HDR_PKG $IMG_VER cannot be installed (see $(apt_log))"
    return 1
  fi
}

# The package's .deb in the cache (and, if they can be had, its headers), from the current apt
# lists when they resolve to a cached .deb, else from lists refreshed when stale, and once more
# from freshly updated lists when something fails. Headers that cannot be had are not fatal.
acquire_package() {
  HDR_ERR=
  if resolve_package && [[ -s $(cached_deb "$IMG_PKG" "$IMG_VER") ]] && headers_ready; then
    say "kernel: $IMG_PKG $IMG_VER (cached)"
    return 0
  fi
  apt_refresh_if_stale
  local err fallback=
  while :; do
    if resolve_package; then
      say "kernel: $IMG_PKG $IMG_VER"
      if fetch_deb "$IMG_PKG" "$IMG_VER"; then
        get_headers && return 0
        fallback="$IMG_PKG $IMG_VER"
        ((APT_REFRESHED)) && return 0
        say "$HDR_ERR; refreshing the apt lists and resolving $PACKAGE again"
        apt_refresh || return 0
        continue
      fi
      err=$FETCH_ERR
    else
      err=$RESOLVE_ERR
    fi
    ((APT_REFRESHED)) && break
    say "$err; refreshing the apt lists and resolving $PACKAGE again"
    apt_refresh || break
  done
  if [[ -n $fallback ]]; then
    # The refreshed lists lost the package: the .deb fetched from the old ones will do.
    IMG_PKG=${fallback% *} IMG_VER=${fallback#* } ABI=$(abi_of "$IMG_PKG") HDR_PKG=linux-headers-$ABI
    say "$err; using $IMG_PKG $IMG_VER from the cache"
    return 0
  fi
  if ((APT_UNREACHABLE)); then
    die "$err and the Debian archive cannot be reached (see $(apt_log))"
  fi
  die "$err, even from freshly updated apt lists (see $(apt_log))"
}

crashtest_image_main() {
  set -euo pipefail
  # Everything this script prints is for the log: stdout stays empty.
  exec 1>&2
  PACKAGE=''
  local out='' bzimage='' moddir='' kdir='' lock_held=0
  while (($#)); do
    case $1 in
      --out | --cache | --package | --kernel | --modules | --build-tree)
        (($# >= 2)) || usage "$1 needs a value"
        case $1 in
          --out) out=$2 ;;
          --cache) cache=$2 ;;
          --package) PACKAGE=$2 ;;
          --kernel) bzimage=$2 ;;
          --modules) moddir=$2 ;;
          --build-tree) kdir=$2 ;;
        esac
        shift 2
        ;;
      --lock-held) lock_held=1; shift ;;
      *) usage "unknown argument '$1'" ;;
    esac
  done
  [[ -n $out ]] || usage "--out DIR is required"
  [[ -n ${cache:-} ]] || usage "--cache CACHE is required"
  if [[ -n $PACKAGE ]]; then
    [[ -z $bzimage && -z $moddir ]] || usage "--package and --kernel/--modules exclude each other"
    [[ -z $kdir ]] || usage "--build-tree goes with --kernel (a package's module is built against its headers)"
  else
    [[ -n $bzimage && -n $moddir ]] || usage "give --package PKG, or --kernel BZIMAGE and --modules MODDIR"
    [[ -f $bzimage ]] || die "bzImage $bzimage does not exist"
    [[ -d $moddir ]] || die "modules directory $moddir does not exist"
    [[ -z $kdir || -d $kdir ]] || die "build tree $kdir does not exist"
    bzimage=$(cd "$(dirname "$bzimage")" && pwd)/$(basename "$bzimage")
    moddir=$(cd "$moddir" && pwd)
    [[ -z $kdir ]] || kdir=$(cd "$kdir" && pwd)
  fi

  [[ $(uname -m) == x86_64 ]] || die "this build runs on x86_64 only (found $(uname -m))"
  if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    die "needs a Debian host with dpkg and apt-get"
  fi
  mkdir -p "$out" "$cache"
  out=$(cd "$out" && pwd)
  cache=$(cd "$cache" && pwd)

  # One build at a time per cache directory (build.sh holds the lock when it runs this).
  if ((!lock_held)) && command -v flock >/dev/null; then
    exec 9>"$cache/.lock"
    flock 9
  fi

  CACHE_DIR=$cache
  # shellcheck source=guest-images/debian.sh
  source "$ct_here/debian.sh"
  ((lock_held)) || : >"$(apt_log)"

  apt_install "${IMAGE_PACKAGES[@]}" || exit 1
  local t
  for t in busybox cpio gzip strings ldd find sort cmp sha256sum od dd; do
    command -v "$t" >/dev/null || die "required tool '$t' not found"
  done
  BUSYBOX=/bin/busybox
  [[ -x $BUSYBOX ]] || die "$BUSYBOX missing (package busybox-static)"
  local kexec makedumpfile vmcore_dmesg
  kexec=$(command -v kexec || true)
  makedumpfile=$(command -v makedumpfile || true)
  vmcore_dmesg=$(command -v vmcore-dmesg || true)
  [[ -n $kexec ]] || die "kexec not found (package kexec-tools)"
  [[ -n $makedumpfile ]] || die "makedumpfile not found (package makedumpfile)"

  # The kernel: VMLINUZ, MODDIR, REL, CONFIG, SOURCE and the module (KO, or MODULE_REASON).
  local vmlinuz config='' origin ko='' rel
  MODULE_REASON=
  if [[ -n $PACKAGE ]]; then
    for t in apt-cache dpkg-deb; do
      command -v "$t" >/dev/null || die "required tool '$t' not found"
    done
    acquire_package
    local deb
    deb=$(cached_deb "$IMG_PKG" "$IMG_VER")
    extract_kernel "$deb" "$ABI"
    rel=$KREL
    vmlinuz=$KROOT/boot/vmlinuz-$rel
    moddir=$KROOT/lib/modules/$rel
    [[ -f $KROOT/boot/config-$rel ]] && config=$KROOT/boot/config-$rel
    origin=$(basename "$deb")
    IMAGE_ID=$(printf 'kernel=%s\npackage=%s\n' "$rel" "$origin")
    ko=$(crashtest_package_ko "$rel" "$IMG_VER")
    if [[ ! -s $ko ]]; then
      if [[ $(pkg_installed_version "$HDR_PKG" || true) == "$IMG_VER" && -f /usr/src/linux-headers-$rel/Makefile ]]; then
        build_module "/usr/src/linux-headers-$rel" "$rel" "$ko" || ko=
      else
        MODULE_REASON="no kernel headers for $rel: ${HDR_ERR:-$HDR_PKG $IMG_VER is not installed}"
        ko=
      fi
    fi
  else
    rel=$(basename "$moddir")
    vmlinuz=$bzimage
    local magic brel
    magic=$(dd if="$bzimage" bs=1 skip=514 count=4 2>/dev/null || true)
    [[ $magic == HdrS ]] || die "$bzimage is not a bzImage (no HdrS header)"
    brel=$(bzimage_release "$bzimage")
    [[ -z $brel || $brel == "$rel" ]] || die "$bzimage is kernel $brel but $moddir is for $rel"
    if [[ -z $kdir ]]; then
      if [[ -f $moddir/build/Makefile ]]; then
        kdir=$(cd "$moddir/build" && pwd)
      elif [[ -f /usr/src/linux-headers-$rel/Makefile ]]; then
        kdir=/usr/src/linux-headers-$rel
      fi
    fi
    if [[ -n $kdir && -f $kdir/.config ]]; then
      config=$kdir/.config
    elif [[ -f $moddir/build/.config ]]; then
      config=$moddir/build/.config
    elif [[ -f $(dirname "$bzimage")/config-$rel ]]; then
      config=$(dirname "$bzimage")/config-$rel
    fi
    origin=$bzimage
    IMAGE_ID=$(printf 'kernel=%s\nbzimage=%s\n' "$rel" "$bzimage")
    if [[ -z $kdir ]]; then
      MODULE_REASON="no kernel headers or build tree for $rel"
    elif [[ ! -f $kdir/Makefile ]]; then
      MODULE_REASON="build tree $kdir has no Makefile"
    else
      ko=$(crashtest_tree_ko "$kdir" "$rel")
      build_module "$kdir" "$rel" "$ko" || ko=
    fi
  fi
  IMAGE_ID+=$'\n'
  # Compressed modules need their decompressor here.
  if [[ -d $moddir/kernel ]]; then
    if [[ -n $(find "$moddir/kernel" -name '*.ko.xz' -print -quit) ]] && ! command -v xz >/dev/null; then
      apt_install xz-utils || exit 1
    fi
    if [[ -n $(find "$moddir/kernel" -name '*.ko.zst' -print -quit) ]] && ! command -v zstd >/dev/null; then
      apt_install zstd || exit 1
    fi
  fi
  [[ -z $MODULE_REASON ]] || say "no crashtest module: $MODULE_REASON"
  REL=$rel
  kexec_support "$config"

  # The crash-kernel initramfs (goes into the first-stage image as /boot/crash-initrd.cpio.gz).
  say "crash initramfs: kernel $rel"
  copy_kernel_files "$vmlinuz" "$config" "$rel" "$out"
  local croot="$cache/stage/crash"
  stage_skeleton "$croot"
  stage_elf "$makedumpfile" "$croot" /usr/bin/makedumpfile
  [[ -n $vmcore_dmesg ]] && stage_elf "$vmcore_dmesg" "$croot" /sbin/vmcore-dmesg
  stage_modules "$moddir" "$croot" "${CRASH_MODULES[@]}"
  stage_init_and_scenarios "$croot"
  printf 'crash-initrd=1\n' >>"$croot/etc/crashtest-image"
  pack_cpio "$croot" "$out/crash-initrd.cpio.gz"

  # The first-stage image.
  say "guest: kernel $rel"
  local groot="$cache/stage/guest"
  stage_skeleton "$groot"
  stage_elf "$kexec" "$groot" /sbin/kexec
  stage_elf "$makedumpfile" "$groot" /usr/bin/makedumpfile
  [[ -n $vmcore_dmesg ]] && stage_elf "$vmcore_dmesg" "$groot" /sbin/vmcore-dmesg
  stage_modules "$moddir" "$groot" "${GUEST_MODULES[@]}"
  local hyperv=no pvpanic=no
  mod_available hv_vmbus && hyperv=yes
  mod_available pvpanic_mmio && pvpanic=yes
  [[ -z $ko ]] || install -D -m 0644 "$ko" "$groot/lib/modules/$rel/extra/crashtest.ko"
  stage_init_and_scenarios "$groot"
  # The kernel to kexec into (the same bzImage) and the crash initramfs.
  mkdir -p "$groot/boot"
  cp "$out/vmlinuz" "$groot/boot/vmlinuz"
  cp "$out/crash-initrd.cpio.gz" "$groot/boot/crash-initrd.cpio.gz"
  pack_cpio "$groot" "$out/initramfs.cpio.gz"

  {
    printf 'kernel_release=%s\nsource=%s\n' "$rel" "$origin"
    printf 'kexec=%s\n' "$KEXEC"
    [[ $KEXEC == yes ]] || printf 'kexec_reason=%s\n' "$KEXEC_REASON"
    if [[ -n $ko ]]; then
      printf 'module=yes\n'
    else
      printf 'module=no\nmodule_reason=%s\n' "$MODULE_REASON"
    fi
    printf 'hyperv=%s\npvpanic=%s\n' "$hyperv" "$pvpanic"
  } >"$out/image-info.new"
  install_if_changed "$out/image-info.new" "$out/image-info" || true
  rm -f "$out/image-info.new"
  say "done: $out (kexec=$KEXEC module=$([[ -n $ko ]] && echo yes || echo no) hyperv=$hyperv pvpanic=$pvpanic)"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  crashtest_image_main "$@"
fi
