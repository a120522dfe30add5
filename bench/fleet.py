"""`python -m bench fleet`: a fleet of devices through a service outage, and how soon each learns
of a purchase once the service is back (issue 22 #1: every one within 60 s of the return).

Each simulated device runs the daemon's own code for what "told of a purchase" takes: its own
store (SQLite, in a folder of its own), its registration (`daemon.app.device_credentials`), its
ServiceClient, and the library-sync, connectivity (the push channel, and polling while it is
down) and radio-window workers, wired to each other and to a Comeback as daemon/app.py wires
them. It leaves out what follows once the library knows of a book (delivery, receipts, notes,
the local API), so that hundreds of devices fit in one process. All talk to one real stub
(`shelfsync-stub`, a subprocess) on loopback, which the benchmark stops for the outage and
starts again on the same port. Half the devices have a purchase made during the outage (written
into the stopped service's database, as a store front that stayed up would), the other half buy
right at the return; a device is told when its library sync has the book in its store.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.epubgen import write_illustrated_epub
from bench.harness import BenchError, Stub, book_of, median, percentile, stub_process
from bench.registry import Benchmark
from bench.section import Section, Table, command
from daemon.app import device_credentials
from daemon.client import (
    AccountClient,
    ChangesPage,
    ClientLimits,
    DeviceCredentials,
    ServiceClient,
)
from daemon.clock import SystemClock
from daemon.config import Settings, read_service_key
from daemon.content.library_sync import LibrarySync
from daemon.device_key import load_or_create_device_key
from daemon.errors import ShelfsyncError, TransportError
from daemon.profile import DeviceProfile, list_profiles, load_profile
from daemon.radio.connectivity import Connectivity
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, first_of
from daemon.service import PushStream
from daemon.store import Store
from server_stub.store import Store as StubStore

PROMISE_S = 60.0
DEVICES = 300
OUTAGE_S = 60.0
SETTLE_S = 10.0  # online before the outage: the idle fleet's request rate is measured here
GIVE_UP_S = 600.0  # after the return: a device not told by then is reported as never told
STARTING_AT_ONCE = 20  # devices registering at a time
ONLINE_WAIT_S = 300.0
REGISTER_TRIES = 5


class Requests:
    """The fleet's requests to the service (changes pulls, push channel connects), by when."""

    def __init__(self) -> None:
        self.times: list[float] = []  # monotonic

    def count(self) -> None:
        self.times.append(time.monotonic())

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t < end)

    def busiest_second(self, start: float, end: float) -> int:
        seconds = Counter(int(t - start) for t in self.times if start <= t < end)
        return max(seconds.values(), default=0)


class Counted:
    """A device's ServiceClient, counting each request the simulated workers make."""

    def __init__(self, client: ServiceClient, requests: Requests) -> None:
        self._client = client
        self._requests = requests

    async def library_changes(self, cursor: int, limit: int = 500) -> ChangesPage:
        self._requests.count()
        return await self._client.library_changes(cursor, limit)

    def push_channel(self, prefix_room: int = 0) -> AbstractAsyncContextManager[PushStream]:
        self._requests.count()
        return self._client.push_channel(prefix_room)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)  # the rest of ServiceAPI, which these workers skip


