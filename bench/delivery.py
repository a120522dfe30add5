"""`python -m bench delivery`: from purchase to a complete book, through each profile's emulated
link, side by side with a plain HTTP GET of the .epub and rsync -z of the library folder.

Per profile, every peer sits behind its own link emulator (devkit.linkemu) with the same
link, started together so their outages line up: the daemon (a subprocess) reaches the stub (a
subprocess); an HTTP client in this process reaches a static server of the corpus folder; rsync
reaches its own daemon on loopback, whose module is the corpus folder. Books go one at a time:
shelfsync (buy, then wait until complete), then the GET, then rsync.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

from bench.harness import (
    POLL_S,
    BenchError,
    Book,
    Device,
    Stub,
    corpus_books,
    corpus_dir,
    device_process,
    median,
    stub_process,
)
from bench.registry import Benchmark
from bench.section import Section, Table, command
from daemon.client import AccountClient
from daemon.profile import DeviceProfile, LinkProfile, list_profiles, load_profile
from devkit.children import child
from devkit.linkemu import Direction, LinkEmulator, describe_link, down_seconds
from server_stub.epub import read_epub

DEFAULT_PROFILES = ("kindle-keyboard-3g", "paperwhite-wifi")
RSYNC_MISSING = "not measured: rsync is not installed (Debian: apt-get install -y rsync)"
OUTAGE_MARK = "†"
LOSS_MARK = "‡"
TOLD_TARGET = 1.5  # issue 17's target for told, in link limits
# A measure that comes this soon after a piece a lost segment held back waited for it: the
# daemon's work between the bytes' arrival and its timestamp (a frame's hash and commit).
HELD_TOLERANCE_S = 0.1


@dataclass(frozen=True, slots=True)
class Timed:
    seconds: float
    limit: float  # the link limit for the same bytes (see METHOD)
    outage_s: float  # seconds of outage within the transfer, included in the limit
    held_s: float = 0.0  # how long a lost segment's resend held it up (not in the limit)

    @property
    def ratio(self) -> float:
        return self.seconds / self.limit

    def show(self) -> str:
        mark = (OUTAGE_MARK if self.outage_s else "") + (LOSS_MARK if self.held_s else "")
        return f"{self.seconds:.2f} s ({self.ratio:.2f}x){mark}"


@dataclass(frozen=True, slots=True)
class Transfer:
    time: Timed
    down: int  # bytes the emulator delivered towards the client
    up: int  # ...and towards the server

    @property
    def wire(self) -> int:
        return self.down + self.up


@dataclass(frozen=True, slots=True)
class Delivery:
    """One purchase through shelfsync, timed from the service's purchase time."""

    told: Timed
    first_chapter: Timed
    complete: Transfer
    round_trips: float  # the waits it took, to the complete book (ByteLog.round_trips)


@dataclass(frozen=True, slots=True)
class BookRun:
    book: Book
    shelfsync: Delivery
    get: Transfer
    rsync: Transfer | None  # None: rsync not installed


