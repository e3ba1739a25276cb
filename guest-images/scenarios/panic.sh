#!/bin/sh
# crashtest=panic: load the crash-reporting modules, then panic the kernel via sysrq.
# Nothing after the sysrq write runs; the VMM sees pvpanic / Hyper-V crash MSRs.
modprobe pvpanic-mmio || echo "CRASHTEST: panic: warning: modprobe pvpanic-mmio failed"
modprobe hv_vmbus || echo "CRASHTEST: panic: warning: modprobe hv_vmbus failed"
# A random marker kept in guest memory (a tmpfs file, i.e. the page cache): a host-side vmcore
# taken after the crash must contain it.
marker="CRASHVMM-MEMORY-MARKER-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$marker" >/tmp/crashtest-marker
echo "CRASHTEST: memory marker: $marker"
echo "CRASHTEST: panic: triggering"
# Wait until the console has sent everything: otherwise the UART interrupt is still sending the
# markers while the panic printk writes, and the lines come out interleaved. stty with a setting
# does tcsetattr(TCSADRAIN); the timeout bounds it in case the UART never reports empty.
timeout 2 stty "$(stty -g)" 2>/dev/null || sleep 1
echo 1 >/proc/sys/kernel/sysrq
echo c >/proc/sysrq-trigger
