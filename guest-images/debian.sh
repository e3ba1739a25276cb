#!/usr/bin/env bash
# Debian packages for the build, all from one set of apt lists.
#
#   guest-images/debian.sh install PKG...     install the packages that are missing (make deps)
#
# Also sourced by build.sh, which resolves its kernels through the same functions. The rule
# (Debian drops superseded kernel ABIs from its archive within days, and a fresh machine's lists
# can be older than that): lists older than APT_LISTS_MAX_AGE_HOURS (default 24) are refreshed
# with `apt-get update` before anything is downloaded from them; a download that fails anyway
# refreshes them once more (`apt_refresh` runs `apt-get update` at most once per run) and the
# caller resolves everything again from the new lists.
#
# Environment: APT_LISTS_MAX_AGE_HOURS; APT_CONFIG (apt's own: other lists and sources, which
# the tests use for a local archive). The caller sets CACHE_DIR (downloads, logs, the refresh
# stamp) before sourcing; `install` defaults it to build/cache.

APT_REFRESHED=0     # 1 once this run has run apt-get update
APT_UNREACHABLE=0   # 1 when that update failed
: "${APT_LISTS_MAX_AGE_HOURS:=24}"

apt_say() { printf '%s: %s\n' "${APT_WHO:-images}" "$*"; }
apt_log() { printf '%s/apt.log' "$CACHE_DIR"; }

# Seconds since the apt lists were last known to be current: the newest of their Release files
# (apt gives them the archive's time, or the download's) and the stamp of this build's last
# `apt-get update` (apt leaves a Release file that did not change untouched).
apt_lists_age() {
  local lists newest
  eval "$(apt-config shell lists Dir::State::Lists/d)"
  newest=$({
    find "${lists:-/var/lib/apt/lists}" -maxdepth 1 -name '*Release' -printf '%T@\n' 2>/dev/null
    [[ -e $CACHE_DIR/apt-lists.refreshed ]] && stat -c %Y "$CACHE_DIR/apt-lists.refreshed"
  } | sort -n | tail -n 1)
  newest=${newest%.*}
  [[ -n $newest ]] || newest=0
  printf '%d' $(($(date +%s) - newest))
}

apt_lists_stale() {
  (($(apt_lists_age) > APT_LISTS_MAX_AGE_HOURS * 3600))
}

# Human age of the lists: "3 h", "196 days", "never updated".
apt_lists_age_text() {
  local age
  age=$(apt_lists_age)
  if ((age > 100 * 365 * 86400)); then
    printf 'never updated'
  elif ((age >= 2 * 86400)); then
    printf '%d days old' $((age / 86400))
  else
    printf '%d h old' $((age / 3600))
  fi
}

# apt-get update, at most once per run. Fails (and sets APT_UNREACHABLE) when any source could
# not be fetched: lists half old, half new are not one consistent set.
apt_refresh() {
  ((APT_REFRESHED)) && return 1
  APT_REFRESHED=1
  if ((EUID != 0)); then
    apt_say "the apt lists are $(apt_lists_age_text); not root, so not refreshing them"
    APT_UNREACHABLE=1
    return 1
  fi
  apt_say "refreshing the apt lists ($(apt_lists_age_text)): apt-get update"
  if ! apt-get update --error-on=any >>"$(apt_log)" 2>&1; then
    APT_UNREACHABLE=1
    apt_say "apt-get update failed: the Debian archive cannot be reached (see $(apt_log))"
    return 1
  fi
  touch "$CACHE_DIR/apt-lists.refreshed"
}

# Refresh the lists first when they are too old to download from.
apt_refresh_if_stale() {
  ((APT_REFRESHED)) && return 0
  apt_lists_stale || return 0
  apt_refresh || true
}

pkg_installed() {
  local st
  st=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
  [[ $st == *" ok installed" ]]
}

# Version of an installed package, empty when it is not installed.
pkg_installed_version() {
  pkg_installed "$1" && dpkg-query -W -f='${Version}' "$1"
}

# The version apt would install (from the current lists), empty when apt knows no such package.
candidate_version() {
  apt-cache show --no-all-versions "$1" 2>/dev/null \
    | awk '!found && /^Version:/ { print $2; found = 1 }' || true
}

# apt_install PKG...: apt-get install of what is missing, from fresh lists (downloads kept in
# CACHE_DIR/apt); a failure refreshes them once and tries again.
apt_install() {
  local missing=() p
  for p in "$@"; do
    pkg_installed "${p%%=*}" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  ((EUID == 0)) || { apt_say "error: missing packages: ${missing[*]} (run as root, or: apt-get install --no-install-recommends ${missing[*]})" >&2; return 1; }
  apt_refresh_if_stale
  apt_say "installing ${missing[*]}"
  mkdir -p "$CACHE_DIR/apt/partial"
  local cmd=(apt-get -o "Dir::Cache::archives=$CACHE_DIR/apt" install -y --no-install-recommends "${missing[@]}")
  DEBIAN_FRONTEND=noninteractive "${cmd[@]}" >>"$(apt_log)" 2>&1 && return 0
  if apt_refresh; then
    apt_say "apt-get install failed; installing again from the refreshed lists"
    DEBIAN_FRONTEND=noninteractive "${cmd[@]}" >>"$(apt_log)" 2>&1 && return 0
  fi
  apt_say "error: apt-get install ${missing[*]} failed (see $(apt_log))" >&2
  return 1
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  : "${CACHE_DIR:=$(dirname "$here")/build/cache}"
  mkdir -p "$CACHE_DIR"
  CACHE_DIR=$(cd "$CACHE_DIR" && pwd)
  APT_WHO=deps
  case ${1:-} in
    install)
      shift
      : >"$(apt_log)"
      apt_install "$@"
      ;;
    *)
      printf 'usage: %s install PKG...\n' "$0" >&2
      exit 2
      ;;
  esac
fi
