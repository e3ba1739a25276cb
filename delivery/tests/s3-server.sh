#!/usr/bin/env bash
# A real S3-protocol server for the delivery tests, as its own process on the loopback:
# the standalone server of PyPI's moto, installed into a venv under build/ on first use.
#
#   s3-server.sh install        create build/moto-venv (pip install 'moto[server]' and
#                               prometheus-client, whose parser reads --metrics-file) if needed
#   s3-server.sh python         install if needed, then print the venv's python
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
    if [ -x "$venv/bin/moto_server" ] && "$venv/bin/python3" -c 'import prometheus_client' 2>/dev/null; then
        return
    fi
    mkdir -p "$(dirname "$venv")"
    [ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'moto[server]' prometheus-client >&2
}

case "${1:-}" in
install) install ;;
python)
    install
    echo "$venv/bin/python3"
    ;;
run)
    port="${2:?usage: s3-server.sh run PORT}"
    install
    exec "$venv/bin/moto_server" -H 127.0.0.1 -p "$port"
    ;;
*)
    echo "usage: $0 install | python | run PORT" >&2
    exit 2
    ;;
esac
