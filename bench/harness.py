"""What the benchmarks run: the stub and the daemon as real processes, the corpus, /proc readings.

The daemon and the stub run as subprocesses so that neither shares an event loop (or a core's
time slice) with the link emulator and the clients timing them in the benchmark's process.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.api.client import LocalApiClient
from daemon.errors import ShelfsyncError
from devkit.children import child, script
from server_stub.epub import read_epub
from server_stub.packaging import book_id_for

REPO = Path(__file__).resolve().parent.parent
STUB_LISTENING = "shelfsync-stub listening on "
POLL_S = 0.1  # how often the local API is polled: often enough, and light on the daemon


class BenchError(ShelfsyncError):
    """A benchmark cannot go on; the message says what to fix or which log to read."""


@dataclass(frozen=True, slots=True)
class Book:
    path: Path
    book_id: str
    title: str
    size: int  # bytes of the .epub


CORPUS_VARIABLE = "SHELFSYNC_CORPUS"


class CorpusError(BenchError):
    """$SHELFSYNC_CORPUS names no folder of EPUB files: refused, never silently replaced."""


def corpus_location(checkout: Path = REPO) -> tuple[Path, str] | None:
    """The full EPUB corpus and where it was found: $SHELFSYNC_CORPUS, else
    ../shared/corpus/epub beside the checkout, else beside the repository this one was cloned
    from on this machine (`git clone . /tmp/x` finds the same corpus); None when no place holds
    one.

    Raises:
        CorpusError: $SHELFSYNC_CORPUS is set but is not a folder holding .epub files. A wrong
            path is a mistake to report, not a reason to test against another corpus.
    """
    configured = os.environ.get(CORPUS_VARIABLE)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_dir():
            raise CorpusError(f"{CORPUS_VARIABLE}={configured}: no such folder")
        if not any(path.glob("*.epub")):
            raise CorpusError(f"{CORPUS_VARIABLE}={configured}: the folder holds no .epub file")
        return path, f"${CORPUS_VARIABLE}"
    beside = checkout.parent / "shared" / "corpus" / "epub"
    if any(beside.glob("*.epub")):
        return beside, "beside the checkout"
    try:
        origin = subprocess.run(
            ["git", "-C", str(checkout), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:  # no git: only the first two places count
        return None
    source = Path(origin.removeprefix("file://"))
    if origin and source.is_dir():
        beside_origin = source.resolve().parent / "shared" / "corpus" / "epub"
        if any(beside_origin.glob("*.epub")):
            return beside_origin, f"beside {source.resolve()}, the clone's origin"
    return None


def corpus_dir() -> Path:
    """The full EPUB corpus (`corpus_location`): the benchmarks' figures are about all of it."""
    found = corpus_location()
    if found is None:
        raise BenchError(
            f"no EPUB corpus: set {CORPUS_VARIABLE} to a folder of .epub files, or put the"
            " corpus at ../shared/corpus/epub beside the checkout"
        )
    return found[0]


def book_of(path: Path) -> Book:
    epub = read_epub(path)
    return Book(path, book_id_for(epub.identifier, epub.language), epub.title, path.stat().st_size)


def corpus_books(corpus: Path) -> list[Book]:
    """Every book of the corpus, smallest first."""
    return sorted((book_of(p) for p in corpus.glob("*.epub")), key=lambda b: (b.size, b.path.name))


@dataclass(frozen=True, slots=True)
class Stub:
    url: str
    address: tuple[str, int]
    key_path: Path  # the service.pub a device pins


