#!/usr/bin/env bash
# The image build against apt lists that name kernels the archive no longer has.
#
#   guest-images/tests/stale-lists.sh      (part of `make test`; needs dpkg-deb and apt-get)
#
# A local archive (copy:, trusted) with fake kernel packages stands in for Debian's: it first
# publishes ABI 6.1.0-90 (6.1.900-1), the lists are taken from it, then it moves on to ABI
# 6.1.0-91 (6.1.910-1) and drops -90, as Debian's security archive does. Every case runs
# `build.sh --fetch-only` with APT_CONFIG pointing apt at that archive and at lists of the test's
# own (the machine's lists and caches are not touched) and checks the kernel set it settles on:
# the guest image, its headers, its -dbg package and the host image must all come from the newer
# ABI; a -dbg package the archive lacks is one clear error.
# KEEP=1 keeps the scratch directory.
set -euo pipefail

if ((EUID != 0)); then
  # build.sh refreshes apt lists only as root (as make test runs in CI).
  echo "stale-lists: skipped: needs root (build.sh runs apt-get update only as root)"
  exit 0
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=$here/../build.sh
T=$(mktemp -d "${TMPDIR:-/tmp}/stale-lists.XXXXXX")
if [[ -n ${KEEP:-} ]]; then
  echo "stale-lists: scratch directory $T"
else
  trap 'rm -rf "$T"' EXIT
fi

passed=0 failed=0
fail() { printf 'stale-lists: FAIL %s: %s\n' "$case" "$*"; failed=$((failed + 1)); }
ok() { printf 'stale-lists: ok   %s\n' "$case"; passed=$((passed + 1)); }

# mkpkg NAME VERSION [DEPENDS] [ABI] [DBG]: a .deb in $T/debs; with ABI, the files of a kernel
# image, or with DBG=dbg those of its -dbg package (the vmlinux with debug info).
mkpkg() {
  local name=$1 ver=$2 deps=${3:-} abi=${4:-} dbg=${5:-} d
  d=$T/src/${name}_$ver
  mkdir -p "$d/DEBIAN" "$T/debs"
  {
    printf 'Package: %s\nVersion: %s\nArchitecture: amd64\n' "$name" "$ver"
    printf 'Maintainer: crashvmm tests <tests@invalid>\nDescription: stale-lists test package\n'
    [[ -z $deps ]] || printf 'Depends: %s\n' "$deps"
  } >"$d/DEBIAN/control"
  if [[ -n $abi && -n $dbg ]]; then
    mkdir -p "$d/usr/lib/debug/boot"
    printf 'not a vmlinux\n' >"$d/usr/lib/debug/boot/vmlinux-$abi"
  elif [[ -n $abi ]]; then
    mkdir -p "$d/boot" "$d/lib/modules/$abi/kernel"
    printf 'not a kernel\n' >"$d/boot/vmlinuz-$abi"
  fi
  dpkg-deb --root-owner-group -b "$d" "$T/debs/${name}_${ver}_amd64.deb" >/dev/null
}

# A kernel release: both images, the guest's headers and -dbg package, the two metapackages
# pointing at them.
mkrelease() {
  local abi=$1 ver=$2
  mkpkg "linux-image-$abi-cloud-amd64" "$ver" "" "$abi-cloud-amd64"
  mkpkg "linux-headers-$abi-cloud-amd64" "$ver"
  mkpkg "linux-image-$abi-cloud-amd64-dbg" "$ver" "" "$abi-cloud-amd64" dbg
  mkpkg "linux-image-$abi-amd64" "$ver" "" "$abi-amd64"
  mkpkg linux-image-cloud-amd64 "$ver" "linux-image-$abi-cloud-amd64 (= $ver)"
  mkpkg linux-image-amd64 "$ver" "linux-image-$abi-amd64 (= $ver)"
}