class ByteLog:
    """Cumulative bytes through one emulator over wall time: 'how many bytes had crossed by t'."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._times: list[float] = []
        self._totals: list[tuple[int, int]] = []
        self._down = self._up = 0
        self._held: list[tuple[float, float]] = []  # (due, arrived) of pieces a loss held

    def held(self, _direction: Direction, due: float, arrived: float) -> None:
        self._held.append((due, arrived))

    def held_before(self, at: float) -> float:
        """How long a lost segment held up what arrived just before `at` (0: nothing was):
        a measure taken then waited for the resend, which the link limit does not count."""
        return max(
            (
                min(arrived, at) - due
                for due, arrived in self._held
                if due < at and at - HELD_TOLERANCE_S <= arrived <= at
            ),
            default=0.0,
        )

    def observe(self, direction: Direction, n: int) -> None:
        self.record(time.time(), direction, n)

    def record(self, at: float, direction: Direction, n: int) -> None:
        if direction == "down":
            self._down += n
        else:
            self._up += n
        self._times.append(at)
        self._totals.append((self._down, self._up))

    def at(self, wall: float) -> tuple[int, int]:
        i = bisect.bisect_right(self._times, wall)
        return self._totals[i - 1] if i else (0, 0)

    def round_trips(self, start: float, end: float, silence_s: float) -> float:
        """The round trips the device waited for between `start` (the purchase) and `end`.

        A wait is a silence of the down direction longer than `silence_s` during which the
        device had sent something: a request waiting for its answer, one round trip however
        many requests went together. The stretch from the purchase to the first byte down
        counts half when the device sent nothing in it (the service spoke first, on the push
        channel). Silences with nothing sent (a lost piece resent, the service thinking) are
        not round trips: the time column shows what they cost."""
        first = bisect.bisect_right(self._times, start)
        last = bisect.bisect_right(self._times, end)
        waits = 0.0
        quiet_since = start  # when the down direction last carried bytes
        down_before = self._totals[first - 1][0] if first else 0
        up_before = self._totals[first - 1][1] if first else 0
        sent = False  # the device sent something since then
        told = False  # the first byte down has come
        for at, (down, up) in zip(self._times[first:last], self._totals[first:last], strict=True):
            if up > up_before:
                sent = True
            elif down > down_before:
                if not told:
                    waits += 1.0 if sent else 0.5
                    told = True
                elif sent and at - quiet_since > silence_s:
                    waits += 1.0
                sent = False
                quiet_since = at
            down_before, up_before = down, up
        return waits


def link_limit(link: LinkProfile, down: int, up: int, round_trips: float, outage_s: float) -> float:
    """The time the bytes alone need at the link's rates, plus the unavoidable round trips, plus
    any outage the transfer sat through."""
    return (
        down / link.down_bytes_per_s
        + up / link.up_bytes_per_s
        + round_trips * link.rtt_s
        + outage_s
    )


def _spread(books: list[Book], n: int | None) -> list[Book]:
    """`n` books spread evenly over the size-sorted corpus (smallest and largest included)."""
    if n is None or n >= len(books):
        return books
    if n <= 1:
        return books[len(books) // 2 :][:n]
    picks = sorted({round(i * (len(books) - 1) / (n - 1)) for i in range(n)})
    return [books[i] for i in picks]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def static_server(folder: Path) -> AsyncIterator[tuple[str, int]]:
    """The folder over plain HTTP, as an OPDS catalogue's download links serve it."""
    app = web.Application()
    app.router.add_static("/", folder)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield "127.0.0.1", int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@asynccontextmanager