@asynccontextmanager
async def stub_process(
    data_dir: Path, library: Path, log: Path, *extra: str, port: int = 0
) -> AsyncIterator[Stub]:
    """`shelfsync-stub` serving `library` (imported first: a 100 MB book takes a while), with
    `extra` arguments, on `port` (0: a free one; a stub started again on its old port is the
    service back after an outage)."""
    args = [script("shelfsync-stub"), "--data", str(data_dir), "--library", str(library), *extra]
    async with child([*args, "--port", str(port)], log, pipe_stdout=True) as proc:
        assert proc.stdout is not None
        refused = []
        while line := await asyncio.wait_for(proc.stdout.readline(), 900):
            text = line.decode().strip()
            if text.startswith("refused "):
                refused.append(text)
            if text.startswith(STUB_LISTENING):
                if refused:
                    raise BenchError(f"the stub refused books: {'; '.join(refused)}")
                url = text.removeprefix(STUB_LISTENING)
                host, listening = url.removeprefix("http://").rsplit(":", 1)
                yield Stub(url, (host, int(listening)), data_dir / "service.pub")
                return
        raise BenchError(f"the stub stopped before listening; see {log}")


@dataclass(frozen=True, slots=True)
class Device:
    proc: asyncio.subprocess.Process
    api: LocalApiClient
    log: Path

    def status(self) -> dict[str, int]:
        """The daemon's /proc/<pid>/status memory lines, in KiB (VmRSS, VmHWM, ...)."""
        return read_proc_status(self.proc.pid)

    def cpu_seconds(self) -> float:
        return read_cpu_seconds(self.proc.pid)

    async def book(self, book_id: str) -> dict[str, Any] | None:
        if self.proc.returncode is not None:
            raise BenchError(f"the daemon exited ({self.proc.returncode}); see {self.log}")
        return await self.api.library_entry(book_id)

    async def wait_online(self, timeout_s: float = 120) -> None:
        """Until the push channel is up: a reader's device is online before the purchase."""
        deadline = time.monotonic() + timeout_s
        while not (await self.api.status())["daemon"].get("push_connected_since"):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise BenchError(f"the daemon never connected to the service; see {self.log}")
            await asyncio.sleep(POLL_S)

    async def wait_complete(self, book_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        book = None
        while time.monotonic() < deadline:
            book = await self.book(book_id)
            if book is not None and book["completed_at"]:
                return book
            await asyncio.sleep(POLL_S)
        raise BenchError(
            f"{book_id} not complete after {timeout_s:.0f} s (last: {book}); see {self.log}"
        )


@asynccontextmanager
async def device_process(
    state: Path,
    service_url: str,
    stub: Stub,
    profile: str,
    account_token: str,
    log: Path,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> AsyncIterator[Device]:
    """`shelfsync run` with a fresh state, registered with the account, until the block ends;
    `wrap` turns the command into the one to run (inside a memory cgroup, say)."""
    state.mkdir(parents=True, exist_ok=True)
    token_file = state / "account-token"  # a file, not argv: every user can read `ps`
    token_file.touch(mode=0o600)
    token_file.write_text(account_token)
    args = [
        script("shelfsync"),
        "run",
        "--state",
        str(state),
        "--service",
        service_url,
        "--service-key",
        str(stub.key_path),
        "--profile",
        profile,
        "--account-token-file",
        str(token_file),
        "--device-name",
        "bench e-reader",
    ]
    socket_path = state / "api.sock"
    async with child(wrap(args) if wrap else args, log) as proc:
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            if proc.returncode is not None or time.monotonic() > deadline:
                raise BenchError(f"the daemon did not start; see {log}")
            await asyncio.sleep(0.05)
        async with LocalApiClient(socket_path, timeout_s=60) as api:
            yield Device(proc, api, log)


def read_proc_status(pid: int) -> dict[str, int]:
    """The `Vm*` lines of /proc/<pid>/status, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            values[key] = int(value.split()[0])
    return values


def read_cpu_seconds(pid: int) -> float:
    """CPU seconds a process has run so far: its threads' on-CPU nanoseconds from
    /proc/<pid>/task/*/schedstat where the kernel keeps them (an idle daemon runs for
    microseconds at a time), else user + system time from /proc/<pid>/stat, in 10 ms ticks."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
    except (OSError, ValueError, IndexError):
        pass  # no schedstat in this kernel: the coarser counters below
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]


def median(values: list[float]) -> float:
    return percentile(values, 50)