# publish ABI VERSION [EXCEPT]: the archive holds that release (without package EXCEPT) and
# nothing else.
publish() {
  local abi=$1 ver=$2 except=${3:-} deb f
  rm -rf "$T/archive"
  mkdir -p "$T/archive/pool"
  for deb in "$T"/debs/*"_${ver}_amd64.deb"; do
    [[ -z $except || ${deb##*/} != "${except}_${ver}_amd64.deb" ]] || continue
    cp "$deb" "$T/archive/pool/"
    dpkg-deb -f "$deb"
    printf 'Filename: pool/%s\nSize: %s\nSHA256: %s\n\n' "${deb##*/}" "$(stat -c %s "$deb")" \
      "$(sha256sum <"$deb" | cut -d' ' -f1)"
  done >"$T/archive/Packages"
  f=$T/archive/Packages
  {
    printf 'Origin: crashvmm-test\nLabel: crashvmm-test\nDate: %s\nSHA256:\n' "$(date -uR)"
    printf ' %s %s Packages\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "$(stat -c %s "$f")"
  } >"$T/archive/Release"
}

# The test's own apt: its sources (the local archive only), lists and caches.
mkdir -p "$T/lists/partial" "$T/aptcache/archives/partial" "$T/sources.d" "$T/prefs.d"
printf 'deb [trusted=yes] copy:%s/archive ./\n' "$T" >"$T/sources.list"
cat >"$T/apt.conf" <<EOF
Dir::State::Lists "$T/lists";
Dir::Cache "$T/aptcache";
Dir::Etc::SourceList "$T/sources.list";
Dir::Etc::SourceParts "$T/sources.d";
Dir::Etc::PreferencesParts "$T/prefs.d";
Acquire::Languages "none";
APT::Sandbox::User "root";
EOF
export APT_CONFIG=$T/apt.conf
unset GUEST_KERNEL_PKG HOST_KERNEL_PKG APT_LISTS_MAX_AGE_HOURS

