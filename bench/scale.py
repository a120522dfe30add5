"""`python -m bench scale`: what a large library costs the device: the first sync, an idle hour,
the status answers, deliveries beside it, and whether the daemon lives within a hard memory cap.

For each library size (0, the baseline, then 1,000 / 5,000 / 20,000 books bought before the
device joined, so archived in the cloud) a fresh account is seeded on the stub, a fresh daemon
(`shelfsync run`, a subprocess) registers and syncs it, sits idle for a window, answers status
and the library, and then takes a few corpus books bought at once. The same sequence then runs
with the largest library inside a memory cgroup at the profile's budget and at 256 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aiohttp

from bench.cgroup import CgroupUnavailable, MemoryCgroup
from bench.epubgen import write_illustrated_epub
from bench.harness import (
    BenchError,
    Book,
    Device,
    Stub,
    book_of,
    corpus_books,
    corpus_dir,
    device_process,
    stub_process,
)
from bench.registry import Benchmark
from bench.section import Section, Table, command
from daemon.client import AccountClient
from daemon.profile import list_profiles, load_profile
from devkit.children import script
from server_stub.store import Store as StubStore

MIB = 1024 * 1024
LIBRARY_PAGE = 500  # books a page when the bench walks GET /v1/library (the API's largest)
SIZES = (0, 1_000, 5_000, 20_000)
DELIVERED = 8  # corpus books bought at once after the idle window, smallest first
CAPS_MIB = (None, 256)  # None: the profile's budget
CAPPED_IDLE_S = 10.0
OWNED_DELIVERED = 1_000  # books of an owned library delivered and timed, at every size
OWNED_PLATE_BYTES = 3_100  # each a page and a one-row picture: a 6 KB EPUB
SEEDED_AGO_S = 86_400.0  # seeded books were bought a day before the device joined: archived


class LogWatch:
    """The daemon's log, read as it grows: its events as (event, fields)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = ""
        self._pending: list[tuple[str, dict[str, str]]] = []

    def new_events(self) -> list[tuple[str, dict[str, str]]]:
        try:
            with self._path.open(encoding="utf-8", errors="replace") as f:
                f.seek(self._offset)
                text = f.read()
                self._offset = f.tell()
        except FileNotFoundError:
            return []
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            # `TIME LEVEL logger event=NAME key=value ...`, a value with spaces JSON-quoted
            # (daemon/protocol/logline.py)
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            fields = dict(w.split("=", 1) for w in words[3:] if "=" in w)
            if "event" in fields:
                events.append((fields.pop("event"), fields))
        return events

    async def wait_for(
        self,
        device: Device,
        done: Callable[[str, dict[str, str]], bool],
        timeout_s: float,
        what: str,
    ) -> None:
        """Read events into `done(event, fields)` until it returns True."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._pending += self.new_events()
            while self._pending:
                event, fields = self._pending.pop(0)
                if done(event, fields):
                    return  # the events after it wait for the next wait_for
            if device.proc.returncode is not None:
                raise BenchError(f"the daemon exited ({device.proc.returncode}) {what}")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out {what}; see {device.log}")
            await asyncio.sleep(0.01)


@dataclass
class Run:
    books: int
    cap_mib: int | None = None  # the memory cgroup's limit, None: no cgroup
    sync_s: float = 0.0
    sync_cpu_s: float = 0.0
    requests: int = 0
    sync_peak_kib: int = 0
    idle_s: float = 0.0
    idle_cpu_s: float = 0.0
    idle_rss_start_kib: int = 0
    idle_rss_end_kib: int = 0
    status_bytes: int = 0
    status_text_lines: int = 0
    status_text_bytes: int = 0
    status_json_bytes: int = 0
    library_bytes: int = 0  # of GET /v1/library's first page
    library_pages: int = 0  # walked to the end, LIBRARY_PAGE books at a time
    status_peak_kib: int = 0  # VmHWM after the status answers and deliveries, before the library
    answers_rss_kib: int = 0
    delivered_s: float = 0.0
    delivered_cpu_s: float = 0.0
    peak_kib: int = 0
    died_during: str | None = None  # the step it was killed in, under a cap
    oom_kills: int = 0
    cgroup_peak: int | None = None
    steps: list[str] = field(default_factory=list)

    @property
    def idle_cpu_per_hour(self) -> float:
        return self.idle_cpu_s * 3600 / self.idle_s

    @property
    def drift_per_hour_kib(self) -> float:
        return (self.idle_rss_end_kib - self.idle_rss_start_kib) * 3600 / self.idle_s

    @property
    def books_per_s(self) -> float:
        return DELIVERED / self.delivered_s if self.delivered_s else 0.0


async def _walk_library(socket_path: Path) -> tuple[int, int]:
    """GET /v1/library as a reader app lists a whole library: the first page, then every next
    one, LIBRARY_PAGE books at a time. Returns (bytes of the first page, pages walked)."""
    first = await _get_bytes(socket_path, "/v1/library")
    cursor, pages = json.loads(first)["next_cursor"], 1
    while cursor:
        page = await _get_bytes(
            socket_path, f"/v1/library?limit={LIBRARY_PAGE}&cursor={quote(cursor, safe='')}"
        )
        cursor, pages = json.loads(page)["next_cursor"], pages + 1
    return len(first), pages


async def _get_bytes(socket_path: Path, path: str) -> bytes:
    """One local API answer, as the bytes on the wire."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get("http://shelfsync" + path) as r,
    ):
        body = await r.read()
        if r.status != 200:
            raise BenchError(f"GET {path} answered {r.status}")
        return body


