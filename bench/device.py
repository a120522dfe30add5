"""`python -m bench device`: what the daemon costs the device: peak memory while delivering small
and very large books, CPU time while idle, and how fast it serves resources offline.

The daemon runs as a subprocess (`shelfsync run`, /proc readings of its pid) against the stub on
plain loopback: memory, idle CPU and reads do not depend on the link, and a 100 MB book through
an emulated 3G link would take a quarter of an hour to say the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
import zipfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

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
    percentile,
    stub_process,
)
from bench.registry import Benchmark
from bench.section import Section, Table, command
from daemon.client import AccountClient
from daemon.content.reader import FrameOpener, read_resource
from daemon.device_key import load_or_create_device_key
from daemon.profile import list_profiles, load_profile
from daemon.store import Store

MIB = 1024 * 1024
GENERATED_MB = 100
LARGE_IMAGE_MB = 20  # the "single 20 MB image", in a book of its own
IDLE_PROFILES = ("kindle-keyboard-3g", "paperwhite-wifi")


@dataclass(frozen=True, slots=True)
class Memory:
    book: Book
    idle_kib: int  # VmHWM once online, before the purchase
    peak_kib: int  # VmHWM once the book is complete
    read_peak_kib: int  # VmHWM once every resource of it was read through the local API
    seconds: float  # purchase to complete


@dataclass(frozen=True, slots=True)
class Idle:
    profile: str
    window_s: float
    cpu_s: float
    radio_wakeups: int  # windows that woke the radio during the window (the daemon's count)

    @property
    def per_hour(self) -> float:
        return self.cpu_s * 3600 / self.window_s

    @property
    def wakeups_per_hour(self) -> float:
        return self.radio_wakeups * 3600 / self.window_s

    @property
    def keepalive_floor_per_hour(self) -> float:
        """Wake-ups an hour that the push channel's keep-alive alone needs: the floor."""
        return 3600 / load_profile(self.profile).sync.keepalive_s


@dataclass(frozen=True, slots=True)
class Latency:
    method: str
    samples: list[float]  # seconds per read


async def _online_device(
    stack: AsyncExitStack, workdir: Path, name: str, stub: Stub, profile: str
) -> tuple[Device, AccountClient]:
    account = AccountClient(stub.url)
    await account.create_account(f"bench {name}")
    device = await stack.enter_async_context(
        device_process(
            workdir / name, stub.url, stub, profile, account.account_token, workdir / f"{name}.log"
        )
    )
    await device.wait_online()
    return device, account


async def measure_memory(workdir: Path, stub: Stub, profile: str, book: Book) -> Memory:
    """A fresh daemon per book, so each VmHWM is that delivery's own peak; then every
    resource of the book read back through the local API, the largest last."""
    async with AsyncExitStack() as stack:
        device, account = await _online_device(
            stack, workdir, f"memory-{book.book_id}", stub, profile
        )
        await asyncio.sleep(1)  # let the first sync settle: the idle figure is the idle daemon
        idle = device.status()["VmHWM"]
        ordered = await account.buy(book.book_id)
        state = await device.wait_complete(book.book_id, timeout_s=600)
        peak = device.status()["VmHWM"]
        described = await device.api.book(book.book_id)
        for resource in sorted(described["resources"], key=lambda r: r["size"]):
            status, _, body = await device.api.resource(book.book_id, resource["path"])
            if status != 200 or len(body) != resource["size"]:
                raise BenchError(f"{book.path.name}:{resource['path']} did not read back")
        read_peak = device.status()["VmHWM"]
        return Memory(book, idle, peak, read_peak, state["completed_at"] - ordered)


async def measure_idle(workdir: Path, stub: Stub, window_s: float) -> list[Idle]:
    """CPU seconds of daemons doing nothing but stay connected, over the same window."""
    async with AsyncExitStack() as stack:
        devices = [
            (name, (await _online_device(stack, workdir, f"idle-{name}", stub, name))[0])
            for name in IDLE_PROFILES
        ]
        await asyncio.sleep(2)  # past the first sync
        start = {name: device.cpu_seconds() for name, device in devices}
        woke = {name: await _radio_wakeups(device) for name, device in devices}
        began = time.monotonic()
        await asyncio.sleep(window_s)
        elapsed = time.monotonic() - began
        return [
            Idle(
                name,
                elapsed,
                d.cpu_seconds() - start[name],
                await _radio_wakeups(d) - woke[name],
            )
            for name, d in devices
        ]


