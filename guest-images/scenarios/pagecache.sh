#!/bin/sh
# crashtest=pagecache: a guest that looks like production when it panics. Most of its memory is
# page cache (a file read from the data disk) and user pages (a process holding a buffer it
# filled), the rest the kernel's; then it panics through sysrq.
#
# The data disk is the virtio disk with serial crashvmm-disk0 (crashvmm's first --disk): an ext4
# image holding pagecache.bin (non-zero data, about 60% of the guest's RAM; the scenario runner
# makes it). The user pages are busybox dd's buffer: `dd bs=N count=1` reads N bytes of the file
# (a quarter of MemTotal, or crashtest.user_percent=P) into one malloc'd buffer and then blocks
# writing it to a FIFO nobody reads, so the buffer stays resident.
#
# Prints "CRASHTEST: pagecache: read <bytes> bytes of <file> into the page cache",
# "CRASHTEST: pagecache: user pages <kB> kB (pid <N>)", a "CRASHTEST: pagecache: memory ..." line
# (MemTotal, MemFree, Cached, AnonPages in kB), then "CRASHTEST: pagecache: triggering". On a
# failure: "CRASHTEST: pagecache: error: <reason>" and rc=1 (init powers off).
fail() {
	echo "CRASHTEST: pagecache: error: $*"
	exit 1
}

user_percent=25
set -f
# shellcheck disable=SC2013
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	crashtest.user_percent=*) user_percent=${arg#crashtest.user_percent=} ;;
	esac
done
set +f

modprobe pvpanic-mmio || echo "CRASHTEST: pagecache: warning: modprobe pvpanic-mmio failed"
modprobe hv_vmbus || echo "CRASHTEST: pagecache: warning: modprobe hv_vmbus failed"
modprobe virtio_mmio 2>/dev/null
modprobe virtio_blk 2>/dev/null

disk=
i=0
while [ -z "$disk" ] && [ "$i" -lt 50 ]; do
	for s in /sys/block/vd*/serial; do
		[ -r "$s" ] && [ "$(cat "$s")" = crashvmm-disk0 ] && disk=/dev/$(basename "$(dirname "$s")")
	done
	[ -n "$disk" ] || usleep 100000
	i=$((i + 1))
done
[ -n "$disk" ] && [ -b "$disk" ] || fail "no data disk (virtio serial crashvmm-disk0)"
mkdir -p /mnt/data
# Read-only (crashvmm gives the disk readonly); noload: no journal replay on a read-only device.
out=$(mount -t ext4 -o ro,noload "$disk" /mnt/data 2>&1) || fail "mount $disk: $out"
file=/mnt/data/pagecache.bin
[ -f "$file" ] || fail "no $file on $disk"

# read(2) (dd, not cat: busybox cat may splice), so every page of the file goes through the page
# cache.
dd if="$file" of=/dev/null bs=1M 2>/dev/null || fail "reading $file failed"
echo "CRASHTEST: pagecache: read $(stat -c %s "$file") bytes of $file into the page cache"

total_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
user_mb=$((total_kb * user_percent / 100 / 1024))
mkfifo /tmp/pagecache-hold || fail "mkfifo"
# The reader never reads: it only keeps the FIFO open, so dd's write blocks with its buffer full.
sleep 2147483647 </tmp/pagecache-hold &
dd if="$file" of=/tmp/pagecache-hold bs="${user_mb}M" count=1 2>/dev/null &
holder=$!
want_kb=$((user_mb * 1024 * 9 / 10))
i=0
rss=0
while [ "$rss" -lt "$want_kb" ]; do
	kill -0 "$holder" 2>/dev/null || fail "the dd holding the user pages exited"
	[ "$i" -lt 3000 ] || fail "the user pages never reached $want_kb kB (VmRSS $rss kB)"
	usleep 100000
	rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$holder/status" 2>/dev/null)
	rss=${rss:-0}
	i=$((i + 1))
done
echo "CRASHTEST: pagecache: user pages $rss kB (pid $holder)"
echo "CRASHTEST: pagecache: memory $(awk '/^(MemTotal|MemFree|Cached|AnonPages):/ { printf "%s %s kB ", $1, $2 }' /proc/meminfo)"
echo "CRASHTEST: pagecache: triggering"
# Let the console drain first (see panic.sh).
timeout 2 stty "$(stty -g)" 2>/dev/null || sleep 1
echo 1 >/proc/sys/kernel/sysrq
echo c >/proc/sysrq-trigger
