"""The C heap: memory the daemon frees goes back to the system, not kept for later.

A 64 MiB device has no room for a heap that keeps the high-water mark of every book it handled.
glibc's malloc raises its mmap threshold each time a large block mmapped is freed, up to 32 MiB,
so after the first 2 MiB frame every later one came from the heap, whose free pages it keeps; and
the many middle-sized blocks of a large manifest's parse stay as holes in it. Fixing the
threshold sends every block of 128 KiB and more (frames, decoded text, zstd's window) straight to
mmap and back on free; trimming after a large transient (a manifest recorded, a book complete)
gives back the holes. Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import logging

from daemon.logs import log_event

_LOG = logging.getLogger("shelfsync.memory")
_M_MMAP_THRESHOLD = -3  # <malloc.h>
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's starting value, kept from then on
# Threads (the resolver's, the local API's to_thread calls) each got an arena of their own, up
# to 8 a core, each keeping what it freed; two are enough for a daemon of one busy thread.
ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc has both; musl neither)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def keep_heap_small() -> None:
    """At start: large blocks by mmap whatever was freed before, and few arenas."""
    if _LIBC is None:
        return
    done = _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and _LIBC.mallopt(
        _M_ARENA_MAX, ARENAS
    )
    if not done:
        log_event(_LOG, logging.WARNING, "malloc_not_tuned")


def give_back() -> None:
    """After a large transient: the heap's free pages back to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
