"""How the server's processes give memory back: a large request must not leave its bytes behind in the heap.

glibc serves allocations above a threshold with their own mappings, returned to the system when freed, but it raises
that threshold each time such a block is freed (up to 32 MiB), after which the chunks of a large request body come
from the heap instead, where freed memory mostly stays: the server's RSS would grow by tens of MiB with each new
largest request. ``map_large_buffers`` pins the threshold; ``release_memory`` returns what the heap holds free.
Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGE_BUFFER = 128 * 1024
"""Allocations from this size up get mappings of their own (glibc's initial threshold, kept from moving)."""
KEPT_FREE = 32 * 1024 * 1024
"""Free memory at the top of the heap that glibc keeps instead of returning at every free (pinning the mapping
threshold pins this one too, at 128 KiB: the heap would shrink and grow -- system calls and fresh zeroed pages --
with every request); ``release_memory`` returns it after large requests."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, looked up once (``ctypes.util.find_library`` would run ``ldconfig`` each time: milliseconds)."""
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6")
        if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
            return libc
    return None


def map_large_buffers() -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER)
        libc.mallopt(M_TRIM_THRESHOLD, KEPT_FREE)


def release_memory() -> None:
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
