#!/bin/sh
# crashtest=tools: check that the dynamically linked crash tools in the image start.
# Prints "CRASHTEST: tools: ok" when kexec and makedumpfile both run.
failed=0
if out=$(kexec --version 2>&1); then
	echo "CRASHTEST: tools: $out"
else
	echo "CRASHTEST: tools: error: kexec: $out"
	failed=1
fi
if out=$(makedumpfile -v 2>&1 | head -n 1) && [ -n "$out" ] && command -v makedumpfile >/dev/null; then
	echo "CRASHTEST: tools: $out"
else
	echo "CRASHTEST: tools: error: makedumpfile: $out"
	failed=1
fi
[ "$failed" = 0 ] && echo "CRASHTEST: tools: ok"
sync
poweroff -f
