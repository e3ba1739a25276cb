#!/bin/sh
# crashtest=case: one crash-injection test case (`crashvmm test`), chosen by kernel parameters:
#
#   crashtest.trigger=NAME  how the kernel is crashed (below)
#   crashtest.kdump=1|0     first load the crash kernel as crashtest=kdump does (default 0); it
#                           runs crashtest=kdump-capture (crashtest.capture=NAME: kdump-NAME)
#
# Triggers: sysrq-c, oom, hung-task, nmi-unknown and serial-sysrq (the host sends the NMI or the
# UART break), and, with the crashtest module (/lib/modules/REL/extra/crashtest.ko): oops, bug,
# warn, softlockup, hardlockup (every CPU spins with interrupts off; the host's watchdog NMI gets
# the guest out).
#
# Prints "CRASHTEST: case: settings ..." then "CRASHTEST: case: triggering NAME" right before the
# crash, or "CRASHTEST: case: waiting for the host (NAME)" when the host must act;
# "CRASHTEST: case: skip: ..." and returns 0 when this image cannot run the case;
# "CRASHTEST: case: error: ..." and returns 1 on failure (init then powers off).

fail() {
	echo "CRASHTEST: case: error: $*"
	exit 1
}

# param NAME DEFAULT: the value of crashtest.NAME= on the command line (the last one), or DEFAULT.
param() {
	_v=$2
	set -f
	# shellcheck disable=SC2013
	for _a in $(cat /proc/cmdline); do
		case "$_a" in
		"crashtest.$1="*) _v=${_a#*=} ;;
		esac
	done
	set +f
	echo "$_v"
}

# setk PATH VALUE: the sysctl /proc/sys/PATH; a kernel without it fails the case.
setk() {
	[ -w "/proc/sys/$1" ] || fail "no /proc/sys/$1 in this kernel"
	echo "$2" >"/proc/sys/$1" || fail "cannot set /proc/sys/$1 to $2"
}

# Let the console send what is queued (stty with a setting does tcsetattr(TCSADRAIN)): otherwise
# the UART interrupt is still sending the markers while the panic printk writes.
drain() {
	timeout 2 stty "$(stty -g)" 2>/dev/null || sleep 1
}

triggering() {
	echo "CRASHTEST: case: triggering $trigger"
	drain
}

# A trigger the host completes (an NMI, a UART break): say so, then give it 300 s.
wait_for_host() {
	echo "CRASHTEST: case: waiting for the host ($trigger)"
	drain
	sleep 300
	fail "nothing came from the host within 300 s ($trigger)"
}

trigger=$(param trigger "")
kdump=$(param kdump 0)
capture=$(param capture capture)
module="/lib/modules/$(uname -r)/extra/crashtest.ko"

case "$trigger" in
sysrq-c | oom | hung-task | nmi-unknown | serial-sysrq) needs_module=0 ;;
oops | bug | warn | softlockup | hardlockup) needs_module=1 ;;
*) fail "unknown trigger '$trigger'" ;;
esac
case "$kdump" in
0 | 1) ;;
*) fail "crashtest.kdump must be 0 or 1, not '$kdump'" ;;
esac
if [ "$needs_module" = 1 ] && [ ! -f "$module" ]; then
	echo "CRASHTEST: case: skip: no crashtest module for this kernel"
	exit 0
fi

modprobe pvpanic-mmio || echo "CRASHTEST: case: warning: modprobe pvpanic-mmio failed"
modprobe hv_vmbus || echo "CRASHTEST: case: warning: modprobe hv_vmbus failed"

# The crash kernel, exactly as crashtest=kdump loads it (see kdump.sh).
if [ "$kdump" = 1 ]; then
	[ -r /sys/kernel/kexec_crash_size ] || fail "no kexec in this kernel (no /sys/kernel/kexec_crash_size)"
	crash_size=$(cat /sys/kernel/kexec_crash_size)
	[ "$crash_size" -gt 0 ] 2>/dev/null || fail "no crashkernel= reservation (kexec_crash_size=$crash_size; add crashkernel=192M)"
	echo "CRASHTEST: case: crashkernel reservation $crash_size bytes"
	[ -f "/scenarios/kdump-$capture.sh" ] || fail "no crash-kernel scenario kdump-$capture"
	append="console=ttyS0 nr_cpus=1 reset_devices irqpoll panic=-1 crashtest=kdump-$capture"
	if ! out=$(kexec -p /boot/vmlinuz --initrd=/boot/crash-initrd.cpio.gz --append="$append" 2>&1); then
		# A kernel with kexec_file_load only (CONFIG_KEXEC_FILE without CONFIG_KEXEC).
		if ! out2=$(kexec -s -p /boot/vmlinuz --initrd=/boot/crash-initrd.cpio.gz --append="$append" 2>&1); then
			fail "kexec -p failed: $(echo "$out" | tr '\n' ' ')(kexec -s -p: $(echo "$out2" | tr '\n' ' '))"
		fi
		out=$out2
	fi
	[ -n "$out" ] && echo "$out"
	loaded=$(cat /sys/kernel/kexec_crash_loaded 2>/dev/null)
	[ "$loaded" = 1 ] || fail "kexec -p returned 0 but /sys/kernel/kexec_crash_loaded is '$loaded'"
	echo "CRASHTEST: case: crash kernel loaded"
