#!/usr/bin/env bash
# A real S3-protocol server for the delivery tests, as its own process on the loopback:
# the standalone server of PyPI's moto, installed into a venv under build/ on first use.
#
#   s3-server.sh install        create build/moto-venv (pip install 'moto[server]') if needed
#   s3-server.sh run PORT       install if needed, then exec the server on 127.0.0.1:PORT
#                               (the caller holds its pid and stops it with a signal)
#
# Debian's radosgw (bookworm: Ceph 16.2) was looked at first: it has no standalone backend
# (dbstore/posix came with later releases), so a one-node setup needs a monitor, a manager and
# an OSD besides radosgw, keyrings and pools; that does not come up within a minute here.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${MOTO_VENV:-$root/build/moto-venv}"

install() {
    if [ -x "$venv/bin/moto_server" ]; then
        return
    fi
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'moto[server]' >&2
}

case "${1:-}" in
install) install ;;
run)
    port="${2:?usage: s3-server.sh run PORT}"
    install
    exec "$venv/bin/moto_server" -H 127.0.0.1 -p "$port"
    ;;
*)
    echo "usage: $0 install | run PORT" >&2
    exit 2
    ;;
esac
