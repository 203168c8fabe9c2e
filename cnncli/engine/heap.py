"""Keep freed memory for the next training step instead of handing it back to the OS.

A training step allocates the same arrays every time (activations, gradients, the parts'
weight gradients) and frees them before the next. glibc's malloc serves arrays above its
mmap threshold (at most 32 MB, adjusted as it goes) with fresh ``mmap`` pages and gives
them back on ``free``; it also trims the heap's top once more than twice that is free. The
next step then pays a page fault (and the kernel's zeroing) for every 4 KB page again:
VGG-16's 4096x4096 dense layer (a 64 MB gradient, 32 MB per part) took 39 ms backward
instead of 19 ms. :func:`keep_freed_memory` raises both thresholds once per process, as
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would: peak memory stays what the
step needs; the process just keeps it between steps (as PyTorch's caching allocators do).

Only glibc (Linux) has ``mallopt``; elsewhere, or when the user set either variable, or
``CNNCLI_MALLOC=system``, nothing changes.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Arrays up to this size come from the heap; this much free memory at its top is kept.
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 1 << 32

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once); whether they were changed."""
    global _done
    if _done:
        return False
    _done = True
    if os.environ.get("CNNCLI_MALLOC", "").strip().lower() == "system":
        return False
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the trim threshold is an int too: clamp to what fits
    trim = min(TRIM_THRESHOLD, 2**31 - 1)
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, trim) == 1
