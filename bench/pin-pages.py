#!/usr/bin/env python3
"""Holds files in the OS page cache (mmap + mlock) until interrupted.

The benchmark VM reclaims page cache within a minute even with most of its
RAM free (BENCHMARKS.md, "Machine"), so a large data dir read before a run
is partly gone during it, and lookups then measure the virtual disk rather
than stepcache. Needs root (or an RLIMIT_MEMLOCK as large as the files):

    python3 bench/pin-pages.py /tmp/sc1m/db &   # prints "pinned N MiB" when ready
    ...benchmarks...
    kill %1
"""

import ctypes
import os
import signal
import sys

PROT_READ = 0x1
MAP_SHARED = 0x01
MAP_FAILED = ctypes.c_void_p(-1).value

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def pin(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    addr = libc.mmap(None, size, PROT_READ, MAP_SHARED, fd, 0)
    if addr in (None, MAP_FAILED):
        raise OSError(ctypes.get_errno(), f"mmap {path}")
    if libc.mlock(addr, size) != 0:
        raise OSError(ctypes.get_errno(), f"mlock {path} ({size} bytes)")
    return size


def main() -> int:
    total = sum(pin(p) for p in sys.argv[1:])
    print(f"pinned {total >> 20} MiB", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