take_lists() { apt-get update -q >/dev/null; }
age_lists() { touch -d '10 days ago' "$T"/lists/*Release; }

mkrelease 6.1.0-90 6.1.900-1
mkrelease 6.1.0-91 6.1.910-1

# run CACHE: build.sh --fetch-only; output in $T/log, status in $rc.
run() {
  rc=0
  "$build" --fetch-only "$T/out" "$1" >"$T/log" 2>&1 || rc=$?
}

# The set a run settled on must be the newer release, all four packages of one ABI.
check_newer_set() {
  local c=$1 want
  want="guest.package=linux-image-6.1.0-91-cloud-amd64
guest.version=6.1.910-1
host.package=linux-image-6.1.0-91-amd64
host.version=6.1.910-1
headers.package=linux-headers-6.1.0-91-cloud-amd64
headers.version=6.1.910-1
dbg.package=linux-image-6.1.0-91-cloud-amd64-dbg
dbg.version=6.1.910-1"
  ((rc == 0)) || { fail "exit status $rc"; sed 's/^/    /' "$T/log"; return 1; }
  [[ $(cat "$c/kernel-set" 2>/dev/null) == "$want" ]] || { fail "kernel-set is $(tr '\n' ' ' <"$c/kernel-set")"; return 1; }
  [[ -s $c/linux-image-6.1.0-91-cloud-amd64_6.1.910-1_amd64.deb && -s $c/linux-image-6.1.0-91-amd64_6.1.910-1_amd64.deb ]] \
    || { fail "the 6.1.0-91 images are not in the cache"; return 1; }
  [[ -s $c/apt/linux-headers-6.1.0-91-cloud-amd64_6.1.910-1_amd64.deb ]] || { fail "the 6.1.0-91 headers were not fetched"; return 1; }
  [[ -s $c/linux-image-6.1.0-91-cloud-amd64-dbg_6.1.910-1_amd64.deb ]] || { fail "the 6.1.0-91 -dbg package is not in the cache"; return 1; }
  grep -q 'fetched: guest linux-image-6.1.0-91-cloud-amd64 6.1.910-1, host linux-image-6.1.0-91-amd64 6.1.910-1, headers linux-headers-6.1.0-91-cloud-amd64 6.1.910-1' "$T/log" \
    || { fail "no 'fetched:' line for 6.1.0-91"; return 1; }
}

# 1. Lists ten days old that name -90 while the archive has -91 only: they are refreshed before
#    anything is downloaded from them.
case="old lists are refreshed before resolving"
publish 6.1.0-90 6.1.900-1
take_lists
age_lists
publish 6.1.0-91 6.1.910-1
run "$T/cache1"
if check_newer_set "$T/cache1"; then
  if ! grep -q 'refreshing the apt lists (10 days old)' "$T/log"; then
    fail "no refresh line"
  elif grep -q 'cannot be downloaded' "$T/log"; then
    fail "it tried the stale lists first"
  else
    ok
  fi
fi

# 2. The issue's failure: lists that look fresh name -90, the cache holds the -90 images (a build
#    made before the archive moved), the headers are gone from the archive. The failed headers
#    download refreshes the lists once and everything is resolved again: images and headers -91.
case="a failed headers download refreshes and resolves everything again"
publish 6.1.0-90 6.1.900-1
take_lists
run "$T/cache2"
if ((rc != 0)) || ! grep -q 'headers.package=linux-headers-6.1.0-90-cloud-amd64' "$T/cache2/kernel-set"; then
  fail "setting up: the -90 set did not fetch"; sed 's/^/    /' "$T/log"
else
  rm -f "$T/cache2"/apt/linux-headers-*.deb
  publish 6.1.0-91 6.1.910-1
  touch "$T"/lists/*Release
  run "$T/cache2"
  if check_newer_set "$T/cache2"; then
    if ! grep -q 'linux-headers-6.1.0-90-cloud-amd64 6.1.900-1 cannot be downloaded; refreshing the apt lists and resolving everything again' "$T/log"; then
      fail "no line for the failed headers download"
    elif [[ $(grep -c 'refreshing the apt lists (' "$T/log") != 1 ]]; then
      fail "apt-get update did not run exactly once"
    else
      ok
    fi
  fi
fi

# 3. The archive cannot be reached and the lists are gone: the complete set of the last fetch
#    (case 2's cache) is used, and the build says so.
case="unreachable archive: the cached set is used"
rm -rf "$T/archive" "$T"/lists/*Release "$T"/lists/*Packages*
run "$T/cache2"
if check_newer_set "$T/cache2"; then
  if grep -q 'using the set cached in' "$T/log"; then ok; else fail "no line saying the cached set is used"; fi
fi

# 4. The archive cannot be reached and nothing is cached: one error line that says what to do.
case="unreachable archive, empty cache: one clear error"
run "$T/cache4"
errs=$(grep -c '^images: error:' "$T/log" || true)
if ((rc != 1)); then
  fail "exit status $rc, expected 1"
elif [[ $errs != 1 ]] || ! grep -q '^images: error: apt lists name no kernel for linux-image-cloud-amd64, the Debian archive cannot be reached .* holds no complete kernel set' "$T/log"; then
  fail "expected one clear error line"; sed 's/^/    /' "$T/log"
else
  ok
fi

# 5. A pinned kernel that the archive dropped: the error names it and the override to change.
case="a dropped pinned kernel: the error names it"
publish 6.1.0-91 6.1.910-1
take_lists
rc=0
GUEST_KERNEL_PKG=linux-image-6.1.0-90-cloud-amd64 "$build" --fetch-only "$T/out" "$T/cache5" >"$T/log" 2>&1 || rc=$?
if ((rc != 1)); then
  fail "exit status $rc, expected 1"
elif ! grep -q '^images: error: apt knows no kernel image package linux-image-6.1.0-90-cloud-amd64 (from the override for linux-image-cloud-amd64), even from freshly updated apt lists .*GUEST_KERNEL_PKG=' "$T/log"; then
  fail "expected the error to name the package and GUEST_KERNEL_PKG"; sed 's/^/    /' "$T/log"
else
  ok
fi

# 6. The guest kernel's -dbg package is not in the archive (its vmlinux is part of the set, for
#    crash): one clear error that names it, even after a refresh.
case="a missing -dbg package: one clear error"
publish 6.1.0-91 6.1.910-1 linux-image-6.1.0-91-cloud-amd64-dbg
take_lists
run "$T/cache6"
errs=$(grep -c '^images: error:' "$T/log" || true)
if ((rc != 1)); then
  fail "exit status $rc, expected 1"
elif [[ $errs != 1 ]] || ! grep -q '^images: error: the apt lists have linux-image-6.1.0-91-cloud-amd64 6.1.910-1 but linux-image-6.1.0-91-cloud-amd64-dbg not at all, even from freshly updated apt lists' "$T/log"; then
  fail "expected one clear error line naming the -dbg package"; sed 's/^/    /' "$T/log"
else
  ok
fi

echo "stale-lists: $passed passed, $failed failed"
((failed == 0))
