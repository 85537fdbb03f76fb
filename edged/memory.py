"""Give the heap's free pages back to the kernel after bursts of work (glibc ``malloc_trim``).

glibc keeps memory that Python and the native libraries have freed in its arenas, so a
process's RSS stays at its high-water mark: after start-up (import-time garbage) and after the
first ``search_knowledge`` call (the embedder's files are read to check their digest, the
tokenizer is built in a worker thread) several megabytes are free but still resident. On a
512 MB device that is memory the nightly sync then cannot have. ``malloc_trim(0)`` returns
the free pages at the top of every arena; scripts/bench_memory.py shows the effect.

The daemon calls :func:`release_free_memory` once it is ready and after each finished turn
(from its housekeeping, never while a turn is running). Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):     # not glibc (musl has no malloc_trim)
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the kernel; False where the C library cannot."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
