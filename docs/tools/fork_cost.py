#!/usr/bin/env python3
"""The cost of fork() for a private anonymous mapping with a share of it touched, as a live
dump's snapshot pays it (docs/live-dump.md).

    python3 docs/tools/fork_cost.py GIB PERCENT [--no-thp]

Maps GIB GiB (MADV_HUGEPAGE unless --no-thp), writes every 4 KiB page of PERCENT% of its
2 MiB blocks (spread evenly), then times fork() three times (the child _exits at once) and
prints the best, with the mapping's AnonHugePages.
"""
import mmap
import os
import sys
import time


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__)
    gib, pct = int(args[0]), int(args[1])
    size = gib << 30
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE if "--no-thp" in sys.argv else mmap.MADV_HUGEPAGE)
    step = 2 << 20
    for i in range(size // step):
        if (i * pct) // 100 != ((i + 1) * pct) // 100:
            for p in range(0, step, 4096):
                m[i * step + p] = 1
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        best = min(best, time.perf_counter() - t)
        os.waitpid(pid, 0)
    with open("/proc/self/smaps_rollup") as f:
        huge = next((l.split(":", 1)[1].strip() for l in f if l.startswith("AnonHugePages:")), "?")
    print(f"{gib} GiB, {pct}% touched: fork {best * 1000:.2f} ms (AnonHugePages {huge})")


if __name__ == "__main__":
    main()
