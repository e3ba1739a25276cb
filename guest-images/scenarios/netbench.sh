#!/bin/sh
# crashtest=netbench: the guest side of `make bench`'s network part (integration/src/bench/net.rs),
# the same under crashvmm and QEMU (virtio-pci both). The host side is 192.168.127.1 on
# the TAP, where `bench net-peer` times everything:
#   1. guest to host: dd writes crashtest.net_mib MiB of zeros into a connection to port 5001;
#   2. host to guest: the guest reads what port 5002 sends until the host closes it;
#   3. round trips: the guest serves one connection on port 5003 with cat (an echo), which the
#      peer uses for its 1-byte request/response exchanges; the guest powers off after it.
# Prints "CRASHTEST: netbench: ready" once eth0 is up, "CRASHTEST: netbench: done" at the end,
# "CRASHTEST: netbench: error: <reason>" on a failure (rc=1).
fail() {
	echo "CRASHTEST: netbench: error: $*"
	exit 1
}

HOST=192.168.127.1
GUEST=192.168.127.2
mib=16
set -f
# shellcheck disable=SC2013
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	crashtest.net_mib=*) mib=${arg#crashtest.net_mib=} ;;
	esac
done
set +f

. /scenarios/eth0.sh
eth0_up "$GUEST/24"
# The echo server first: the peer connects once the transfers are over.
nc -l -p 5003 -e cat &
echo_pid=$!
ping -c 1 -w 30 "$HOST" >/dev/null 2>&1 || fail "no reply from $HOST"
echo "CRASHTEST: netbench: ready"

nc -w 30 "$HOST" 5001 -e dd if=/dev/zero bs=65536 count=$((mib * 16)) 2>/dev/null || fail "send to port 5001 failed"
nc -w 30 "$HOST" 5002 -e sh -c 'cat >/dev/null' || fail "receive from port 5002 failed"
wait "$echo_pid"
echo "CRASHTEST: netbench: done"
