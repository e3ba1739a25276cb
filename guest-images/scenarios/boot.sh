#!/bin/sh
# crashtest=boot: the guest reached its init. Print the marker and power off.
echo "CRASHTEST: boot: marker"
sync
poweroff -f
