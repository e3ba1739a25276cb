#!/bin/sh
# crashtest=nmi: the kdump scenario waiting for an NMI from the VMM (needs crashtest.trigger=nmi
# on the command line too; the scenario runner passes it).
exec /bin/sh /scenarios/kdump.sh
