// SPDX-License-Identifier: GPL-2.0
/*
 * crashvmm test module: hang every CPU with interrupts disabled, the way a hard lockup does.
 * Loaded by the guest's `kdump` scenario with crashtest.trigger=lockup; only an NMI (from the
 * VMM's watchdog) gets the guest out, into its crash kernel.
 */
#include <linux/module.h>
#include <linux/smp.h>
#include <linux/irqflags.h>
#include <linux/processor.h>

static void spin(void *unused)
{
	local_irq_disable();
	for (;;)
		cpu_relax();
}

static int __init lockup_init(void)
{
	pr_emerg("crashvmm-lockup: hanging every CPU with interrupts disabled\n");
	smp_call_function(spin, NULL, 0);
	spin(NULL);
	return 0;
}

module_init(lockup_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("crashvmm test: hard lockup on every CPU");