async def rsync_daemon(rsync: str, folder: Path, workdir: Path) -> AsyncIterator[tuple[str, int]]:
    """rsync's own daemon on loopback, with module `library` = the folder, read-only."""
    port = _free_port()
    config = workdir / "rsyncd.conf"
    config.write_text(
        "use chroot = no\n"
        f"uid = {os.getuid()}\n"
        f"gid = {os.getgid()}\n"
        f"pid file = {workdir / 'rsyncd.pid'}\n"
        "[library]\n"
        f"    path = {folder}\n"
        "    read only = yes\n"
    )
    args = [rsync, "--daemon", "--no-detach", f"--config={config}", "--address=127.0.0.1"]
    async with child([*args, f"--port={port}"], workdir / "rsyncd.log") as proc:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise BenchError(
                        f"rsync --daemon did not start; see {workdir}/rsyncd.log"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield "127.0.0.1", port


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def measure_shelfsync(
    device: Device, account: AccountClient, book: Book, emulator: LinkEmulator, log: ByteLog
) -> Delivery:
    link = emulator.link
    log.clear()
    epub = read_epub(book.path)
    first_page = (epub.first_chapter, *epub.first_chapter_needs)
    ordered = await account.buy(book.book_id)
    timeout = 120 + 4 * book.size / link.down_bytes_per_s
    first_chapter_at, serve_s = await _wait_first_page(device, book.book_id, first_page, timeout)
    state = await device.wait_complete(book.book_id, timeout)

    def timed(at: float, then_s: float = 0.0) -> Timed:
        """From the purchase to `at` (a daemon's timestamp), and `then_s` after it."""
        down, up = log.at(at)
        outage = down_seconds(link, emulator.link_time(ordered), emulator.link_time(at))
        # The purchase happens at the service: the device can know of it half a round trip on.
        limit = link_limit(link, down, up, 0.5, outage)
        return Timed(at + then_s - ordered, limit, outage, log.held_before(at))

    down, up = log.at(state["completed_at"])
    return Delivery(
        told=timed(state["notified_at"]),
        first_chapter=timed(first_chapter_at, serve_s),
        complete=Transfer(timed(state["completed_at"]), down, up),
        # Half the base round trip: a wait for an answer is a whole one, more than the
        # gap between two pieces of a flowing answer (about 10 ms of the link's rate).
        round_trips=log.round_trips(ordered, state["completed_at"], link.rtt_s / 2),
    )


async def _wait_settled(device: Device, timeout_s: float = 120) -> None:
    """Until the daemon has fetched what it fetches while idle (the catalog's dictionaries): a
    reader buys minutes after setting a device up, not in its first second."""
    deadline = time.monotonic() + timeout_s
    while (await device.api.status())["daemon"].get("dictionaries_pending"):
        if device.proc.returncode is not None or time.monotonic() > deadline:
            raise BenchError(f"the daemon never fetched its dictionaries; see {device.log}")
        await asyncio.sleep(POLL_S)


async def _wait_first_page(
    device: Device, book_id: str, paths: tuple[str, ...], timeout_s: float
) -> tuple[float, float]:
    """When a reader could open the first page: the daemon's own time for the first chapter's
    frames committed (`first_chapter_at`), plus what the local API then takes to serve the
    first chapter and every resource its first page shows (PROTOCOL.md, `first_chapter_needs`),
    timed as soon as it is seen. Not the poll that finds it: at every 0.1 s, the poll was most
    of a Wi-Fi first chapter (0.11 s for a chapter whose bytes need 0.02 s)."""
    deadline = time.monotonic() + timeout_s
    while not ((state := await device.book(book_id)) and state["first_chapter_at"]):
        if time.monotonic() > deadline:
            raise BenchError(f"{book_id}: the first chapter never read; see {device.log}")
        await asyncio.sleep(POLL_S)
    started = time.monotonic()
    for path in paths:
        if (await device.api.resource(book_id, path))[0] != 200:
            raise BenchError(f"{book_id}: {path} not served once readable; see {device.log}")
    return float(state["first_chapter_at"]), time.monotonic() - started


def _measured(
    emulator: LinkEmulator,
    before: tuple[int, int],
    started: float,
    check: str,
    got: str,
    log: ByteLog | None = None,
) -> Transfer:
    if got != check:
        raise BenchError(f"the file that arrived differs from the original (sha256 {got})")
    link, ended = emulator.link, time.time()
    down = emulator.stats.bytes_down - before[0]
    up = emulator.stats.bytes_up - before[1]
    outage = down_seconds(link, emulator.link_time(started), emulator.link_time(ended))
    # A request and its answer: one round trip, whatever the protocol.
    limit = link_limit(link, down, up, 1.0, outage)
    held = log.held_before(ended) if log is not None else 0.0
    return Transfer(Timed(ended - started, limit, outage, held), down, up)


async def measure_get(emulator: LinkEmulator, book: Book, sha256: str, log: ByteLog) -> Transfer:
    """A fresh connection and one GET of the .epub, as an OPDS client downloads a book."""
    log.clear()
    before = emulator.stats.bytes_down, emulator.stats.bytes_up
    digest = hashlib.sha256()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=120)
    started = time.time()
    async with (
        aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
        session.get(f"{emulator.url}/{quote(book.path.name)}") as response,
    ):
        if response.status != 200:
            raise BenchError(f"GET {book.path.name}: HTTP {response.status}")
        async for chunk in response.content.iter_chunked(64 * 1024):
            digest.update(chunk)
    return _measured(emulator, before, started, sha256, digest.hexdigest(), log)


async def measure_rsync(
    rsync: str, emulator: LinkEmulator, book: Book, sha256: str, dest: Path
) -> Transfer:
    """`rsync -z` of the book's file from the library module into an empty folder."""
    before = emulator.stats.bytes_down, emulator.stats.bytes_up
    dest.mkdir(parents=True)
    source = f"rsync://127.0.0.1:{emulator.port}/library/{book.path.name}"
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        rsync,
        "-z",
        "--timeout=180",
        source,
        f"{dest}/",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"rsync {source} failed ({proc.returncode}): {err.decode().strip()}")
    return _measured(emulator, before, started, sha256, _sha256(dest / book.path.name))


