// SPDX-License-Identifier: GPL-2.0
/*
 * crashvmm test module: crash or hang the kernel in one chosen way when loaded.
 *
 *   insmod crashtest.ko action=oops|bug|warn|softlockup|hardlockup
 *
 * oops        write through a NULL pointer (an oops; a panic with kernel.panic_on_oops=1)
 * bug         BUG() (an oops too)
 * warn        WARN(1, ...) (a panic with kernel.panic_on_warn=1; otherwise the load fails)
 * softlockup  this CPU spins with preemption disabled and interrupts on: the soft-lockup
 *             detector reports it after 2 * kernel.watchdog_thresh seconds (a panic with
 *             kernel.softlockup_panic=1)
 * hardlockup  every CPU spins with interrupts disabled: only an NMI (the VMM's watchdog) gets
 *             the guest out
 *
 * Loaded by the guest's `case` scenario (crashtest.trigger=NAME) and, with action=hardlockup, by
 * the `kdump`/`hang` scenario (crashtest.trigger=lockup). Each action first prints one pr_emerg
 * line naming it.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kernel.h>
#include <linux/string.h>
#include <linux/smp.h>
#include <linux/irqflags.h>
#include <linux/preempt.h>
#include <linux/processor.h>
#include <linux/bug.h>

static char *action = "";
module_param(action, charp, 0444);
MODULE_PARM_DESC(action, "oops, bug, warn, softlockup or hardlockup");

/* Read through a volatile pointer, so that the compiler cannot see the NULL. */
static int *volatile crashtest_null;

static void spin_irqs_off(void *unused)
{
	local_irq_disable();
	for (;;)
		cpu_relax();
}

static int __init crashtest_init(void)
{
	if (!strcmp(action, "oops")) {
		pr_emerg("crashtest: action=oops: writing through a NULL pointer\n");
		*crashtest_null = 0x0c4a5e;
	} else if (!strcmp(action, "bug")) {
		pr_emerg("crashtest: action=bug: calling BUG()\n");
		BUG();
	} else if (!strcmp(action, "warn")) {
		pr_emerg("crashtest: action=warn: calling WARN()\n");
		WARN(1, "crashtest: action=warn\n");
	} else if (!strcmp(action, "softlockup")) {
		pr_emerg("crashtest: action=softlockup: spinning with preemption disabled and interrupts on (CPU %d)\n",
			 raw_smp_processor_id());
		preempt_disable();
		for (;;)
			cpu_relax();
	} else if (!strcmp(action, "hardlockup")) {
		pr_emerg("crashtest: action=hardlockup: hanging every CPU with interrupts disabled\n");
		smp_call_function(spin_irqs_off, NULL, 0);
		spin_irqs_off(NULL);
	} else {
		pr_err("crashtest: unknown action '%s' (oops, bug, warn, softlockup, hardlockup)\n", action);
		return -EINVAL;
	}
	/* Only reached when the action did not end the kernel (warn without panic_on_warn). */
	pr_err("crashtest: action=%s returned\n", action);
	return -EAGAIN;
}

module_init(crashtest_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("crashvmm test: oops, BUG, WARN, soft or hard lockup on load");
