"""The process's C heap (glibc malloc): give freed memory back, and bound how much it keeps.

Large buffers (plans, frames, output messages) are freed into the malloc arena of the thread
that made them, and glibc keeps freed memory there for reuse.  Three levers; the first and
the last are no-ops where the C library is not glibc:

* ``return_freed_memory`` (malloc_trim) after a plan is dropped: a node grew 380 -> 623 MiB
  over four one-off 16 M-pixel mono8 frames and kept it; with it, 380 -> 526 MiB and flat.
* ``mapped_empty`` for buffers kept a while and then dropped (the engine's plans): each on a
  memory map of its own, outside the heap, so that its pages go back to the system when it is
  dropped, whatever the heap holds around it and without a trim.  Sixteen cameras of eight
  sizes: 374 -> 1135-1209 MiB with the plans on the heap, 374 -> 944-1048 with maps; four
  16 M-pixel one-off raw frames: +199-229 MiB against +167-168 (the node's test of them allows
  200; the rest was the middleware's history buffers, which the DDS profile now frees).
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
import math
import mmap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

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


# Below this a buffer comes from the heap: a map costs a system call and at least a page.
MAPPED_MIN_BYTES = 1 << 16


def mapped_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor on an anonymous memory map of its own (from the heap when
    smaller than ``MAPPED_MIN_BYTES``): unmapped once the last tensor viewing it is gone."""
    import torch

    count = math.prod(shape)
    if count * dtype.itemsize < MAPPED_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    # The tensor holds the map's buffer, so the map lives exactly as long as its views.
    # MAP_POPULATE faults the pages in with the call: touched one by one, frames that each
    # needed a new plan (five sizes, four plans kept) took 75 ms against 50 with heap
    # buffers; populated, 62-71 against 61-74 (Intel Xeon, one thread, interleaved rounds).
    populate = getattr(mmap, "MAP_POPULATE", 0)
    block = mmap.mmap(-1, count * dtype.itemsize,
                      flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return torch.frombuffer(block, dtype=dtype, count=count).view(shape)
