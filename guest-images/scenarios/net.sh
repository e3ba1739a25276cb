#!/bin/sh
# crashtest=net: a guest on the network, then its kdump. crashvmm gives it a virtio-net device on
# a TAP whose host side is 192.168.127.1/24 (in the test host's own network namespace, or a
# private one on a real host), with two TCP peers there (busybox nc, set up by the runner):
# port 5001 keeps what the guest sends, port 5002 sends the runner's file.
#
# The guest brings eth0 up as 192.168.127.2/24, pings the host, sends 1 MiB of random bytes to
# port 5001 and hashes what port 5002 sends; then it runs scenarios/kdump.sh (crash kernel
# loaded, sysrq crash). The runner compares the hashes with the files on its side.
#
# Prints "CRASHTEST: net: eth0 <mac>", "CRASHTEST: net: bus <parent device>", a "CRASHTEST: net:
# interrupt <line of /proc/interrupts>" per interrupt of the device, "CRASHTEST: net: ping ok", "CRASHTEST: net: sent <sha256>",
# "CRASHTEST: net: received <sha256>", "CRASHTEST: net: counters rx_packets=N tx_packets=N ...",
# then kdump.sh's lines; on a failure "CRASHTEST: net: error: <reason>" and rc=1. Among the
# counters, rx_length_errors is virtio_net's count of received frames it dropped because their
# buffers were not all returned or were overrun.
fail() {
	echo "CRASHTEST: net: error: $*"
	exit 1
}

HOST=192.168.127.1
GUEST=192.168.127.2

. /scenarios/eth0.sh
eth0_up "$GUEST/24"
echo "CRASHTEST: net: eth0 $(cat /sys/class/net/eth0/address)"
# Where the device is (a PCI function's address, or the virtio-mmio platform device) and its
# interrupts (per-queue MSI-X vectors, or one IOAPIC line).
dev=$(readlink -f /sys/class/net/eth0/device)
parent=${dev%/*}
echo "CRASHTEST: net: bus ${parent##*/}"
grep "${dev##*/}" /proc/interrupts | while read -r line; do echo "CRASHTEST: net: interrupt $line"; done

# The first packets wait for ARP: allow the deadline, then want every one of the replies.
out=$(ping -c 3 -w 30 "$HOST" 2>&1) || fail "ping $HOST: $(echo "$out" | tail -n 2 | tr '\n' ' ')"
echo "CRASHTEST: net: $(echo "$out" | grep 'packets transmitted')"
echo "CRASHTEST: net: ping ok"

# Guest to host: the file's bytes go out through cat on the connection; nc ends when cat does.
head -c 1048576 /dev/urandom >/tmp/tx.bin || fail "cannot make /tmp/tx.bin"
sent=$(sha256sum </tmp/tx.bin | cut -d' ' -f1)
nc -w 30 "$HOST" 5001 -e cat /tmp/tx.bin || fail "nc $HOST 5001 (send) failed"
echo "CRASHTEST: net: sent $sent"

# Host to guest: the connection's bytes are hashed until the host closes it.
nc -w 30 "$HOST" 5002 -e sh -c 'sha256sum >/tmp/rx.sha256' || fail "nc $HOST 5002 (receive) failed"
received=$(cut -d' ' -f1 </tmp/rx.sha256)
echo "CRASHTEST: net: received $received"

s=/sys/class/net/eth0/statistics
echo "CRASHTEST: net: counters rx_packets=$(cat $s/rx_packets) tx_packets=$(cat $s/tx_packets)" \
	"rx_errors=$(cat $s/rx_errors) tx_errors=$(cat $s/tx_errors) rx_dropped=$(cat $s/rx_dropped)" \
	"rx_length_errors=$(cat $s/rx_length_errors)"

# The crash with networking on: kdump.sh loads the crash kernel and panics.
. /scenarios/kdump.sh
