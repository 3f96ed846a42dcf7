"""Keep freed memory in the process for the next batch (glibc's allocator), instead of handing it back to the OS.

glibc serves an allocation of 32 MiB or more with a fresh ``mmap`` and returns it with ``munmap`` when freed, and it
trims the top of its heap when enough is free. A CPU forward over a batch allocates and frees the same large
activations every batch, so each batch faulted in its pages again: 35% of a single-threaded CLIP actor's time was in
the kernel (3.3 M minor faults in 15 s, batch 256), and the model ran at 590 photos/s instead of 900. With both
thresholds raised, freed blocks stay in the heap and are reused.

A model that runs in a thread other than the main one (Ray Data runs an actor's batches in one) allocates from a
thread arena, whose heaps are at most 64 MiB and still mapped and unmapped: ``keep_freed_memory`` in such a process
halved the faults, and only one arena for every thread removed them (675 -> 875 -> 903 photos/s on one thread).
glibc reads that setting when a process starts, so a Ray actor gets ``KEEP_FREED_MEMORY_ENV`` in its runtime env.

The cost: the process keeps its peak heap (one batch's activations and inputs) until it exits. Only processes that
run a model batch after batch do this (embed's CLIP actors, and the benchmark's model-only loop beside them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD, TRIM_THRESHOLD = 1 << 30, 1 << 31
# the same for a process about to start (glibc's environment variables), with one arena for all its threads
KEEP_FREED_MEMORY_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
                         "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Serve allocations under ``mmap_threshold`` from the heap and never trim it below ``trim_threshold`` free
    bytes; True when the allocator took both (glibc on Linux), False elsewhere (nothing changes there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
