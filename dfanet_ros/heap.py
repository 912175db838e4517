"""The process's C heap (glibc malloc): give freed memory back, and bound how much it keeps.

Large buffers (plans, frames, output messages) are freed into the malloc arena of the thread
that made them, and glibc keeps freed memory there for reuse.  Two levers, no-ops where the
C library is not glibc:

* ``return_freed_memory`` (malloc_trim) after a plan is dropped: a node grew 380 -> 623 MiB
  over four one-off 16 M-pixel mono8 frames and kept it; with it, 380 -> 526 MiB and flat.
* ``limit_arenas`` before the worker threads start: glibc gives each thread an arena of its
  own, up to 8 per core, and each keeps its own freed memory.  Sixteen cameras of eight
  sizes (so plans are made and dropped all the time) grew a node 359 -> 1290-1510 MiB within
  20 s; with two arenas 1020-1250 MiB, at the same frame rate (runs interleaved, Intel Xeon
  2 vCPUs).  Trimming after every dropped plan bounded it better (630-790 MiB) but cost
  40% of the frames answered, trimming once a second too, and a fixed 1 MiB mmap threshold
  made every 6 MB output message cost 6-7 ms instead of 1.2 ms.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

_M_ARENA_MAX = -8  # mallopt parameter numbers, from glibc's malloc.h


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def return_freed_memory() -> None:
    """Give the free pages of every malloc arena back to the system (malloc_trim)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def limit_arenas(count: int = 2) -> None:
    """Let the process's threads share at most ``count`` malloc arenas (mallopt)."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is not None and getattr(_LIBC, "malloc_trim", None) is not None:  # glibc
        mallopt(_M_ARENA_MAX, count)
