"""`python -m bench lowmem`: a 512 MB device (FAULTS.md #34): the daemon downloads a ~500 MB book
and serves it inside a memory cgroup of 512 MB, the whole device's memory, with no swap.

The book is generated (bench/epubgen.py: plates of random pixels that nothing compresses, so it
is as big on the wire and on flash as in the EPUB). While it downloads, the reader reads the
first plate again and again through the local API; once it is complete, every resource is read
back, the largest last. Figures: the daemon's VmHWM (/proc/<pid>/status) idle before the
purchase (the baseline of the same run), at the end of the download and after reading it all;
the cgroup's peak charge (which counts the page cache of the 500 MB it writes too) and its OOM
kills. The last run is also kept in bench/results/lowmem.json, for docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.cgroup import CgroupUnavailable, MemoryCgroup
from bench.epubgen import write_illustrated_epub
from bench.harness import BenchError, Device, book_of, device_process, stub_process
from bench.registry import Benchmark
from bench.section import RESULTS_DIR, Section, Table, command
from daemon.api.client import LocalApiError
from daemon.client import AccountClient
from daemon.profile import load_profile

MIB = 1024 * 1024
DEVICE_MB = 512
BOOK_MB = 500
PROFILE = "paperwhite-wifi"  # a 512 MB device class
LAST_RUN = RESULTS_DIR / "lowmem.json"


@dataclass(frozen=True, slots=True)
class Run:
    book_bytes: int
    cap_bytes: int
    cgroup: str  # "v1", "v2" or why none could be made
    idle_kib: int
    download_kib: int
    read_kib: int
    reads_while_downloading: int
    seconds: float
    cgroup_peak_bytes: int | None
    oom_kills: int
    survived: bool

    @property
    def growth_kib(self) -> int:
        return max(self.download_kib, self.read_kib) - self.idle_kib


async def _read_while_downloading(device: Device, book_id: str, done: asyncio.Event) -> int:
    """Read the first plate's page and picture until the download ends; how many reads."""
    reads = 0
    while not done.is_set():
        try:
            described = await device.api.book(book_id)
        except LocalApiError:  # not described yet: the manifest is on its way
            described = {}
        paths = [r["path"] for r in described.get("resources", [])]
        for path in [p for p in paths if "plate-001" in p]:
            status, _, _ = await device.api.resource(book_id, path)
            reads += status == 200
        await asyncio.sleep(0.5)
    return reads


async def measure(workdir: Path, book_mb: int, cap: MemoryCgroup | None, why: str) -> Run:
    library = workdir / "library"
    library.mkdir(parents=True, exist_ok=True)
    print(f"bench lowmem: generating a {book_mb} MB illustrated book; logs in {workdir}")
    book = book_of(
        await asyncio.to_thread(
            write_illustrated_epub, library / "generated_500mb.epub", book_mb * 10**6
        )
    )
    print("bench lowmem: the stub imports it (zstd level 3)", flush=True)
    async with stub_process(
        workdir / "stub", library, workdir / "stub.log", "--zstd-level", "3"
    ) as stub:
        account = AccountClient(stub.url)
        await account.create_account("bench lowmem")
        async with device_process(
            workdir / "device",
            stub.url,
            stub,
            PROFILE,
            account.account_token,
            workdir / "device.log",
            wrap=cap.wrap if cap else None,
        ) as device:
            await device.wait_online()
            await asyncio.sleep(1)  # the first sync settles: the idle figure is the idle daemon
            idle = device.status()["VmHWM"]
            started = time.monotonic()
            await account.buy(book.book_id)
            done = asyncio.Event()
            reader = asyncio.create_task(_read_while_downloading(device, book.book_id, done))
            try:
                await device.wait_complete(book.book_id, timeout_s=1800)
            finally:
                done.set()
                reads = await reader
            seconds = time.monotonic() - started
            download = device.status()["VmHWM"]
            described = await device.api.book(book.book_id)
            for resource in sorted(described["resources"], key=lambda r: r["size"]):
                status, _, body = await device.api.resource(book.book_id, resource["path"])
                if status != 200 or len(body) != resource["size"]:
                    raise BenchError(f"{resource['path']} did not read back; see {device.log}")
            read = device.status()["VmHWM"]
            survived = device.proc.returncode is None
    return Run(
        book_bytes=book.size,
        cap_bytes=cap.limit_bytes if cap else 0,
        cgroup=f"v{cap.version}" if cap else why,
        idle_kib=idle,
        download_kib=download,
        read_kib=read,
        reads_while_downloading=reads,
        seconds=seconds,
        cgroup_peak_bytes=cap.peak_bytes() if cap else None,
        oom_kills=cap.oom_kills() if cap else 0,
        survived=survived,
    )