async def run_profile(
    name: str,
    books: list[Book],
    stub: Stub,
    http_address: tuple[str, int],
    rsync: tuple[str, tuple[str, int]] | None,
    workdir: Path,
    seed: int,
) -> list[BookRun]:
    link = load_profile(name).link
    account = AccountClient(stub.url)
    await account.create_account(f"bench {name}")
    log = ByteLog()
    runs = []
    async with AsyncExitStack() as stack:
        # Started together, so one outage pattern covers all three.
        to_stub = LinkEmulator(
            link, stub.address, seed=seed, observer=log.observe, on_loss=log.held
        )
        get_log = ByteLog()  # only for the losses that held a GET up
        to_http = LinkEmulator(link, http_address, seed=seed + 1, on_loss=get_log.held)
        await stack.enter_async_context(to_stub)
        await stack.enter_async_context(to_http)
        to_rsync = None
        if rsync is not None:
            to_rsync = LinkEmulator(link, rsync[1], seed=seed + 2)
            await stack.enter_async_context(to_rsync)
        device = await stack.enter_async_context(
            device_process(
                workdir / name / "device",
                to_stub.url,
                stub,
                name,
                account.account_token,
                workdir / f"{name}-device.log",
            )
        )
        await device.wait_online()
        await _wait_settled(device)
        for i, book in enumerate(books):
            sha256 = _sha256(book.path)
            delivery = await measure_shelfsync(device, account, book, to_stub, log)
            get = await measure_get(to_http, book, sha256, get_log)
            copied = None
            if rsync is not None and to_rsync is not None:
                copied = await measure_rsync(
                    rsync[0], to_rsync, book, sha256, workdir / name / f"rsync-{i}"
                )
            runs.append(BookRun(book, delivery, get, copied))
            rsync_shown = copied.time.show() if copied else "-"
            print(
                f"  {name} {book.path.name}: complete {delivery.complete.time.show()},"
                f" GET {get.time.show()}, rsync {rsync_shown}",
                flush=True,
            )
    return runs


def _kb(n: float) -> str:
    return f"{n / 1000:,.0f} kB"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def _delivery_table(
    profile_name: str, profile: DeviceProfile, runs: list[BookRun], cmd: str
) -> Table:
    rows = [
        [
            r.book.path.stem,
            _kb(r.book.size),
            _kb(r.shelfsync.complete.wire),
            r.shelfsync.told.show(),
            r.shelfsync.first_chapter.show(),
            r.shelfsync.complete.time.show(),
            f"{r.shelfsync.round_trips:g}",
        ]
        for r in runs
    ]
    n = len(runs)
    told_fast = sum(r.shelfsync.told.ratio <= TOLD_TARGET for r in runs)
    told_held = sum(
        r.shelfsync.told.ratio > TOLD_TARGET and r.shelfsync.told.held_s > 0 for r in runs
    )
    readable_5 = sum(r.shelfsync.first_chapter.seconds <= 5 for r in runs)
    complete_60 = sum(r.shelfsync.complete.time.seconds <= 60 for r in runs)
    completes = [r.shelfsync.complete.time for r in runs]
    extra = median([t.seconds - t.limit for t in completes])
    rtts = extra / profile.link.rtt_s if profile.link.rtt_ms else 0.0
    meaning = (
        f"A reader with a {profile.name} could open the first chapter of {readable_5} of {n}"
        f" books within 5 s of buying them, and had {complete_60} of {n} complete within 60 s"
        f" (the promises). The median book was complete at"
        f" {median([t.ratio for t in completes]):.2f}x its link limit:"
        f" {extra:.2f} s beyond what its bytes need, about {rtts:.1f} of the link's"
        f" {profile.link.rtt_ms} ms round trips; the median purchase waited"
        f" {median([r.shelfsync.round_trips for r in runs]):g} round trips for answers on the"
        " way (half of one is the least: the push)."
        f" {told_fast} of {n} were told within {TOLD_TARGET:g}x their limit"
        + (
            f"; {told_held} of the others waited for a lost segment ({LOSS_MARK})."
            if told_held
            else "."
        )
    )
    return Table(
        heading=f"shelfsync on {profile_name}: {describe_link(profile.link)}",
        meaning=meaning,
        columns=[
            "book",
            "EPUB",
            "on the wire",
            "told",
            "first chapter",
            "complete",
            "round trips",
        ],
        rows=rows,
        command=cmd,
    )