async def _radio_wakeups(device: Device) -> int:
    return int((await device.api.status())["daemon"]["radio_wakeups"])


@dataclass(frozen=True, slots=True)
class Reads:
    latencies: list[Latency]  # per pass, the three methods in METHODS order
    peak_kib: int  # the reading daemon's VmHWM after every read


READ_METHODS = ("local API", "daemon.content.reader.read_resource", "zipfile, from the .epub")


async def measure_reads(workdir: Path, stub: Stub, profile: str, books: list[Book]) -> Reads:
    """Every resource of every book, three passes: in reading order (first time through, then
    again), then all of them in a random order (a reader jumping about, where the cache of
    decoded frames rarely helps). Each read three ways: through the local API, through
    daemon.content.reader directly (on the same database), and from the .epub with zipfile (each
    archive opened once)."""
    samples: dict[tuple[str, str], list[float]] = {}
    async with AsyncExitStack() as stack:
        device, account = await _online_device(stack, workdir, "reads", stub, profile)
        for book in books:
            await account.buy(book.book_id)
        for book in books:
            await device.wait_complete(book.book_id, timeout_s=600)
        store = Store.open(workdir / "reads" / "shelfsync.db", readonly=True)
        stack.callback(store.close)
        opener = FrameOpener(
            load_or_create_device_key(workdir / "reads" / "device.key"),
            load_profile(profile).memory.zstd_window_cap_bytes,
        )
        archives = {b.book_id: stack.enter_context(zipfile.ZipFile(b.path)) for b in books}
        in_order = []
        for book in books:
            version = store.frames.readable_version(book.book_id)
            assert version is not None  # complete, so readable
            in_order += store.frames.resources(book.book_id, version)  # in reading order
        jumping = random.Random(7).sample(in_order, len(in_order))
        passes = [("first time through", in_order), ("again", in_order), ("random order", jumping)]
        for pass_name, rows in passes:
            for row in rows:
                t0 = time.perf_counter()
                status, _, served = await device.api.resource(row.book_id, row.path)
                t1 = time.perf_counter()
                direct = read_resource(store, row, opener)
                t2 = time.perf_counter()
                original = archives[row.book_id].read(row.path)
                t3 = time.perf_counter()
                if status != 200 or served != original or direct != original:
                    raise BenchError(f"{row.book_id}:{row.path} did not read back")
                for method, seconds in zip(READ_METHODS, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    samples.setdefault((method, pass_name), []).append(seconds)
        peak_kib = device.status()["VmHWM"]
    latencies = [Latency(f"{m}, {p}", samples[(m, p)]) for p, _ in passes for m in READ_METHODS]
    return Reads(latencies, peak_kib)


def _size(n: int) -> str:
    return f"{n / MIB:,.1f} MiB" if n >= MIB else f"{n / 1024:,.0f} KiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _memory_table(profile: str, runs: list[Memory], cmd: str) -> Table:
    budget = load_profile(profile).memory.ram_budget_mb
    rows = [
        [
            m.book.path.name,
            _size(m.book.size),
            f"{m.idle_kib / 1024:.1f} MiB",
            f"{m.peak_kib / 1024:.1f} MiB",
            f"{(m.peak_kib - m.idle_kib) / 1024:+.1f} MiB",
            f"{m.read_peak_kib / 1024:.1f} MiB",
            f"{(m.read_peak_kib - m.idle_kib) / 1024:+.1f} MiB",
            f"{m.seconds:.2f} s",
        ]
        for m in runs
    ]
    # The yardstick: what reading a large book costs beyond reading a 1 MB one.
    yardstick = min(runs, key=lambda m: abs(m.book.size - 10**6))
    larger = [m for m in runs if m.book.size > yardstick.book.size]
    beyond = ", ".join(
        f"{m.book.path.name} ({_size(m.book.size)})"
        f" {(m.read_peak_kib - yardstick.read_peak_kib) / 1024:+.1f} MiB"
        for m in larger
    )
    highest = max(runs, key=lambda m: m.read_peak_kib)
    peak = highest.read_peak_kib / 1024
    meaning = (
        f"Beside the peak for delivering and reading a {_size(yardstick.book.size)} book"
        f" ({yardstick.book.path.name}, {yardstick.read_peak_kib / 1024:.1f} MiB), larger books"
        f" peaked at: {beyond}. The highest peak, {peak:.1f} MiB, is "
        + (
            f"within the {profile} budget of {budget} MiB, so the reader software keeps its"
            " memory whatever the reader buys."
            if peak <= budget
            else f"over the {profile} budget of {budget} MiB: reading"
            f" {highest.book.path.name} broke it."
        )
    )
    return Table(
        heading=f"Peak memory (VmHWM) while delivering and reading, profile {profile}",
        meaning=meaning,
        columns=[
            "book",
            "EPUB",
            "idle peak",
            "delivery peak",
            "growth",
            "peak after reading it all",
            "growth",
            "delivery time",
        ],
        rows=rows,
        command=cmd,
    )


def _idle_table(runs: list[Idle], cmd: str) -> Table:
    rows = [
        [
            r.profile,
            f"{r.window_s:.0f} s",
            f"{r.cpu_s * 1000:.1f} ms",
            f"{r.per_hour:.2f} s",
            f"{r.radio_wakeups}",
            f"{r.wakeups_per_hour:.0f}",
            f"{r.keepalive_floor_per_hour:.0f}",
            f"{r.wakeups_per_hour / r.keepalive_floor_per_hour:.2f}x",
        ]
        for r in runs
    ]
    worst = max(runs, key=lambda r: r.per_hour)
    most_awake = max(runs, key=lambda r: r.wakeups_per_hour / r.keepalive_floor_per_hour)
    meaning = (
        f"Idle and online, the daemon costs at most {worst.per_hour:.2f} CPU seconds an hour"
        f" ({worst.per_hour / 36:.3f}% of one core, {worst.profile}): the radio, not the"
        " processor, is what an idle connection costs the battery. The daemon itself woke the"
        f" radio at most {most_awake.wakeups_per_hour / most_awake.keepalive_floor_per_hour:.2f}x"
        " as often as the push channel's keep-alive alone needs (everything else rode those"
        " windows, or the service's own pings)."
    )
    return Table(
        heading="CPU and radio while idle (push channel up, nothing to deliver)",
        meaning=meaning,
        columns=[
            "profile",
            "window",
            "CPU in the window",
            "CPU per idle hour",
            "radio wake-ups",
            "wake-ups per hour",
            "keep-alive floor per hour",
            "ratio to the floor",
        ],
        rows=rows,
        command=cmd,
    )


def _reads_table(reads: Reads, books: int, profile: str, cmd: str) -> Table:
    results = reads.latencies
    rows = []
    for i, r in enumerate(results):
        zipped = results[i - i % 3 + 2].samples  # zipfile's reads in the same pass
        zip_p50, zip_p99 = percentile(zipped, 50), percentile(zipped, 99)
        p50, p99 = percentile(r.samples, 50), percentile(r.samples, 99)
        rows.append(
            [
                r.method,
                f"{len(r.samples):,}",
                _ms(p50),
                _ms(p99),
                _ms(max(r.samples)),
                f"{p50 / zip_p50:.1f}x",
                f"{p99 / zip_p99:.1f}x",
            ]
        )
    api = results[0].samples
    meaning = (
        f"The first time a reader turns to a chapter, picture or stylesheet offline, the local"
        f" API serves it in {_ms(percentile(api, 50))} at the median and"
        f" {_ms(percentile(api, 99))} at the 99th percentile ({books} books, every resource):"
        " well under the hundreds of milliseconds an e-ink page turn takes, on this machine;"
        " a Kindle-class core is several times slower. The reading daemon's peak memory after"
        f" all {sum(len(r.samples) for r in results[::3]):,} reads:"
        f" {reads.peak_kib / 1024:.1f} MiB (budget of {profile}:"
        f" {load_profile(profile).memory.ram_budget_mb} MiB)."
    )
    return Table(
        heading="Serving a resource offline: the store against zipfile",
        meaning=meaning,
        columns=["read through", "reads", "p50", "p99", "max", "p50 vs zipfile", "p99 vs zipfile"],
        rows=rows,
        command=cmd,
    )


METHOD = """\
The daemon runs as a subprocess (`shelfsync run`) against the stub on plain loopback; the stub
imported the corpus and two generated illustrated books (valid EPUB 3 with random-pixel PNG
plates: incompressible, so as large in the store as on the wire): {generated} MB of 2 MB plates,
and one single {large_image} MB image. **Memory**: the smallest corpus book, the one nearest
1 MB (the yardstick a large book is held to), the largest, and the two generated ones; a fresh
daemon per book, online and idle, then
the book bought and delivered, then every resource of it read through the local API (smallest
first); *idle peak* is `VmHWM` from `/proc/<pid>/status` before the purchase, *delivery peak*
once it is complete, *peak after reading it all* at the end (the high-water mark of the whole
run). **Idle CPU**: daemons online with nothing to do (push channel up, the service's
pings every 30 s), on-CPU time of all their threads from `/proc/<pid>/task/*/schedstat`
(nanoseconds; `/proc/<pid>/stat`'s 10 ms ticks where the kernel lacks it) over a window,
scaled to an hour. **Reads**: every corpus book delivered to
one daemon, then every resource of every book, in reading order, read three ways one after the
other: through the local API (an aiohttp client on the Unix socket, as reader software would),
through `daemon.content.reader.read_resource` on the same database (verify, decrypt, decode, slice:
the store's own cost), and with `zipfile` from the .epub opened once per book (what a reader that
opens EPUBs directly does). Each book is read through twice: *first time through* is a reader paging
through it (the daemon decodes a frame only as far as the page being read, and goes on from there
for the next page; its cache of part-decoded frames helps within a frame, not across books), *again*
a second pass; then *random order* reads every resource of the corpus once more in a shuffled order
(seed 7), a reader jumping about, where a read usually finds its frame no longer cached and decodes
it from the start as far as the resource ends. Every read is checked
byte for byte."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default="kindle-keyboard-3g",
        help=f"device profile of the daemon (default %(default)s: the smallest memory budget;"
        f" known: {', '.join(list_profiles())})",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=120.0,
        help="idle window for the CPU measurement (default %(default)s)",
    )
    parser.add_argument(
        "--generated-mb", type=int, default=GENERATED_MB, help="size of the generated book"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep state and logs here (default: a temporary folder)"
    )


def _command(args: argparse.Namespace) -> str:
    words = ["device", "--profile", args.profile]
    if args.idle_seconds != 120.0:
        words += ["--idle-seconds", f"{args.idle_seconds:g}"]
    if args.generated_mb != GENERATED_MB:
        words += ["--generated-mb", str(args.generated_mb)]
    return command(*words)


async def run(args: argparse.Namespace) -> Section:
    load_profile(args.profile)  # refuse a typo before any work
    corpus = corpus_dir()
    books = corpus_books(corpus)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsync-bench-"))
    library = workdir / "library"
    library.mkdir(parents=True, exist_ok=True)
    for book in books:
        (library / book.path.name).unlink(missing_ok=True)
        (library / book.path.name).symlink_to(book.path)
    print(f"bench device: generating a {args.generated_mb} MB illustrated book; logs in {workdir}")
    generated = book_of(
        await asyncio.to_thread(
            write_illustrated_epub,
            library / "generated_illustrated.epub",
            args.generated_mb * 10**6,
        )
    )
    large_image = book_of(
        await asyncio.to_thread(
            write_illustrated_epub,
            library / "generated_one_large_image.epub",
            LARGE_IMAGE_MB * 10**6,
            plate_bytes=LARGE_IMAGE_MB * 10**6,
            seed=1,
        )
    )
    async with stub_process(workdir / "stub", library, workdir / "stub.log") as stub:
        memory = []
        about_1mb = min(books, key=lambda b: abs(b.size - 10**6))
        for book in (books[0], about_1mb, books[-1], large_image, generated):
            print(f"bench device: memory while delivering {book.path.name}", flush=True)
            memory.append(await measure_memory(workdir, stub, args.profile, book))
        print(f"bench device: idle CPU over {args.idle_seconds:g} s", flush=True)
        idle = await measure_idle(workdir, stub, args.idle_seconds)
        print("bench device: reading every resource of every book", flush=True)
        reads = await measure_reads(workdir, stub, args.profile, books)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    cmd = _command(args)
    return Section(
        name="device",
        title="On the device: memory, idle CPU, offline reads",
        method=METHOD.format(generated=args.generated_mb, large_image=LARGE_IMAGE_MB),
        tables=[
            _memory_table(args.profile, memory, cmd),
            _idle_table(idle, cmd),
            _reads_table(reads, len(books), args.profile, cmd),
        ],
    )


BENCHMARK = Benchmark(
    name="device",
    summary="the daemon's peak memory delivering small to 100 MB books, CPU per idle hour, and "
    "offline read latency against zipfile",
    add_arguments=add_arguments,
    run=run,
)