def _table(run: Run, cmd: str) -> Table:
    budget = load_profile(PROFILE).memory.ram_budget_mb
    peak = max(run.download_kib, run.read_kib) / 1024
    capped = f"a {run.cap_bytes // MIB} MiB memory cgroup ({run.cgroup}, no swap)"
    where = capped if run.cap_bytes else f"no memory cgroup ({run.cgroup})"
    meaning = (
        f"Delivering and serving a {run.book_bytes / 1e6:.0f} MB book inside {where}, the"
        f" daemon peaked at {peak:.1f} MiB, {run.growth_kib / 1024:+.1f} MiB over its idle"
        f" {run.idle_kib / 1024:.1f} MiB ({peak / (run.idle_kib / 1024):.2f}x), "
        + (
            f"within the {PROFILE} budget of {budget} MiB"
            if peak <= budget
            else f"over the {PROFILE} budget of {budget} MiB"
        )
        + f"; {run.oom_kills} OOM kills, and the reader read the first plate"
        f" {run.reads_while_downloading} times while the book came in. The cgroup's charge"
        " counts the page cache of the book written to flash, which the kernel reclaims at the"
        " cap rather than killing anything."
    )
    return Table(
        heading=f"A 512 MB device (FAULTS.md #34), profile {PROFILE}",
        meaning=meaning,
        columns=[
            "EPUB",
            "cap",
            "idle VmHWM",
            "after download",
            "after reading it all",
            "growth",
            "cgroup peak charge",
            "OOM kills",
            "delivery time",
        ],
        rows=[
            [
                f"{run.book_bytes / MIB:,.1f} MiB",
                f"{run.cap_bytes // MIB} MiB {run.cgroup}" if run.cap_bytes else run.cgroup,
                f"{run.idle_kib / 1024:.1f} MiB",
                f"{run.download_kib / 1024:.1f} MiB",
                f"{run.read_kib / 1024:.1f} MiB",
                f"{run.growth_kib / 1024:+.1f} MiB",
                "-" if run.cgroup_peak_bytes is None else f"{run.cgroup_peak_bytes / MIB:.1f} MiB",
                str(run.oom_kills),
                f"{run.seconds:.1f} s",
            ]
        ],
        command=cmd,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--book-mb", type=int, default=BOOK_MB, help="default: %(default)s")
    parser.add_argument(
        "--workdir", type=Path, help="keep state and logs here (default: a temporary folder)"
    )


async def run(args: argparse.Namespace) -> Section:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsync-lowmem-"))
    cap, why = None, ""
    try:
        cap = MemoryCgroup.create("shelfsync-bench-lowmem", DEVICE_MB * MIB)
    except CgroupUnavailable as e:
        why = str(e)
        print(f"bench lowmem: no memory cgroup, measuring without one: {why}")
    try:
        result = await measure(workdir, args.book_mb, cap, why)
    finally:
        if cap:
            cap.remove()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    cmd = command("lowmem", *([] if args.book_mb == BOOK_MB else ["--book-mb", str(args.book_mb)]))
    LAST_RUN.parent.mkdir(parents=True, exist_ok=True)
    LAST_RUN.write_text(
        json.dumps({**asdict(result), "growth_kib": result.growth_kib, "command": cmd}, indent=1)
        + "\n",
        encoding="utf-8",
    )
    if not result.survived or result.oom_kills:
        raise BenchError(f"the daemon did not survive a {DEVICE_MB} MB device; see {workdir}")
    return Section(
        name="lowmem",
        title="A 512 MB device",
        method=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip() if __doc__ else "",
        tables=[_table(result, cmd)],
    )


BENCHMARK = Benchmark(
    name="lowmem",
    summary="a 512 MB device: peak RSS while downloading and serving a ~500 MB book in a 512 MB"
    " memory cgroup (FAULTS.md #34)",
    add_arguments=add_arguments,
    run=run,
)