@dataclass
class SimDevice:
    """One device of the fleet: its account, its purchase, and when it was told of it."""

    index: int
    state: Path
    account: AccountClient = field(init=False)
    store: Store | None = None
    connectivity: Connectivity | None = None
    online_at: list[float] = field(default_factory=list)  # monotonic, each channel that spoke
    book_id: str = ""  # the purchase it waits for ("" until one is made)
    bought_at: float | None = None  # monotonic
    told_at: float | None = None
    during_outage: bool = False

    @property
    def online(self) -> bool:
        return self.connectivity is not None and self.connectivity.online

    def library_changed(self) -> None:
        store = self.store
        if (
            self.book_id
            and self.told_at is None
            and store
            and store.library.in_library(self.book_id)
        ):
            self.told_at = time.monotonic()

    async def run(
        self,
        stub: Stub,
        profile: DeviceProfile,
        requests: Requests,
        starting: asyncio.Semaphore,
        stop: asyncio.Event,
    ) -> None:
        """Register with a new account (`starting` says how many at a time, as a fleet is
        switched on) and run the workers until `stop`."""
        self.account = AccountClient(stub.url)
        self.state.mkdir(parents=True, exist_ok=True)
        clock = SystemClock()
        store = self.store = Store.open(self.state / "shelfsync.db")
        client: ServiceClient | None = None
        try:
            async with starting:
                credentials = await self._register(stub, profile, store, clock.wall())
            windows = RadioWindows(clock)
            client = ServiceClient(
                stub.url,
                credentials,
                ClientLimits.of(profile),
                on_radio=windows.radio_used,
            )
            service = Counted(client, requests)
            comeback = Comeback()
            sync = LibrarySync(
                store, service, clock, windows, on_change=self.library_changed, comeback=comeback
            )

            def link_event(kind: str) -> None:
                if kind != "poll":  # as in daemon/app.py: the service spoke, every retry goes
                    comeback.announce()
                if kind == "online":
                    self.online_at.append(time.monotonic())

            self.connectivity = Connectivity(
                service,
                clock,
                windows,
                sync.request,
                keepalive_s=profile.sync.keepalive_s,
                poll_interval_s=profile.sync.poll_interval_s,
                on_event=link_event,
                on_library_push=sync.apply_push,
            )
            sync.request()
            # Until the stop; a worker that fails ends the run with its error.
            await first_of(stop.wait(), windows.run(), sync.run(), self.connectivity.run())
        finally:
            self.connectivity = None
            if client is not None:
                await client.close()
            store.close()

    async def _register(
        self, stub: Stub, profile: DeviceProfile, store: Store, now: float
    ) -> DeviceCredentials:
        """A new account and this device registered with it; a stub slow to answer (the
        machine is shared) is asked again, as a device that is switched on would."""
        failures = 0
        while True:
            try:
                if not self.account.account_token:
                    await self.account.create_account(f"fleet reader {self.index}")
                settings = Settings(
                    state_dir=self.state,
                    service_url=stub.url,
                    service_key=read_service_key(str(stub.key_path)),
                    profile=profile,
                    device_name=f"fleet device {self.index}",
                    account_token=self.account.account_token,
                )
                key = load_or_create_device_key(settings.device_key_path)
                return await device_credentials(store, settings, key, now)
            except TransportError:
                failures += 1
                if failures == REGISTER_TRIES:
                    raise
                await asyncio.sleep(1.0)


class Service:
    """The stub as a subprocess that can be stopped and started again on its port."""

    def __init__(self, data: Path, library: Path, log: Path) -> None:
        self._data, self._library, self._log = data, library, log
        self._running: AbstractAsyncContextManager[Stub] | None = None
        self.port = 0

    async def start(self) -> Stub:
        running = stub_process(self._data, self._library, self._log, port=self.port)
        stub = await running.__aenter__()
        self._running, self.port = running, stub.address[1]
        return stub

    async def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            await running.__aexit__(None, None, None)


@dataclass
class Outcome:
    devices: list[SimDevice]
    outage_s: float
    returned_at: float  # monotonic
    requests_idle_per_min: float  # the whole fleet's, online and idle before the outage
    requests_outage: int
    requests_first_min: int  # in the minute after the return
    busiest_second: int  # of the minute after the return

    def told(self) -> list[SimDevice]:
        return [d for d in self.devices if d.told_at is not None]

    def from_return(self, devices: list[SimDevice]) -> list[float]:
        return [d.told_at - self.returned_at for d in devices if d.told_at is not None]

    def reconnects(self) -> list[float]:
        return [
            min(t for t in d.online_at if t >= self.returned_at) - self.returned_at
            for d in self.devices
            if any(t >= self.returned_at for t in d.online_at)
        ]


async def _until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _seed_purchase(stub_data: Path, account_token: str, book_id: str) -> None:
    """A purchase made while the service is down: written into its database."""
    stub_store = StubStore.open(stub_data)
    try:
        account_id = stub_store.account_for_token(account_token)
        if account_id is None:
            raise BenchError("the stopped stub does not know a fleet account")
        stub_store.seed_library(account_id, [book_id], at=time.time(), reason="bought")
    finally:
        stub_store.close()


async def _buy_during(device: SimDevice, at: float, stub_data: Path, book_id: str) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    device.book_id, device.during_outage = book_id, True
    await asyncio.to_thread(_seed_purchase, stub_data, device.account.account_token or "", book_id)
    device.bought_at = time.monotonic()


async def _buy_at_return(device: SimDevice, book_id: str) -> None:
    """The reader buys as the store answers again (the first try may find it still starting)."""
    device.book_id = book_id
    for _ in range(100):
        try:
            await device.account.buy(book_id)
        except ShelfsyncError:
            await asyncio.sleep(0.05)
            continue
        device.bought_at = time.monotonic()
        device.library_changed()  # told already, by a pull that raced the purchase's answer
        if device.told_at is not None:
            device.told_at = device.bought_at
        return
    raise BenchError(f"device {device.index} could not buy after the return")


