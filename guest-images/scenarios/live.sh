#!/bin/sh
# crashtest=live: boot, say so, and keep running while the runner takes a live dump through the
# control socket; then say it is still running and power off (guest-init).
echo "CRASHTEST: live: ready"
i=0
while [ $i -lt 20 ]; do
	i=$((i + 1))
	sleep 1
done
echo "CRASHTEST: live: still running"