fi

# What the trigger needs set up before it.
case "$trigger" in
sysrq-c | serial-sysrq) setk kernel/sysrq 1 ;;
oom) setk vm/panic_on_oom 1 ;;
hung-task)
	setk kernel/hung_task_panic 1
	# A small ext2 file system on a loop device over tmpfs, to freeze.
	# Modules where they are not built in; ext4 needs crc32c to mount (busybox modprobe knows no
	# aliases, so the kernel cannot load "crypto-crc32c" itself).
	modprobe loop 2>/dev/null
	modprobe crc32c_generic 2>/dev/null
	modprobe ext4 2>/dev/null
	img=/tmp/crashtest-hung.img
	mnt=/tmp/crashtest-hung
	dd if=/dev/zero of="$img" bs=1024 count=4096 2>/dev/null || fail "cannot create $img"
	dev=$(losetup -f 2>&1) || fail "no free loop device: $dev"
	out=$(losetup "$dev" "$img" 2>&1) || fail "losetup $dev $img failed: $out"
	# busybox mke2fs wants a block device.
	out=$(mke2fs "$dev" 2>&1) || fail "mke2fs $dev failed: $(echo "$out" | tail -n 1)"
	mkdir -p "$mnt"
	out=$(mount -t ext2 "$dev" "$mnt" 2>&1) || out=$(mount -t ext4 "$dev" "$mnt" 2>&1) ||
		fail "cannot mount $dev: $out"
	;;
nmi-unknown) setk kernel/unknown_nmi_panic 1 ;;
oops | bug) setk kernel/panic_on_oops 1 ;;
warn) setk kernel/panic_on_warn 1 ;;
softlockup)
	setk kernel/softlockup_panic 1
	[ -w /proc/sys/kernel/soft_watchdog ] && setk kernel/soft_watchdog 1
	# The soft-lockup detector fires after 2 * watchdog_thresh seconds.
	setk kernel/watchdog_thresh 2
	;;
hardlockup)
	setk kernel/unknown_nmi_panic 1
	# Should the guest's own hard-lockup detector see it first, that panics too.
	[ -w /proc/sys/kernel/hardlockup_panic ] && echo 1 >/proc/sys/kernel/hardlockup_panic
	;;
esac

echo "CRASHTEST: case: settings" \
	"panic_on_oops=$(cat /proc/sys/kernel/panic_on_oops 2>/dev/null || echo -)" \
	"crash_kexec_post_notifiers=$(cat /sys/module/kernel/parameters/crash_kexec_post_notifiers 2>/dev/null || echo -)" \
	"kexec_crash_loaded=$(cat /sys/kernel/kexec_crash_loaded 2>/dev/null || echo -)"

case "$trigger" in
sysrq-c)
	triggering
	echo c >/proc/sysrq-trigger
	;;
oom)
	triggering
	# tail keeps the last lines of a file without newlines: its buffer grows without bound.
	tail /dev/zero >/dev/null
	fail "the memory hog (tail /dev/zero) ended without an OOM panic"
	;;
hung-task)
	triggering
	# The hung-task detector panics for a task in D state for longer than the timeout
	# (checked every hung_task_check_interval_secs, or every timeout when that is 0).
	setk kernel/hung_task_timeout_secs 5
	[ -w /proc/sys/kernel/hung_task_check_interval_secs ] && setk kernel/hung_task_check_interval_secs 1
	fsfreeze --freeze "$mnt" || fail "fsfreeze --freeze $mnt failed"
	# Blocks in sb_start_write (D state) until the file system is thawed: never.
	(echo blocked >"$mnt/blocked") &
	sleep 120
	fail "no hung-task panic within 120 s"
	;;
nmi-unknown | serial-sysrq) wait_for_host ;;
oops | bug | warn | softlockup)
	triggering
	insmod "$module" action="$trigger"
	;;
hardlockup)
	echo "CRASHTEST: case: waiting for the host ($trigger)"
	drain
	insmod "$module" action=hardlockup
	;;
esac
# Not reached: the crash ends this kernel (or jumps to the crash kernel).
fail "still running after $trigger"