def _side_by_side_table(profile: DeviceProfile, runs: list[BookRun], cmd: str) -> Table:
    def cells(t: Transfer | None) -> list[str]:
        return [_kb(t.wire), t.time.show()] if t else ["-", "-"]

    def from_told(d: Delivery) -> str:
        return f"{d.complete.time.seconds - d.told.seconds:.2f} s"

    rows = [
        [
            r.book.path.stem,
            *cells(r.shelfsync.complete),
            from_told(r.shelfsync),
            *cells(r.get),
            *cells(r.rsync),
        ]
        for r in runs
    ]

    def total(transfers: list[Transfer]) -> tuple[int, float, float]:
        return (
            sum(t.wire for t in transfers),
            sum(t.time.seconds for t in transfers),
            sum(t.time.limit for t in transfers),
        )

    ours = total([r.shelfsync.complete for r in runs])
    get = total([r.get for r in runs])
    copies = [r.rsync for r in runs if r.rsync is not None]
    theirs = total(copies) if len(copies) == len(runs) else None
    told = sum(r.shelfsync.complete.time.seconds - r.shelfsync.told.seconds for r in runs)
    row = ["all books", _kb(ours[0]), f"{ours[1]:.1f} s ({_ratio(ours[1], ours[2])})"]
    row += [f"{told:.1f} s"]
    row += [_kb(get[0]), f"{get[1]:.1f} s ({_ratio(get[1], get[2])})"]
    if theirs:
        row += [_kb(theirs[0]), f"{theirs[1]:.1f} s ({_ratio(theirs[1], theirs[2])})"]
    else:
        row += ["-", "-"]
    rows.append(row)
    meaning = (
        f"Over these books, shelfsync put {_ratio(ours[0], get[0])} the bytes of a plain HTTP"
        f" GET of each .epub on the {profile.name}'s link and took {_ratio(ours[1], get[1])}"
        " its time, counting from the purchase; from the moment the daemon was told,"
        f" {_ratio(told, get[1])}. The GET's number counts from its request: a reader of an"
        " OPDS client learns of a purchase only when they look for it, so from the purchase"
        " the GET takes as long as that, plus this; it is the least any download of the"
        " .epub can take, not what a reader waits."
    )
    if theirs:
        meaning += (
            f" rsync -z moved {_ratio(theirs[0], get[0])} the GET's bytes and took"
            f" {_ratio(theirs[1], get[1])} its time."
        )
    else:
        meaning += f" rsync: {RSYNC_MISSING}."
    return Table(
        heading=f"Side by side on {profile.name}: bytes on the wire, time to the complete book",
        meaning=meaning,
        columns=[
            "book",
            "shelfsync bytes",
            "shelfsync",
            "shelfsync from told",
            "HTTP GET bytes",
            "HTTP GET",
            "rsync -z bytes",
            "rsync -z",
        ],
        rows=rows,
        command=cmd,
    )