async def measure(args: argparse.Namespace, workdir: Path) -> Outcome:
    profile = load_profile(args.profile)
    library = workdir / "library"
    library.mkdir(parents=True, exist_ok=True)
    epub = library / "fleet-book.epub"
    write_illustrated_epub(epub, 3_000, plate_bytes=3_000, seed=1)
    book_id = book_of(epub).book_id
    service = Service(workdir / "stub", library, workdir / "stub.log")
    requests = Requests()
    rng = random.Random(args.seed)
    stop = asyncio.Event()
    devices = [SimDevice(i, workdir / f"device-{i:04d}") for i in range(args.devices)]
    stub = await service.start()
    starting = asyncio.Semaphore(STARTING_AT_ONCE)
    tasks = [
        asyncio.create_task(
            d.run(stub, profile, requests, starting, stop), name=f"fleet device {d.index}"
        )
        for d in devices
    ]
    watch = asyncio.create_task(_fail_fast(tasks), name="fleet watch")
    try:
        if not await _until(lambda: all(d.online for d in devices) or watch.done(), ONLINE_WAIT_S):
            raise BenchError(f"not every device came online; see {workdir / 'stub.log'}")
        if watch.done():
            watch.result()
        print(f"bench fleet: {len(devices)} devices online", flush=True)
        idle_from = time.monotonic()
        await asyncio.sleep(SETTLE_S)
        idle_per_min = requests.between(idle_from, time.monotonic()) * 60 / SETTLE_S

        await service.stop()
        down_at = time.monotonic()
        print(f"bench fleet: the service is down for {args.outage_seconds:g} s", flush=True)
        half = len(devices) // 2
        seeding = [
            asyncio.create_task(
                _buy_during(
                    d,
                    down_at + rng.uniform(0.1, 0.9) * args.outage_seconds,
                    workdir / "stub",
                    book_id,
                )
            )
            for d in devices[:half]
        ]
        await asyncio.gather(*seeding)
        await asyncio.sleep(max(0.0, down_at + args.outage_seconds - time.monotonic()))
        await service.start()  # on its port: the devices' URL is the same
        returned_at = time.monotonic()
        print("bench fleet: the service is back", flush=True)
        await asyncio.gather(*(_buy_at_return(d, book_id) for d in devices[half:]))
        await _until(lambda: all(d.told_at is not None for d in devices), GIVE_UP_S)
        await asyncio.sleep(max(0.0, returned_at + PROMISE_S - time.monotonic()))
        minute = returned_at + PROMISE_S
        return Outcome(
            devices,
            args.outage_seconds,
            returned_at,
            idle_per_min,
            requests.between(down_at, returned_at),
            requests.between(returned_at, minute),
            requests.busiest_second(returned_at, minute),
        )
    finally:
        stop.set()
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await service.stop()
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise BenchError(f"{len(failed)} devices failed; the first: {failed[0]!r}")


async def _fail_fast(tasks: list[asyncio.Task[None]]) -> None:
    """Ends (raising its error) as soon as a device's run does, which only a failure does."""
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()
    raise BenchError("a device stopped before the benchmark ended")


def _s(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.1f} s" if values else "-"


def _told_table(o: Outcome, cmd: str) -> Table:
    rows = []
    groups = (("during the outage", True), ("at the return", False), ("all", None))
    for name, during in groups:
        group = [d for d in o.devices if during is None or d.during_outage == during]
        told = [d for d in group if d.told_at is not None]
        waits = o.from_return(told)
        since_purchase = [
            d.told_at - d.bought_at
            for d in told
            if d.told_at is not None and d.bought_at is not None
        ]
        rows.append(
            [
                name,
                f"{len(group)}",
                f"{sum(1 for w in waits if w <= PROMISE_S)} of {len(group)}",
                f"{median(waits):.1f} s" if waits else "-",
                _s(waits, 95),
                f"{max(waits):.1f} s" if waits else "-",
                f"{median(since_purchase):.1f} s" if since_purchase else "-",
                f"{max(since_purchase):.1f} s" if since_purchase else "-",
            ]
        )
    every = o.from_return(o.told())
    within = sum(1 for w in every if w <= PROMISE_S)
    worst = f"{max(every):.1f} s" if every else "-"
    meaning = (
        f"After a {o.outage_s:g} s outage, {within} of {len(o.devices)} devices knew of their"
        f" purchase within {PROMISE_S:g} s of the service's return (the latest after {worst};"
        f" {len(o.devices) - len(every)} never told within {GIVE_UP_S:g} s). A purchase made"
        " during the outage counts from the return, when it could first be heard of."
    )
    return Table(
        heading=f"Told of a purchase after an outage, {len(o.devices)} devices",
        meaning=meaning,
        columns=[
            "purchase made",
            "devices",
            f"told within {PROMISE_S:g} s of the return",
            "median from the return",
            "p95",
            "max",
            "median from the purchase",
            "max from the purchase",
        ],
        rows=rows,
        command=cmd,
    )


