"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

Scans and the virtual station allocate and free arrays of a few hundred kB to a few MB per line. By default glibc
serves such blocks with fresh ``mmap`` calls and unmaps them when freed, so every line pays a page fault per 4 kB
page on first touch: on the virtual machines we measured, that took 40 % of a 100 k-sample line's render time.
:func:`retain_freed_memory` raises the mmap threshold and the trim threshold, so freed blocks stay in the heap and
are reused. Memory use is bounded by the largest working set, not raised by it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt(3) parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""Blocks below this come from the heap (glibc's largest allowed threshold on 64-bit)."""
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024
"""Free memory at the top of the heap kept for reuse rather than returned."""
TOP_PAD_BYTES = 64 * 1024 * 1024
"""Extra heap requested at each growth, so a growing working set grows in few steps."""


@functools.cache
def retain_freed_memory() -> bool:
    """Tune glibc's allocator as described above; return False (and change nothing) on other C libraries."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                (_M_TOP_PAD, TOP_PAD_BYTES))  # fmt: skip
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