METHOD = """\
Each profile's link is emulated on loopback by `devkit/linkemu.py` (rate, round trip with jitter,
loss as retransmission delay, outages; its docstring says what is and is not modelled). The daemon
(`shelfsync run`, a subprocess, the profile's settings) reaches the stub (a subprocess, the whole
corpus imported) through one emulator; a purchase is made on the stub directly, as on the store's
website, once the daemon's push channel is up and it has fetched the catalog's compression
dictionary (which it does while idle, on the channel's hello). *told* is when the daemon recorded
the purchase and *complete* when its last frame was committed (the daemon's own timestamps, `GET
/v1/library`); *first chapter* is when the frames of the first chapter and of every resource its
first page shows (stylesheets, fonts, images, a fixed layout book's facing page and cover: the
manifest's `first_chapter_needs`) were committed (the daemon's `first_chapter_at`), plus the time
the local API then took to serve them all, asked as soon as the bench saw it (a reader app's
0.1 s polling is not counted: it was most of a Wi-Fi first chapter); each less the service's
purchase time. *Round trips* counts the waits for an answer from the
purchase to the complete book: each silence of the down direction longer than half the link's round
trip during which the device had sent something (a request, however many went together), and half a
round trip for the first byte when the service spoke first, on the push channel; the side by side's
*from told* is the complete book less *told*. Beside it, through emulators with the same link and
the same outage clock: a fresh aiohttp connection GETs the .epub from a static HTTP server of the
corpus folder (what an OPDS client such as KOReader does), and `rsync -z` fetches it from rsync's
own daemon on loopback (module = the corpus folder) into an empty folder; each timed to the
complete, verified file. *On the wire* is the payload the emulator relayed, both directions (TCP/IP
headers not counted). The **link limit** is the time those bytes need at the link's rates plus the
round trips no design avoids (half a round trip for a purchase to reach the device; one for a
request and its answer), plus any outage the transfer sat through; each time is shown with its
ratio to that limit. Loss and jitter are not in the limit: what they cost shows in the ratio, and a
time that came just after a piece a lost segment held back (by the emulator's retransmission
timeout, max(200 ms, 2 x RTT): 0.6 s on 3G, where 1% of segments are lost) is marked ‡, the GET's
too: it waited for the resend."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profiles",
        default=",".join(DEFAULT_PROFILES),
        help="comma-separated device profiles (default %(default)s; known:"
        f" {', '.join(list_profiles())})",
    )
    parser.add_argument(
        "--books",
        type=int,
        help="only N books, spread evenly over the corpus by size (default: every book)",
    )
    parser.add_argument(
        "--match",
        action="append",
        help="only books whose file name contains this text (repeatable: any of them)",
    )
    parser.add_argument("--seed", type=int, default=1, help="for the emulators' jitter and loss")
    parser.add_argument(
        "--workdir", type=Path, help="keep state and logs here (default: a temporary folder)"
    )


def _command(args: argparse.Namespace, profile: str) -> str:
    words = ["delivery", "--profiles", profile]
    if args.books is not None:
        words += ["--books", str(args.books)]
    for text in args.match or ():
        words += ["--match", text]
    return command(*words)


async def run(args: argparse.Namespace) -> Section:
    names = [p.strip() for p in args.profiles.split(",") if p.strip()]
    profiles = {name: load_profile(name) for name in names}  # refuse a typo before any work
    corpus = corpus_dir()
    books = [
        b
        for b in corpus_books(corpus)
        if not args.match or any(text in b.path.name for text in args.match)
    ]
    books = _spread(books, args.books)
    if not books:
        raise BenchError(f"no corpus book matches {args.match!r}")
    rsync = shutil.which("rsync")
    if rsync is None:
        print(f"bench: rsync column {RSYNC_MISSING}", flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsync-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"bench delivery: {len(books)} books, profiles {', '.join(names)}; logs in {workdir}")

    results: dict[str, list[BookRun]] = {}
    async with AsyncExitStack() as stack:
        stub = await stack.enter_async_context(
            stub_process(workdir / "stub", corpus, workdir / "stub.log")
        )
        http = await stack.enter_async_context(static_server(corpus))
        served = None
        if rsync is not None:
            served = (rsync, await stack.enter_async_context(rsync_daemon(rsync, corpus, workdir)))
        for i, name in enumerate(names):
            results[name] = await run_profile(
                name, books, stub, http, served, workdir, args.seed + 10 * i
            )
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)

    tables = []
    for name in names:
        cmd = _command(args, name)
        tables.append(_delivery_table(name, profiles[name], results[name], cmd))
        tables.append(_side_by_side_table(profiles[name], results[name], cmd))
    notes = [
        f"{OUTAGE_MARK} the link's outage overlapped this transfer; the outage's seconds are part"
        " of its limit.",
        f"{LOSS_MARK} a segment lost on the link held this up: what arrived just before it had"
        " waited for its resend (the emulator's retransmission timeout, max(200 ms, 2 x RTT));"
        " the limit counts no loss, so the ratio shows what it cost.",
        "Ratios: measured time / link limit; 1.00x would be a perfect use of the link.",
    ]
    if rsync is None:
        notes.append(f"rsync -z: {RSYNC_MISSING}.")
    all_ratios = [r.shelfsync.complete.time.ratio for runs in results.values() for r in runs]
    notes.append(
        f"Across profiles, shelfsync's time to complete spanned {min(all_ratios):.2f}x to"
        f" {max(all_ratios):.2f}x of the link limit (mean {statistics.fmean(all_ratios):.2f}x)."
    )
    return Section(
        name="delivery",
        title="Delivery: purchase to complete book, on device links",
        method=METHOD,
        tables=tables,
        notes=notes,
    )


BENCHMARK = Benchmark(
    name="delivery",
    summary="time from purchase to told, first chapter and complete book through each "
    "profile's emulated link, beside HTTP GET of the .epub and rsync -z",
    add_arguments=add_arguments,
    run=run,
)