def _requests_table(o: Outcome, cmd: str) -> Table:
    reconnects = o.reconnects()
    n = len(o.devices)
    per_device_min = o.requests_outage / n / (o.outage_s / 60) if n and o.outage_s else 0.0
    rows = [
        [
            f"{o.requests_idle_per_min:.0f}",
            f"{o.requests_outage} ({per_device_min:.1f} a device a minute)",
            f"{o.requests_first_min}",
            f"{o.busiest_second}",
            f"{len(reconnects)} of {n}",
            _s(reconnects, 10),
            _s(reconnects, 50),
            _s(reconnects, 90),
            f"{max(reconnects):.1f} s" if reconnects else "-",
        ]
    ]
    spread = (
        f"from {percentile(reconnects, 10):.1f} s (10th percentile) to"
        f" {percentile(reconnects, 90):.1f} s (90th)"
        if reconnects
        else "never"
    )
    meaning = (
        f"The fleet made {o.requests_outage} requests during the outage and"
        f" {o.requests_first_min} in the minute after the return, at most {o.busiest_second} in"
        f" any one second of it ({n} devices): the jittered reconnects came back {spread} after"
        " the return, "
        + ("not in one stampede." if o.busiest_second * 10 <= n else "much of the fleet at once.")
    )
    return Table(
        heading="Requests to the service, and the reconnects at the return",
        meaning=meaning,
        columns=[
            "a minute, online and idle",
            "during the outage",
            "first minute after the return",
            "busiest second",
            "push channels back",
            "reconnect p10",
            "median",
            "p90",
            "max",
        ],
        rows=rows,
        command=cmd,
    )


METHOD = """\
{devices} simulated devices (profile {profile}) in one process, each running the daemon's own
library sync, connectivity (push channel, polling while it is down) and radio-window workers,
its own ServiceClient and its own SQLite store, wired as daemon/app.py wires them (with the
Comeback that cuts pending retries short), and none of the delivery, notes or local API parts.
Each registers with an account of its own on one `shelfsync-stub` on loopback and waits until its
push channel is up. After {settle:g} s online, the stub is stopped for {outage:g} s and started
again on the same port. Half the devices have a purchase made at a random moment of the outage
(written into the stopped stub's database, as a store front that stayed up would), the other
half buy as soon as the stub answers again. A device is told when its library sync has stored
the book (checked after each page or push it applies). Requests are the changes pulls and push
channel connects the fleet made, counted on the devices' side (one refused at connect counts)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--devices", type=int, default=DEVICES, help="fleet size (default %(default)s)"
    )
    parser.add_argument(
        "--outage-seconds",
        type=float,
        default=OUTAGE_S,
        help="how long the service is down (default %(default)s)",
    )
    parser.add_argument(
        "--profile",
        default="kindle-keyboard-3g",
        help=f"device profile (default %(default)s; known: {', '.join(list_profiles())})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=22,
        help="when the outage's purchases fall (default %(default)s)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep state and logs here (default: a temporary folder)"
    )


def _command(args: argparse.Namespace) -> str:
    words = ["fleet"]
    if args.devices != DEVICES:
        words += ["--devices", str(args.devices)]
    if args.outage_seconds != OUTAGE_S:
        words += ["--outage-seconds", f"{args.outage_seconds:g}"]
    if args.profile != "kindle-keyboard-3g":
        words += ["--profile", args.profile]
    return command(*words)


async def run(args: argparse.Namespace) -> Section:
    if args.devices < 2:
        raise ValueError("--devices: at least 2 (half buy during the outage, half at its end)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfsync-fleet-"))
    try:
        outcome = await measure(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    cmd = _command(args)
    return Section(
        name="fleet",
        title="A fleet through a service outage: told of a purchase after the return",
        method=METHOD.format(
            devices=args.devices,
            profile=args.profile,
            settle=SETTLE_S,
            outage=args.outage_seconds,
        ),
        tables=[_told_table(outcome, cmd), _requests_table(outcome, cmd)],
    )


BENCHMARK = Benchmark(
    name="fleet",
    summary="hundreds of simulated devices through a service outage: how soon each is told of "
    "a purchase after the return, and the requests the fleet makes",
    add_arguments=add_arguments,
    run=run,
)
