#!/bin/sh
# crashtest=panic: load the crash-reporting modules, then panic the kernel via sysrq.
# Nothing after the sysrq write runs; the VMM sees pvpanic / Hyper-V crash MSRs.
modprobe pvpanic-mmio || echo "CRASHTEST: panic: warning: modprobe pvpanic-mmio failed"
modprobe hv_vmbus || echo "CRASHTEST: panic: warning: modprobe hv_vmbus failed"
echo "CRASHTEST: panic: triggering"
echo 1 >/proc/sys/kernel/sysrq
echo c >/proc/sysrq-trigger
