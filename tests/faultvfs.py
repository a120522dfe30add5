"""An SQLite VFS that loses power and fails I/O on cue (FAULTS.md rows 5 and 6).

`FaultDisk` is an apsw VFS over the platform's own ("unix"): every file passes through it to the
real one, and each write not yet covered by an `xSync` of its file is remembered with the bytes
it replaced. A power cut (`arm_cut`) stops the disk at the Nth write, sync or truncate: that op
and every later one fail, as the machine would have stopped there. `apply_cut` then rewrites the
real files the way flash may have kept them: every unsynced write dropped, a random subset kept
(a later write on flash before an earlier one), or the last one torn after a whole number of
512-byte sectors; the -shm file goes too, as it lives in memory on a device. Or, for a process
killed at that op (SIGKILL), every write is kept, -shm included. What an `xSync` covered is
never touched, which is all SQLite assumes of a disk.

`arm_failure` instead fails the Nth read, write, sync or truncate with SQLITE_IOERR, once or from
then on, as SQLite's own I/O-error tests do (`ioerr.test`).

Registered as the default VFS while in use (`with FaultDisk() as disk:`), so the daemon's stores
open on it unchanged.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any

import apsw

SECTOR = 512


class CutMode(Enum):
    CRASH = "crash"  # the process died, the machine did not: the page cache keeps every write
    DROP = "drop"  # nothing unsynced reached the flash
    SUBSET = "subset"  # each unsynced write independently kept or lost
    TORN = "torn"  # all kept but the last, which stopped after a random number of sectors


@dataclass
class _Pending:
    """One unsynced change of a file: a write (data at offset) or a truncate (data empty)."""

    offset: int
    data: bytes
    replaced: bytes  # the bytes that were there (short where the file was shorter)
    old_size: int
    truncate: bool = False


@dataclass
class _FileLog:
    path: str
    pending: list[_Pending] = field(default_factory=list)


class PowerCut(Exception):
    """The disk has lost power: no op reaches it any more."""


class FaultDisk(apsw.VFS):
    def __init__(self, name: str = "faultdisk") -> None:
        super().__init__(name, "unix", makedefault=True)
        self.files: dict[str, _FileLog] = {}
        self.ops = 0  # writes, syncs and truncates (and reads, while a failure is armed)
        self.syncs = 0
        self._cut_at: int | None = None
        self._fail_at: int | None = None
        self._fail_persistent = False
        self.powered = True
        self.failures = 0

    # -- lifetime --------------------------------------------------------------------------------

    def __enter__(self) -> FaultDisk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unregister()  # the default goes back to the one registered before: "unix"

    def reset(self) -> None:
        """Forget every file and fault: the next scenario starts on a whole, powered disk."""
        self.files.clear()
        self.ops = self.syncs = self.failures = 0
        self._cut_at = self._fail_at = None
        self._fail_persistent = False
        self.powered = True

    def arm_cut(self, at_op: int) -> None:
        self._cut_at = self.ops + at_op

    def arm_failure(self, at_op: int, *, persistent: bool) -> None:
        self._fail_at = self.ops + at_op
        self._fail_persistent = persistent

    def disarm(self) -> None:
        self._fail_at = None
        self._fail_persistent = False

    @property
    def cut_happened(self) -> bool:
        return not self.powered

    # -- what each op goes through ---------------------------------------------------------------

    def _tick(self, counts_reads: bool = False) -> None:
        if not self.powered:
            raise apsw.IOError("power cut")
        if counts_reads and self._fail_at is None:
            return
        self.ops += 1
        if self._cut_at is not None and self.ops >= self._cut_at:
            self.powered = False
            raise apsw.IOError("power cut")
        if self._fail_at is not None and (
            self.ops == self._fail_at or (self._fail_persistent and self.ops > self._fail_at)
        ):
            self.failures += 1
            raise apsw.IOError(f"injected I/O error at op {self.ops}")

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        if not self.powered:
            raise apsw.IOError("power cut")
        return _FaultFile(self, path, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        if not self.powered:
            raise apsw.IOError("power cut")
        self.files.pop(filename, None)
        super().xDelete(filename, syncdir)

    def log(self, path: str | None) -> _FileLog | None:
        if path is None:
            return None
        return self.files.setdefault(path, _FileLog(path))

    # -- the cut ---------------------------------------------------------------------------------

    def unsynced_writes(self) -> int:
        return sum(len(f.pending) for f in self.files.values())

    def apply_cut(self, mode: CutMode, rng: random.Random) -> None:
        """Rewrite the real files as the flash kept them (call once every connection closed)."""
        if mode is CutMode.CRASH:  # the files are as the process left them, -shm included
            for log in self.files.values():
                log.pending.clear()
            return
        for log in self.files.values():
            if log.pending and os.path.exists(log.path):
                _rewrite(log, mode, rng)
            log.pending.clear()
            if log.path.endswith("-wal"):
                shm = log.path[: -len("-wal")] + "-shm"
                if os.path.exists(shm):
                    os.unlink(shm)


def _rewrite(log: _FileLog, mode: CutMode, rng: random.Random) -> None:
    fd = os.open(log.path, os.O_RDWR)
    try:
        for change in reversed(log.pending):  # back to what the last sync left
            if change.truncate:
                os.ftruncate(fd, change.old_size)
                os.pwrite(fd, change.replaced, change.offset)
            else:
                os.pwrite(fd, change.replaced, change.offset)
                os.ftruncate(fd, change.old_size)
        if mode is CutMode.DROP:
            return
        last = len(log.pending) - 1
        for i, change in enumerate(log.pending):
            if mode is CutMode.SUBSET and rng.random() < 0.5:
                continue
            if change.truncate:
                os.ftruncate(fd, change.offset)
                continue
            data = change.data
            if mode is CutMode.TORN and i == last:
                data = data[: SECTOR * rng.randrange(0, max(1, len(data) // SECTOR))]
            os.pwrite(fd, data, change.offset)
    finally:
        os.close(fd)


class _FaultFile(apsw.VFSFile):
    def __init__(self, disk: FaultDisk, path: str | None, name: Any, flags: list[int]) -> None:
        super().__init__("unix", name, flags)
        self._disk = disk
        self._log = disk.log(path)
        self._path = path

    def _size(self) -> int:
        return os.stat(self._path).st_size if self._path and os.path.exists(self._path) else 0

    def _before(self, offset: int, amount: int) -> bytes:
        if not self._path or not os.path.exists(self._path):
            return b""
        with open(self._path, "rb") as f:
            f.seek(offset)
            return f.read(amount)

    def xRead(self, amount: int, offset: int) -> bytes:
        self._disk._tick(counts_reads=True)
        return super().xRead(amount, offset)  # type: ignore[no-any-return]

    def xWrite(self, data: Any, offset: int) -> None:
        self._disk._tick()
        if self._log is not None:
            data = bytes(data)
            self._log.pending.append(
                _Pending(offset, data, self._before(offset, len(data)), self._size())
            )
        super().xWrite(data, offset)

    def xTruncate(self, newsize: int) -> None:
        self._disk._tick()
        if self._log is not None:
            size = self._size()
            self._log.pending.append(
                _Pending(newsize, b"", self._before(newsize, max(0, size - newsize)), size, True)
            )
        super().xTruncate(newsize)

    def xSync(self, flags: int) -> None:
        self._disk._tick()
        super().xSync(flags)
        self._disk.syncs += 1
        if self._log is not None:
            self._log.pending.clear()
