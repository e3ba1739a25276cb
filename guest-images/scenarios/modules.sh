#!/bin/sh
# crashtest=modules: load the crash-path modules with modprobe, list them, power off.
# Prints "CRASHTEST: modules: loaded NAME" or "CRASHTEST: modules: failed NAME: <modprobe message>"
# per module, then "CRASHTEST: modules: ok" when all of them loaded.
# hv_vmbus refuses to load ("No such device") unless the VMM presents Hyper-V in CPUID.
failed=0
for m in pvpanic-mmio hv_vmbus virtio_mmio virtio_pci virtio_blk; do
	if msg=$(modprobe "$m" 2>&1); then
		echo "CRASHTEST: modules: loaded $m"
	else
		echo "CRASHTEST: modules: failed $m: $msg"
		failed=1
	fi
done
lsmod
if [ "$failed" = 0 ]; then
	echo "CRASHTEST: modules: ok"
fi
sync
poweroff -f
