#!/bin/sh
# crashtest=kdump-capture: runs in the crash kernel started by crashtest=kdump (not meant to be
# booted directly). Reports /proc/vmcore, prints the marker and powers off.
# Prints "CRASHTEST: kdump: crash kernel running", "CRASHTEST: kdump: vmcore <bytes> bytes"
# (or "CRASHTEST: kdump: error: no /proc/vmcore"), then "CRASHTEST: kdump-capture: marker".
echo "CRASHTEST: kdump: crash kernel running"
modprobe hv_vmbus || echo "CRASHTEST: kdump: warning: modprobe hv_vmbus failed"
if [ -e /proc/vmcore ]; then
	# st_size of /proc/vmcore is the dump size; reading it would copy all of the old RAM.
	echo "CRASHTEST: kdump: vmcore $(stat -c %s /proc/vmcore) bytes"
else
	echo "CRASHTEST: kdump: error: no /proc/vmcore (not a crash kernel, or no elfcorehdr=)"
fi
# The dump: to the VMM's crash disk (virtio-blk over virtio-mmio, found through ACPI LNRO0005),
# in makedumpfile's flattened format (-F, a stream: no seeking on the raw disk), compressed,
# without zero, cache, user and free pages (-d 31). crashvmm takes it from the disk once this
# kernel powers off.
modprobe virtio_mmio 2>/dev/null
modprobe virtio_blk 2>/dev/null
# The crash disk is the virtio disk whose serial is crashvmm-crashdisk.
disk=
i=0
while [ -z "$disk" ] && [ "$i" -lt 50 ]; do
	for s in /sys/block/vd*/serial; do
		[ -r "$s" ] && [ "$(cat "$s")" = crashvmm-crashdisk ] && disk=/dev/$(basename "$(dirname "$s")")
	done
	[ -n "$disk" ] || usleep 100000
	i=$((i + 1))
done
if [ -n "$disk" ] && [ -b "$disk" ] && [ -e /proc/vmcore ]; then
	echo "CRASHTEST: kdump: writing the dump to $disk"
	if makedumpfile -F -c -d 31 --message-level 7 /proc/vmcore >"$disk"; then
		sync
		echo "CRASHTEST: kdump: dump written"
	else
		echo "CRASHTEST: kdump: error: makedumpfile failed"
	fi
else
	echo "CRASHTEST: kdump: no crash disk (serial crashvmm-crashdisk): no dump written"
fi
# For the record: what the crash kernel has (it runs inside the crashkernel= reservation).
grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo | tr -s ' ' | tr '\n' ' '
echo
echo "CRASHTEST: kdump-capture: marker"
# Let the console drain before the power-off (see guest-init.sh halt_now).
timeout 2 stty "$(stty -g)" 2>/dev/null
sync
poweroff -f
