#!/bin/sh
# /init of the software-KVM test host (busybox sh, PID 1, generic Debian kernel under QEMU TCG).
#
# Loads KVM and 9p, mounts the virtio-9p share (mount tag "share") at /share, runs
# "sh /share/run.sh /share", writes its exit status to /share/testhost-rc and powers off.
# Host-side setup errors print "TESTHOST: error: ..." and write rc 125 when the share is mounted.
# PID 1 must never exit (the kernel would panic), so every path ends in finish/halt_now.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

mount -t devtmpfs -o mode=0755 devtmpfs /dev 2>/dev/null
if [ -c /dev/console ]; then
	exec 0</dev/console 1>/dev/console 2>&1
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# KVM's per-VM counts (/sys/kernel/debug/kvm/PID-FD/), which the bench's network part reads.
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null

SETUP_ERROR_RC=125
SHARE=/share
share_mounted=0

say() { echo "TESTHOST: $*"; }

halt_now() {
	sync
	poweroff -f
	echo "TESTHOST: error: poweroff -f failed; halting in a sleep loop"
	while :; do sleep 3600; done
}

# finish RC: record RC on the share (best effort), unmount, power off.
finish() {
	if [ "$share_mounted" = 1 ]; then
		if ! { echo "$1" >"$SHARE/testhost-rc.tmp" && mv -f "$SHARE/testhost-rc.tmp" "$SHARE/testhost-rc"; }; then
			say "error: cannot write $SHARE/testhost-rc"
		fi
		sync
		cd /
		umount "$SHARE" 2>/dev/null || umount -l "$SHARE" 2>/dev/null
	fi
	sync
	say "done rc=$1"
	halt_now
}

say "init started (kernel $(uname -r))"

# --- KVM --------------------------------------------------------------------------------------
kvm_error=
if grep -qw svm /proc/cpuinfo; then
	kvm_vendor=kvm_amd
elif grep -qw vmx /proc/cpuinfo; then
	kvm_vendor=kvm_intel
else
	kvm_vendor=
	kvm_error="the CPU has neither svm nor vmx (use -cpu max with TCG)"
fi
if [ -n "$kvm_vendor" ]; then
	if ! msg=$(modprobe "$kvm_vendor" 2>&1); then
		kvm_error="modprobe $kvm_vendor failed: $msg"
	fi
fi
if [ -z "$kvm_error" ]; then
	i=0
	while [ ! -c /dev/kvm ] && [ "$i" -lt 50 ]; do
		usleep 100000
		i=$((i + 1))
	done
	if [ ! -c /dev/kvm ]; then
		kvm_error="/dev/kvm did not appear after loading $kvm_vendor"
	fi
fi
if [ -z "$kvm_error" ]; then
	say "kvm ready"
else
	say "error: no /dev/kvm: $kvm_error"
	dmesg | grep -iE 'kvm|svm|vmx' | tail -n 5
fi

# --- the 9p share ----------------------------------------------------------------------------
for m in virtio_pci 9pnet_virtio 9p; do
	msg=$(modprobe "$m" 2>&1) || say "error: modprobe $m failed: $msg"
done
mkdir -p "$SHARE"
i=0
# The virtio device may still be probing when init starts: retry briefly.
while ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share "$SHARE" 2>/tmp/mount.err; do
	i=$((i + 1))
	if [ "$i" -ge 20 ]; then
		say "error: cannot mount the 9p share (mount tag 'share') at $SHARE: $(cat /tmp/mount.err)"
		finish "$SETUP_ERROR_RC"
	fi
	usleep 100000
done
share_mounted=1
rm -f "$SHARE/testhost-rc"

if [ -n "$kvm_error" ]; then
	finish "$SETUP_ERROR_RC"
fi
if [ ! -f "$SHARE/run.sh" ]; then
	say "error: $SHARE/run.sh not found"
	finish "$SETUP_ERROR_RC"
fi

# --- run -------------------------------------------------------------------------------------
say "running $SHARE/run.sh"
cd "$SHARE" || finish "$SETUP_ERROR_RC"
TESTHOST=1 sh "$SHARE/run.sh" "$SHARE"
rc=$?
finish "$rc"
