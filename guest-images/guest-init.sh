#!/bin/sh
# /init of the crashvmm guest initramfs (busybox sh, PID 1).
#
# Runs /scenarios/<name>.sh for the kernel parameter crashtest=<name>, then powers off.
# PID 1 must never exit (the kernel would panic), so every path ends in halt_now.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

# The initramfs has no /dev/console node: mount devtmpfs first, then point stdio at the console.
mount -t devtmpfs -o mode=0755 devtmpfs /dev 2>/dev/null
if [ -c /dev/console ]; then
	exec 0</dev/console 1>/dev/console 2>&1
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run

halt_now() {
	# Let the console send what is queued (stty with a setting does tcsetattr(TCSADRAIN)),
	# so that the last markers are not cut off by the power-off.
	timeout 2 stty "$(stty -g)" 2>/dev/null
	sync
	poweroff -f
	# Only reached when the power-off request itself failed.
	echo "CRASHTEST: error: poweroff -f failed; halting in a sleep loop"
	while :; do sleep 3600; done
}

scenario=
# The command line is one line of blank-separated words: split it on purpose.
set -f
# shellcheck disable=SC2013
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	crashtest=*) scenario=${arg#crashtest=} ;;
	esac
done
set +f

case "$scenario" in
'' | *[!A-Za-z0-9_-]*) valid=0 ;;
*) valid=1 ;;
esac
if [ "$valid" != 1 ] || [ ! -f "/scenarios/$scenario.sh" ]; then
	echo "CRASHTEST: error: unknown scenario '$scenario'"
	halt_now
fi

export CRASHTEST_SCENARIO="$scenario"
echo "CRASHTEST: scenario $scenario starting (kernel $(uname -r))"
# A child shell: an 'exit' or an error in the scenario cannot end PID 1.
/bin/sh "/scenarios/$scenario.sh"
rc=$?
echo "CRASHTEST: scenario $scenario returned rc=$rc"
halt_now
