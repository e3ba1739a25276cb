#!/bin/sh
# crashtest=kdump (first kernel): load a crash kernel with kexec -p, then panic via sysrq.
# Needs crashkernel= on the kernel command line (e.g. crashkernel=192M with 768 MiB of RAM).
# The crash kernel is the same bzImage (/boot/vmlinuz) with the crash initramfs
# (/boot/crash-initrd.cpio.gz); it runs crashtest=kdump-capture (scenarios/kdump-capture.sh).
# Prints "CRASHTEST: kdump: crash kernel loaded" and "CRASHTEST: kdump: triggering", or
# "CRASHTEST: kdump: error: <reason>" and returns 1 (init then powers off).
fail() {
	echo "CRASHTEST: kdump: error: $*"
	exit 1
}

modprobe pvpanic-mmio || echo "CRASHTEST: kdump: warning: modprobe pvpanic-mmio failed"
modprobe hv_vmbus || echo "CRASHTEST: kdump: warning: modprobe hv_vmbus failed"

[ -r /sys/kernel/kexec_crash_size ] || fail "no /sys/kernel/kexec_crash_size (kernel without kexec?)"
crash_size=$(cat /sys/kernel/kexec_crash_size)
[ "$crash_size" -gt 0 ] 2>/dev/null || fail "no crashkernel reservation (kexec_crash_size=$crash_size; add crashkernel=192M)"
echo "CRASHTEST: kdump: crashkernel reservation $crash_size bytes"

# Which crash-kernel scenario to run: crashtest.capture=NAME on our command line selects
# scenarios/kdump-NAME.sh (default: capture; hang makes the crash kernel hang, to test the VMM's
# --kdump-timeout).
capture=capture
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	crashtest.capture=*) capture=${arg#crashtest.capture=} ;;
	esac
done
[ -f "/scenarios/kdump-$capture.sh" ] || fail "no crash-kernel scenario kdump-$capture"

# kexec_load (no -s): kexec-tools builds purgatory, boot_params and the ELF core header itself
# from /proc/iomem, /sys/firmware/memmap, /sys/kernel/boot_params and /proc/kcore, and appends
# elfcorehdr= (and acpi_rsdp= when it finds the RSDP) to the crash kernel's command line.
if ! out=$(kexec -p /boot/vmlinuz --initrd=/boot/crash-initrd.cpio.gz \
	--append="console=ttyS0 nr_cpus=1 reset_devices irqpoll panic=-1 crashtest=kdump-$capture" 2>&1); then
	fail "kexec -p failed: $(echo "$out" | tr '\n' ' ')"
fi
[ -n "$out" ] && echo "$out"
loaded=$(cat /sys/kernel/kexec_crash_loaded 2>/dev/null)
[ "$loaded" = 1 ] || fail "kexec -p returned 0 but /sys/kernel/kexec_crash_loaded is '$loaded'"
echo "CRASHTEST: kdump: crash kernel loaded"

# crashtest.trigger=nmi: wait for an NMI from the VMM instead of crashing with sysrq.
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	crashtest.trigger=nmi)
		echo 1 >/proc/sys/kernel/unknown_nmi_panic
		echo "CRASHTEST: kdump: waiting for an NMI"
		sleep 120
		fail "no NMI came within 120 s"
		;;
	crashtest.trigger=lockup)
		# Every CPU spins with interrupts off; only an NMI (the VMM's watchdog) gets out.
		echo 1 >/proc/sys/kernel/unknown_nmi_panic
		echo "CRASHTEST: kdump: hanging with interrupts off"
		timeout 2 stty "$(stty -g)" 2>/dev/null || sleep 1
		insmod "/lib/modules/$(uname -r)/extra/crashtest.ko" action=hardlockup
		fail "still running after the crashtest module (action=hardlockup)"
		;;
	esac
done

echo "CRASHTEST: kdump: triggering"
# Wait until the console has sent everything: otherwise the UART interrupt is still sending the
# markers while the panic printk writes, and the lines come out interleaved. stty with a setting
# does tcsetattr(TCSADRAIN); the timeout bounds it in case the UART never reports empty.
timeout 2 stty "$(stty -g)" 2>/dev/null || sleep 1
echo 1 >/proc/sys/kernel/sysrq
echo c >/proc/sysrq-trigger
# Not reached: the panic jumps to the crash kernel.
fail "still running after the sysrq crash"