def _cli_status(state: Path, *extra: str) -> str:
    done = subprocess.run(
        [script("shelfsync"), "status", "--state", str(state), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise BenchError(f"shelfsync status failed: {done.stderr.strip()}")
    return done.stdout


async def measure(
    workdir: Path,
    stub: Stub,
    profile: str,
    books: int,
    idle_s: float,
    to_deliver: list[Book],
    cap: MemoryCgroup | None = None,
) -> Run:
    cap_mib = None if cap is None else cap.limit_bytes // MIB
    run = Run(books, cap_mib)
    name = f"scale-{books}" + ("" if cap is None else f"-cap{cap_mib}")
    account = AccountClient(stub.url)
    await account.create_account(f"bench {name}")
    stub_store = StubStore.open(Path(stub.key_path).parent)
    try:
        account_id = stub_store.account_for_token(account.account_token)
        assert account_id is not None
        if books:
            seeded = (f"bk_scale{books}x{i:06d}" for i in range(books))
            stub_store.seed_library(account_id, seeded, at=time.time() - SEEDED_AGO_S)
    finally:
        stub_store.close()
    state, log = workdir / name, workdir / f"{name}.log"
    step = "start"
    async with AsyncExitStack() as stack:
        try:
            device = await stack.enter_async_context(
                device_process(
                    state,
                    stub.url,
                    stub,
                    profile,
                    account.account_token,
                    log,
                    wrap=None if cap is None else cap.wrap,
                )
            )
            watch = LogWatch(log)
            started: list[float] = []

            def is_started(event: str, fields: dict[str, str]) -> bool:
                if event == "daemon_started":
                    started.extend([time.monotonic(), device.cpu_seconds()])
                return bool(started)

            await watch.wait_for(device, is_started, 60, "before it started")
            step = "first sync"
            synced = {"changes": 0, "requests": 0, "seen": 0}

            def is_synced(event: str, fields: dict[str, str]) -> bool:
                if event == "library_synced":
                    synced["changes"] += int(fields["changes"])
                    synced["requests"] += int(fields["requests"])
                    synced["seen"] += 1
                return synced["seen"] > 0 and synced["changes"] >= books

            await watch.wait_for(device, is_synced, 300, "during the first sync")
            run.sync_s = time.monotonic() - started[0]
            run.sync_cpu_s = device.cpu_seconds() - started[1]
            run.requests = synced["requests"]
            run.sync_peak_kib = device.status()["VmHWM"]
            run.steps.append(step)

            step = "idle"
            await asyncio.sleep(2)  # the last page's wake-ups settle
            cpu0, rss0, t0 = device.cpu_seconds(), device.status()["VmRSS"], time.monotonic()
            await asyncio.sleep(idle_s)
            run.idle_s = time.monotonic() - t0
            run.idle_cpu_s = device.cpu_seconds() - cpu0
            run.idle_rss_start_kib, run.idle_rss_end_kib = rss0, device.status()["VmRSS"]
            run.steps.append(step)

            step = "status"
            socket_path = state / "api.sock"
            run.status_bytes = len(await _get_bytes(socket_path, "/v1/status"))
            text = await asyncio.to_thread(_cli_status, state)
            run.status_text_lines = len(text.splitlines())
            run.status_text_bytes = len(text.encode())
            run.status_json_bytes = len(await asyncio.to_thread(_cli_status, state, "--json"))
            run.steps.append(step)
            step = "deliveries"
            wanted = {b.book_id for b in to_deliver}
            cpu0, t0 = device.cpu_seconds(), time.monotonic()
            for book in to_deliver:
                await account.buy(book.book_id)

            def all_complete(event: str, fields: dict[str, str]) -> bool:
                if event == "delivery_complete":
                    wanted.discard(fields.get("book", ""))
                return not wanted

            await watch.wait_for(device, all_complete, 600, "while delivering")
            run.delivered_s = time.monotonic() - t0
            run.delivered_cpu_s = device.cpu_seconds() - cpu0
            run.status_peak_kib = device.status()["VmHWM"]
            run.steps.append(step)
            step = "GET /v1/library, every page"
            run.library_bytes, run.library_pages = await _walk_library(socket_path)
            run.answers_rss_kib = device.status()["VmRSS"]
            run.peak_kib = device.status()["VmHWM"]
            run.steps.append(step)

        except (BenchError, OSError, aiohttp.ClientError, TimeoutError) as e:
            if cap is None:
                raise
            run.died_during = f"{step} ({type(e).__name__})"
    if cap is not None:
        run.oom_kills = cap.oom_kills()
        run.cgroup_peak = cap.peak_bytes()
    return run


@dataclass
class Owned:
    """A library the device owns (ordered since it joined), delivered oldest first."""

    books: int
    delivered: int  # books delivered and timed: the oldest ones, all in the catalog
    seconds: float = 0.0  # from the push that brought the library to the last one complete
    cpu_s: float = 0.0
    peak_kib: int = 0

    @property
    def books_per_s(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0


def write_owned_catalog(folder: Path, count: int) -> list[str]:
    """`count` small generated EPUBs (a page and a small picture each) for the stub to import:
    the books of an owned library that the device can really fetch. Returns their book ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        path = folder / f"owned-{i:05d}.epub"
        if not path.exists():
            write_illustrated_epub(path, OWNED_PLATE_BYTES, plate_bytes=OWNED_PLATE_BYTES, seed=i)
        ids.append(book_of(path).book_id)
    return ids


async def measure_owned(
    workdir: Path, stub: Stub, profile: str, books: int, catalog: list[str], push_book: str
) -> Owned:
    """A fresh daemon online, then `books` bought at once (seeded into the stub, the oldest
    `len(catalog)` of them deliverable, the rest newer), told by the push of one more purchase
    (`push_book`): the time and CPU until the deliverable ones are complete, which is what
    each scheduling step costs beside the rest of the library."""
    delivered = catalog[: min(books, len(catalog))]
    run = Owned(books, len(delivered))
    name = f"owned-{books}"
    account = AccountClient(stub.url)
    await account.create_account(f"bench {name}")
    async with device_process(
        workdir / name, stub.url, stub, profile, account.account_token, workdir / f"{name}.log"
    ) as device:
        await device.wait_online()
        watch = LogWatch(workdir / f"{name}.log")
        stub_store = StubStore.open(Path(stub.key_path).parent)
        try:
            account_id = stub_store.account_for_token(account.account_token)
            assert account_id is not None
            now = time.time()
            stub_store.seed_library(account_id, delivered, at=now, reason="bought")
            rest = (f"bk_owned{books}x{i:06d}" for i in range(books - len(delivered)))
            stub_store.seed_library(account_id, rest, at=now + 1, reason="bought")
        finally:
            stub_store.close()
        cpu0, t0 = device.cpu_seconds(), time.monotonic()
        await account.buy(push_book)  # its push tells the daemon of them all
        waiting = set(delivered)

        def all_complete(event: str, fields: dict[str, str]) -> bool:
            if event == "delivery_complete":
                waiting.discard(fields.get("book", ""))
            return not waiting

        await watch.wait_for(device, all_complete, 1800, "while delivering its library")
        run.seconds = time.monotonic() - t0
        run.cpu_s = device.cpu_seconds() - cpu0
        run.peak_kib = device.status()["VmHWM"]
    return run


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def _bytes(n: int) -> str:
    return f"{n / 1e6:,.2f} MB" if n >= 100_000 else f"{n / 1000:,.1f} kB"


def _sync_table(runs: list[Run], profile: str, cmd: str) -> Table:
    budget = load_profile(profile).memory.ram_budget_mb
    rows = [
        [
            f"{r.books:,}",
            f"{r.sync_s:.2f} s",
            f"{r.sync_cpu_s:.2f} s",
            f"{r.requests}",
            f"{(r.books / r.sync_s):,.0f}" if r.books else "-",
            _mib(r.sync_peak_kib),
            _mib(r.status_peak_kib),
            _mib(r.peak_kib),
        ]
        for r in runs
    ]
    big = runs[-1]
    highest = max(r.status_peak_kib for r in runs) / 1024
    overall = max(r.peak_kib for r in runs) / 1024
    meaning = (
        f"The first sync of {big.books:,} archived books took {big.sync_s:.2f} s and"
        f" {big.sync_cpu_s:.2f} CPU-s in {big.requests} requests (the empty library:"
        f" {runs[0].sync_s:.2f} s, {runs[0].sync_cpu_s:.2f} CPU-s). The highest peak RSS of any"
        f" run through sync, idle, the status answers and the deliveries was {highest:.1f} MiB, "
        + (
            f"within the {profile} budget of {budget} MiB"
            if highest <= budget
            else f"over the {profile} budget of {budget} MiB"
        )
        + f"; with every page of GET /v1/library walked after them,"
        f" {overall:.1f} MiB."
    )
    return Table(
        heading=f"First library sync, profile {profile}",
        meaning=meaning,
        columns=[
            "books",
            "sync wall",
            "sync CPU",
            "requests",
            "books/s",
            "peak RSS after sync",
            "after status and deliveries",
            "after GET /v1/library",
        ],
        rows=rows,
        command=cmd,
    )


def _idle_table(runs: list[Run], cmd: str) -> Table:
    rows = [
        [
            f"{r.books:,}",
            f"{r.idle_s:.0f} s",
            f"{r.idle_cpu_s * 1000:.1f} ms",
            f"{r.idle_cpu_per_hour:.2f} s",
            _mib(r.idle_rss_start_kib),
            f"{(r.idle_rss_end_kib - r.idle_rss_start_kib) / 1024:+.2f} MiB",
            f"{r.drift_per_hour_kib / 1024:+.2f} MiB",
        ]
        for r in runs
    ]
    worst = max(runs, key=lambda r: r.idle_cpu_per_hour)
    drift = max(runs, key=lambda r: r.drift_per_hour_kib)
    meaning = (
        f"Idle after its first sync, the daemon spent at most {worst.idle_cpu_per_hour:.2f}"
        f" CPU-s an hour ({worst.books:,} books; the empty library:"
        f" {runs[0].idle_cpu_per_hour:.2f}), and its RSS moved at most"
        f" {drift.drift_per_hour_kib / 1024:+.2f} MiB an hour ({drift.books:,} books), both"
        " measured over the window and scaled to an hour."
    )
    return Table(
        heading="Idle after the first sync (push channel up, nothing to deliver)",
        meaning=meaning,
        columns=[
            "books",
            "window",
            "CPU in the window",
            "CPU per idle hour",
            "RSS at the start",
            "RSS change in the window",
            "RSS drift per hour",
        ],
        rows=rows,
        command=cmd,
    )


def _answers_table(runs: list[Run], cmd: str) -> Table:
    rows = [
        [
            f"{r.books:,}",
            _bytes(r.status_bytes),
            f"{r.status_text_lines}",
            _bytes(r.status_text_bytes),
            _bytes(r.status_json_bytes),
            _bytes(r.library_bytes),
            f"{(r.answers_rss_kib - r.idle_rss_end_kib) / 1024:+.1f} MiB",
        ]
        for r in runs
    ]
    big = runs[-1]
    meaning = (
        f"With {big.books:,} books, GET /v1/status answered {_bytes(big.status_bytes)} and"
        f" `shelfsync status` printed {big.status_text_lines} lines; GET /v1/library's first"
        f" page {_bytes(big.library_bytes)}, and the whole library was walked in"
        f" {big.library_pages} pages of {LIBRARY_PAGE}. The RSS column is what the daemon held"
        " after walking the library, beside what it held idle."
    )
    return Table(
        heading="Answer sizes",
        meaning=meaning,
        columns=[
            "books",
            "GET /v1/status",
            "status text lines",
            "status text",
            "status --json",
            "GET /v1/library",
            "RSS after GET /v1/library",
        ],
        rows=rows,
        command=cmd,
    )


def _delivery_table(runs: list[Run], cmd: str) -> Table:
    rows = [
        [
            f"{r.books:,}",
            f"{DELIVERED}",
            f"{r.delivered_s:.2f} s",
            f"{r.delivered_cpu_s:.2f} s",
            f"{r.books_per_s:.1f}",
        ]
        for r in runs
    ]
    low, high = runs[0], runs[-1]
    meaning = (
        f"{DELIVERED} small corpus books bought at once were delivered at"
        f" {high.books_per_s:.1f} books/s beside a library of {high.books:,} archived books,"
        f" using {high.delivered_cpu_s:.2f} CPU-s, against {low.books_per_s:.1f} books/s and"
        f" {low.delivered_cpu_s:.2f} CPU-s with an empty one: what each scheduling step costs"
        " beside the library it plans over. On loopback the wall time is mostly the stub's."
    )
    return Table(
        heading="Deliveries beside a large library",
        meaning=meaning,
        columns=["library", "books bought", "all complete after", "CPU", "books/s"],
        rows=rows,
        command=cmd,
    )


def _owned_table(runs: list[Owned], cmd: str) -> Table:
    rows = [
        [
            f"{r.books:,}",
            f"{r.delivered:,}",
            f"{r.seconds:.1f} s",
            f"{r.cpu_s:.1f} s",
            f"{r.cpu_s / r.delivered * 1000:.1f} ms",
            f"{r.books_per_s:.0f}",
            _mib(r.peak_kib),
        ]
        for r in runs
    ]
    low, high = runs[0], runs[-1]
    high_ms, low_ms = high.cpu_s / high.delivered * 1000, low.cpu_s / low.delivered * 1000
    meaning = (
        f"Delivering the oldest {high.delivered:,} books of a library of {high.books:,} the"
        f" device owns ran at {high.books_per_s:.0f} books/s ({high_ms:.1f} ms of CPU a book),"
        f" against {low.books_per_s:.0f} books/s ({low_ms:.1f} ms) for a library of"
        f" {low.books:,}:"
        f" {high.books_per_s / low.books_per_s:.2f}x. Each scheduling step looks at the books it"
        " can start, not at the whole library."
    )
    return Table(
        heading="Delivering a library the device owns",
        meaning=meaning,
        columns=[
            "library owned",
            "books delivered",
            "all complete after",
            "CPU",
            "CPU a book",
            "books/s",
            "peak RSS",
        ],
        rows=rows,
        command=cmd,
    )


def _cap_table(runs: list[Run], unavailable: str | None, cmd: str) -> Table:
    if unavailable is not None:
        return Table(
            heading="Under a hard memory cap (cgroup)",
            meaning=f"Not measured: no memory cgroup could be made on this machine"
            f" ({unavailable}).",
            columns=["cap", "result"],
            rows=[["-", "not measured"]],
            command=cmd,
        )
    rows = [
        [
            f"{r.cap_mib} MiB",
            f"{r.books:,}",
            "survived" if r.died_during is None else f"killed during {r.died_during}",
            f"{r.oom_kills}",
            "-" if r.cgroup_peak is None else f"{r.cgroup_peak / MIB:.1f} MiB",
            _mib(r.peak_kib) if r.peak_kib else "-",
            ", ".join(r.steps),
        ]
        for r in runs
    ]
    survived = [r for r in runs if r.died_during is None]
    meaning = (
        f"{len(survived)} of {len(runs)} capped daemons lived through every step (first sync,"
        f" {CAPPED_IDLE_S:g} s idle, the status answers, {DELIVERED} deliveries, then"
        " every page of GET /v1/library)."
        " The cgroup's charge counts the page cache of the files it reads as well as the"
        " process's memory; the kernel reclaims the former before it kills."
    )
    return Table(
        heading="Under a hard memory cap (cgroup)",
        meaning=meaning,
        columns=[
            "cap",
            "books",
            "result",
            "OOM kills",
            "cgroup peak charge",
            "peak RSS",
            "steps done",
        ],
        rows=rows,
        command=cmd,
    )


METHOD = """\
The stub runs with {delivered} small corpus books; for each library size a new account is seeded
straight into the stub's database with that many books bought a day before the device joins
(`server_stub.store` `seed_library`; archived, they stay in the cloud), and a fresh daemon
(`shelfsync run`, profile {profile}) registers and syncs the changes feed. **Sync**: from the
daemon's `daemon_started` log line to the `library_synced` line that brings the whole library,
wall time and on-CPU time of all its threads (`/proc/<pid>/task/*/schedstat`); requests are the
feed pages it pulled. **Idle**: CPU and `VmRSS` over a window right after the sync (the push
channel up, nothing to deliver), scaled to an hour. **Answers**: the bytes of GET /v1/status and
GET /v1/library on the local API, and of `shelfsync status` (text and `--json`). **Deliveries**:
{delivered} corpus books bought at once, until the daemon's log says each is complete. Peak RSS
is `VmHWM`. The 0-book row is the baseline of the same run. **Cap**: the same steps with the
largest library inside a memory cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes`, swap
off) at the profile's budget and at 256 MiB, with a {capped_idle:g} s idle window; a daemon the
kernel kills is reported with the step it died in. **Owned**: for each size but the baseline, a
new account whose library of that many books is bought while a fresh daemon is online (seeded
into the stub, told by the push of one more purchase): the oldest {owned:,} are small generated
EPUBs (a page and a one-row picture) in the stub's catalog, the rest newer; the time and CPU
until those {owned:,} are complete (the profile's concurrency of downloads)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default="kindle-keyboard-3g",
        help=f"device profile (default %(default)s; known: {', '.join(list_profiles())})",
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=SIZES,
        help="library sizes, comma-separated (default %(default)s; the first is the baseline)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=120.0,
        help="idle window per size (default %(default)s)",
    )
    parser.add_argument("--no-cap", action="store_true", help="skip the memory cgroup runs")
    parser.add_argument(
        "--owned-only",
        action="store_true",
        help="only deliver owned libraries (the planner's cost), not the archived-library steps",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep state and logs here (default: a temporary folder)"
    )


def _command(args: argparse.Namespace) -> str:
    words = ["scale", "--profile", args.profile]
    if args.sizes != SIZES:
        words += ["--sizes", ",".join(map(str, args.sizes))]
    if args.idle_seconds != 120.0:
        words += ["--idle-seconds", f"{args.idle_seconds:g}"]
    if args.no_cap:
        words.append("--no-cap")
    if args.owned_only:
        words.append("--owned-only")
    return command(*words)


async def run(args: argparse.Namespace) -> Section:
    profile = load_profile(args.profile)
    books = corpus_books(corpus_dir())[:DELIVERED]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsync-bench-"))
    library = workdir / "library"
    library.mkdir(parents=True, exist_ok=True)
    for book in books:
        (library / book.path.name).unlink(missing_ok=True)
        (library / book.path.name).symlink_to(book.path)
    print(f"bench scale: writing {OWNED_DELIVERED:,} small EPUBs for an owned library", flush=True)
    owned_catalog = await asyncio.to_thread(write_owned_catalog, library, OWNED_DELIVERED)
    runs: list[Run] = []
    capped: list[Run] = []
    owned: list[Owned] = []
    unavailable = None
    async with stub_process(workdir / "stub", library, workdir / "stub.log") as stub:
        for size in [s for s in args.sizes if s]:
            print(f"bench scale: delivering an owned library of {size:,} books", flush=True)
            owned.append(
                await measure_owned(
                    workdir, stub, args.profile, size, owned_catalog, books[0].book_id
                )
            )
            print(f"bench scale: {owned[-1]}", flush=True)
        for size in [] if args.owned_only else args.sizes:
            print(f"bench scale: {size:,} books; logs in {workdir}", flush=True)
            runs.append(await measure(workdir, stub, args.profile, size, args.idle_seconds, books))
            print(f"bench scale: {runs[-1]}", flush=True)
        if not args.no_cap and not args.owned_only:
            for cap_mib in CAPS_MIB:
                limit = (cap_mib or profile.memory.ram_budget_mb) * MIB
                try:
                    cgroup = MemoryCgroup.create(f"shelfsync-bench-{limit // MIB}", limit)
                except CgroupUnavailable as e:
                    unavailable = str(e)
                    break
                print(f"bench scale: {max(args.sizes):,} books, {limit // MIB} MiB cap", flush=True)
                try:
                    capped.append(
                        await measure(
                            workdir,
                            stub,
                            args.profile,
                            max(args.sizes),
                            CAPPED_IDLE_S,
                            books,
                            cgroup,
                        )
                    )
                finally:
                    cgroup.remove()
                print(f"bench scale: {capped[-1]}", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    cmd = _command(args)
    tables = []
    if runs:
        tables += [
            _sync_table(runs, args.profile, cmd),
            _idle_table(runs, cmd),
            _answers_table(runs, cmd),
            _delivery_table(runs, cmd),
        ]
    if not args.no_cap and runs:
        tables.append(_cap_table(capped, unavailable, cmd))
    if owned:
        tables.append(_owned_table(owned, cmd))
    return Section(
        name="scale",
        title="At library scale: first sync, idle, answers, memory caps",
        method=METHOD.format(
            delivered=DELIVERED,
            profile=args.profile,
            capped_idle=CAPPED_IDLE_S,
            owned=OWNED_DELIVERED,
        ),
        tables=tables,
    )


BENCHMARK = Benchmark(
    name="scale",
    summary="a 1,000 to 20,000-book library: first sync, idle CPU and RSS drift, answer sizes, "
    "deliveries beside it, and the daemon under a memory cgroup",
    add_arguments=add_arguments,
    run=run,
)
