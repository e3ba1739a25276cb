#!/bin/sh
# crashtest=wait: boot, say so, and idle (for tests that drive the VMM's control socket), then
# power off after 120 s in case nobody stops the VM.
echo "CRASHTEST: wait: ready"
sleep 120
echo "CRASHTEST: wait: nobody stopped the VM"
