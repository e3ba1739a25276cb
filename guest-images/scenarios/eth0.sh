#!/bin/sh
# Not a scenario: net.sh and netbench.sh source it for eth0_up.
#
# eth0_up ADDR/LEN: load virtio_net (over virtio-pci or virtio-mmio, whichever the VMM offers), wait
# up to 5 s for eth0, then bring lo up and eth0 up with ADDR/LEN. A failure calls the sourcing
# script's fail() with the reason.
eth0_up() {
	modprobe virtio_mmio 2>/dev/null
	modprobe virtio_pci 2>/dev/null
	modprobe virtio_net || fail "modprobe virtio_net failed"
	i=0
	until [ -e /sys/class/net/eth0 ]; do
		i=$((i + 1))
		[ "$i" -lt 50 ] || fail "no eth0 after loading virtio_net: $(ls /sys/class/net | tr '\n' ' ')"
		usleep 100000
	done
	ip link set lo up
	ip addr add "$1" dev eth0 || fail "ip addr add $1 dev eth0 failed"
	ip link set eth0 up || fail "ip link set eth0 up failed"
}
