"""The C heap: memory the daemon frees goes back to the system, not kept for later.

A 64 MiB device has no room for a heap that keeps the high-water mark of every book it handled.
glibc's malloc raises its mmap threshold each time a large block mmapped is freed, up to 32 MiB,
so after the first 2 MiB frame every later one came from the heap, whose free pages it keeps; and
the many middle-sized blocks of a large manifest's parse stay as holes in it. Fixing the
threshold sends every block of 128 KiB and more (frames, decoded text, zstd's window) straight to
mmap and back on free; trimming after a large transient (a manifest recorded, a book complete)
gives back the holes. Elsewhere than glibc both are no-ops.

Except while a package streams (`heap_kept_for_downloads`): then the same few blocks come and go
at every frame (the socket's chunks, SQLite's copies of the frame), and by mmap each was mapped
afresh, faulted in page by page and unmapped again, a third of the daemon's CPU on loopback
(issue 22 #6). During downloads the heap keeps them for the next frame; when the last download
ends, the fixed threshold is back and the heap trimmed.

The libraries' code is the other half of the resident set. A page fault in a library's text maps
the pages around it too, and on kernels that cache files in large folios a whole folio: after
its imports, the daemon had 5.5 MiB of cryptography's Rust extension resident, 10 MiB of text in
all that it mostly never runs. So at start, and with a trim at most once a second, the clean
pages of the libraries' executable mappings are unmapped (MADV_DONTNEED): what the daemon does
run faults back in from the page cache, unchanged, a minor fault each. A mapping with a page
written (text relocated in place, a debugger's breakpoint) is left as it is, since dropping that
page would undo the write.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon.logs import log_event

_LOG = logging.getLogger("shelfsync.memory")
_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MADV_DONTNEED = 4  # <sys/mman.h>, the same on every Linux architecture
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's starting value, kept from then on
TRIM_THRESHOLD_BYTES = 128 * 1024  # glibc's default: free memory atop the heap past it goes back
# While downloading: blocks below this come from the heap (a frame is at most 2 MiB, and
# SQLite's copy of it a record a little larger), and this much free memory atop the heap stays.
DOWNLOAD_MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
DOWNLOAD_TRIM_THRESHOLD_BYTES = 8 * 1024 * 1024
# Threads (the resolver's, the local API's to_thread calls) each got an arena of their own, up
# to 8 a core, each keeping what it freed; two are enough for a daemon of one busy thread.
ARENAS = 2
# Seconds between two drops of the libraries' text: with every trim (two a book), reading
# smaps each time, a library of 1,000 small books cost 2.4 times the CPU to deliver; once a
# second, and smaps read only for a mapping not seen before, it costs nothing noticeable.
TEXT_EVERY_S = 1.0
_text_dropped_at = -TEXT_EVERY_S


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc has both; musl neither)
    except (OSError, AttributeError):
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


_LIBC = _glibc()
_tuned = False  # keep_heap_small ran: the daemon, not a test or a tool importing this
_downloads = 0  # heap_kept_for_downloads blocks running now


def keep_heap_small() -> None:
    """At start: large blocks by mmap whatever was freed before, and few arenas."""
    if _LIBC is None:
        return
    done = _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and _LIBC.mallopt(
        _M_ARENA_MAX, ARENAS
    )
    if not done:
        log_event(_LOG, logging.WARNING, "malloc_not_tuned")
    global _text_dropped_at, _tuned
    _tuned = bool(done)
    _text_dropped_at = time.monotonic()
    drop_library_text()


@contextmanager
def heap_kept_for_downloads() -> Iterator[None]:
    """While a package streams: its frame-sized blocks are kept by the heap for the next frame,
    not mapped and unmapped each time. Nested (concurrent downloads): the last to end puts the
    fixed threshold back and trims the heap."""
    global _downloads
    if _LIBC is None or not _tuned:
        yield
        return
    if _downloads == 0:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, DOWNLOAD_MMAP_THRESHOLD_BYTES)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, DOWNLOAD_TRIM_THRESHOLD_BYTES)
    _downloads += 1
    try:
        yield
    finally:
        _downloads -= 1
        if _downloads == 0:
            _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
            _LIBC.malloc_trim(0)


def give_back() -> None:
    """After a large transient: the heap's free pages back to the system, and, at most once a
    TEXT_EVERY_S, the libraries' text the daemon faulted in since."""
    global _text_dropped_at
    if _LIBC is None:
        return
    _LIBC.malloc_trim(0)
    now = time.monotonic()
    if now - _text_dropped_at >= TEXT_EVERY_S:
        _text_dropped_at = now
        drop_library_text()


def drop_library_text(
    maps: Path = Path("/proc/self/maps"), smaps: Path = Path("/proc/self/smaps")
) -> int:
    """Unmap the clean pages of the libraries' executable mappings; how many mappings. Which
    mappings are clean is read from smaps (4 ms) once for each mapping, the mappings themselves
    from maps (0.5 ms) every time: libraries are loaded at start, and a drop costs little."""
    if _LIBC is None:
        return 0
    try:
        mapped = text_mappings(maps.read_text())
        if not mapped.keys() <= _judged.keys():  # a library loaded since: judge it
            _judged.update(text_mappings(smaps.read_text()))
    except OSError:
        return 0  # no /proc: nothing to go by
    dropped = 0
    for start, end, inode in mapped:
        if _judged.get((start, end, inode)):
            dropped += _LIBC.madvise(start, end - start, _MADV_DONTNEED) == 0
    return dropped


# Private executable mappings of files seen so far, by (start, end, inode): True when no page of
# it had been written when it was first seen.
_judged: dict[tuple[int, int, str], bool] = {}


def clean_text_mappings(smaps: str) -> list[tuple[int, int]]:
    """The address ranges of private executable mappings of files with no page written, from
    the text of /proc/<pid>/smaps."""
    return [(start, end) for (start, end, _), clean in text_mappings(smaps).items() if clean]


_WRITTEN = ("Private_Dirty:", "Anonymous:")  # an smaps line of a mapping with a page written


def text_mappings(listing: str) -> dict[tuple[int, int, str], bool]:
    """The private executable mappings of files (r-xp, a path) in the text of /proc/<pid>/maps
    or smaps, by (start, end, inode), each True when no page of it was written (smaps gives
    Private_Dirty and Anonymous, both 0 kB then; maps gives neither, and says True)."""
    found: dict[tuple[int, int, str], bool] = {}
    mapping: tuple[int, int, str] | None = None
    for line in listing.splitlines():
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):  # a mapping's first line
            fields = rest.split()
            mapping = None
            if len(fields) >= 5 and fields[0] == "r-xp" and fields[4].startswith("/"):
                low, _, high = head.partition("-")
                mapping = (int(low, 16), int(high, 16), fields[3])
                found[mapping] = True
        elif mapping is not None and head in _WRITTEN and rest.split()[0] != "0":
            found[mapping] = False
    return found
