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
# For the record: what the crash kernel has (it runs inside the crashkernel= reservation).
grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo | tr -s ' ' | tr '\n' ' '
echo
echo "CRASHTEST: kdump-capture: marker"
# Let the console drain before the power-off (see guest-init.sh halt_now).
timeout 2 stty "$(stty -g)" 2>/dev/null
sync
poweroff -f
