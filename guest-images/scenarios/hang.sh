#!/bin/sh
# crashtest=hang: the kdump scenario with every CPU spinning with interrupts off (needs
# crashtest.trigger=lockup on the command line too; the scenario runner passes it): kdump.sh loads
# crashtest.ko action=hardlockup. Only the VMM's watchdog NMI gets the guest out.
exec /bin/sh /scenarios/kdump.sh
