#!/bin/sh
# crashtest=kdump-hang: a crash kernel that never finishes (crashtest.capture=hang on the first
# kernel's command line selects it), to test the VMM's --kdump-timeout fallback.
echo "CRASHTEST: kdump: crash kernel running"
echo "CRASHTEST: kdump-hang: hanging"
while :; do
	sleep 3600
done
