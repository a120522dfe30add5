"""`python -m bench week`: one reader's week offline with two devices, as the reader judges it.

One stub and two daemons of one account (a Kindle on the kindle-keyboard-3g link, a second
device on oasis-4g, its clock a day behind), in this process, each behind its own link emulator.
Their time is a timeline (bench/timeline.py), its days the local calendar's, that skips ahead
whenever nothing is on the wire, so the week takes minutes while every transfer takes its real
time. Day 0 at home on Wi-Fi: ten books bought, and the reader runs the trip (POST /v1/trip, as
`shelfsync trip --days 7`) while some are still downloading. Days 1-7: each device's radio has a
few short windows a day on its own link, and none in between (no route: connections are
refused); at each window's start the system tells the daemon the network is back (POST
/v1/annotations/sync). A scripted reader on each device opens books, reads a resource, moves its
position and makes highlights, notes and bookmarks; it edits notes on both devices at once and
deletes on one what the other edits. A book bought on the website on day 3 must land in the next
window. Day 8: home again, on Wi-Fi.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import logging
import random
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import BenchError, book_of, corpus_dir
from bench.registry import Benchmark
from bench.section import Section, Table, command
from bench.timeline import DeviceClock, Timeline
from daemon.api.client import LocalApiClient
from daemon.api.status import format_status
from daemon.app import Daemon
from daemon.client import AccountClient
from daemon.config import Settings
from daemon.profile import LinkProfile, load_profile
from daemon.radio.power import FakePower
from daemon.radio.windows import RIDE_S
from devkit.linkemu import Direction, LinkEmulator
from server_stub.app import RunningStub, running_stub

DAY = 86400.0
HOUR = 3600.0
HOME_LINK = "paperwhite-wifi"  # the home Wi-Fi, for both devices
LEAVE_AFTER_READY_S = 600  # the reader leaves home ten minutes after the trip says "ready"
WAKE_MARGIN_S = 0.1  # real seconds, beyond a link's one-way trip, for a woken sleeper to send
WAKE_ROUND_TRIPS = 2  # a window's least: a connection, then a request and its answer
MAX_BOOK_BYTES = 4_000_000  # the week's books: the corpus's ordinary ones, not its 11 MB atlas
_TAG = re.compile(r"<[^>]+>")
_LOG = logging.getLogger("bench.week")
METHOD = __doc__.split("\n\n", 1)[1].replace("\n", " ").strip()


@dataclass(frozen=True, slots=True)
class Plan:
    """The week's shape; the defaults are the benchmark, `short()` the test's version."""

    days: int = 7
    books: int = 10
    notes: int = 200  # highlights, notes and bookmarks, over both devices
    shared_edits: int = 6  # notes edited on both devices without either seeing the other's edit
    contested: int = 4  # annotations deleted on one device while the other edits them
    windows: tuple[tuple[float, float], ...] = (
        (8 * HOUR, 600),
        (13 * HOUR, 300),
        (19.5 * HOUR, 600),
    )
    sessions: tuple[float, ...] = (7 * HOUR, 11 * HOUR, 16 * HOUR, 22 * HOUR)  # reading times
    purchase_day: int = 3  # the website purchase, at 10:00
    edit_at: tuple[int, float] = (2, 7 * HOUR - 60)  # (day, time): both edit the same notes
    delete_at: tuple[int, float] = (4, 7 * HOUR - 30)  # one deletes what the other edits
    skew_s: float = -DAY  # the second device's wall clock: a day behind
    profiles: tuple[str, str] = ("kindle-keyboard-3g", "oasis-4g")
    # Real seconds without a byte on any link that is up before the timeline skips ahead:
    # several of the slowest link's round trips with a retransmission, on a loaded machine.
    quiet_s: float = 3.0

    @staticmethod
    def short() -> Plan:
        return Plan(
            days=1,
            books=2,
            notes=24,
            shared_edits=2,
            contested=2,
            windows=((8 * HOUR, 300), (13 * HOUR, 300), (19.5 * HOUR, 300)),
            sessions=(7 * HOUR, 16 * HOUR),
            purchase_day=1,
            edit_at=(1, 11 * HOUR),
            delete_at=(1, 16 * HOUR - 30),
            profiles=("emulator-loopback", "emulator-loopback"),
            quiet_s=0.5,
        )


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    key: str  # short name in the tables
    profile: str
    offset_s: float  # its windows start this much after the plan's (two radios, two networks)
    skew_s: float


@dataclass
class Made:
    """One annotation the reader made, and what the reader expects of it at the end."""

    annotation_id: str
    book_id: str
    device: str
    texts: set[str]  # note texts that must be visible (note or conflicts) on every device
    deleted: bool = False  # expected deleted everywhere
    conflict: bool = False  # expected to show a conflict on every device


@dataclass
class DayRow:
    day: int
    device: str
    books_on_device: int
    wanted_missing: int
    notes_made: int
    notes_on_service: int
    conflicts: int
    radio_on_s: float
    radio_min_s: float
    says: str  # the trip answer in the reader's words
    wakes: int = 0  # times the radio woke
    windows_used: int = 0  # windows that carried anything: the wakes the least counts
    more_wakes_s: float = 0.0  # the least of the wakes beyond one a window: a round trip, a tail


@dataclass
class Radio:
    """What one device's link carried, on the timeline: the pieces and the windows they fell in."""

    pieces: list[tuple[float, Direction, int]] = field(default_factory=list)
    opened: list[float] = field(default_factory=list)  # when each window began

    def on_seconds(self, start: float, end: float, link: LinkProfile) -> tuple[float, float]:
        """(radio-on seconds, the least the same bytes need) within [start, end): the radio is
        on while a piece crosses the link (its bytes at the link's rate) and for RIDE_S after,
        the tail a cellular radio stays up after its last packet. The least: the bytes back to
        back at the link's rates, and per wake that could not be avoided (one per window that
        carried anything) its round trips (a connection, then a request and its answer, at the
        link's base RTT) and one tail."""
        spans: list[tuple[float, float]] = []
        down = up = 0
        for t, direction, n in self.pieces:
            if not start <= t < end:
                continue
            rate = link.down_bytes_per_s if direction == "down" else link.up_bytes_per_s
            down += n if direction == "down" else 0
            up += n if direction == "up" else 0
            spans.append((t - n / rate, t + RIDE_S))
        on, last_end = 0.0, float("-inf")
        for a, b in sorted(spans):
            if a > last_end:
                on += b - a
            elif b > last_end:
                on += b - last_end
            last_end = max(last_end, b)
        used = {bisect.bisect_right(self.opened, t) for t, _, _ in self.pieces if start <= t < end}
        per_wake = WAKE_ROUND_TRIPS * link.rtt_s + RIDE_S
        least = down / link.down_bytes_per_s + up / link.up_bytes_per_s + per_wake * len(used)
        return on, least

    def wakes(self, start: float, end: float) -> tuple[int, int]:
        """(times the radio woke, windows that carried anything) within [start, end): a wake is
        a piece more than RIDE_S after the one before it."""
        times = sorted(t for t, _, _ in self.pieces if start <= t < end)
        woke = sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] > RIDE_S)
        return woke, len({bisect.bisect_right(self.opened, t) for t in times})


class WeekDevice:
    """One daemon of the week: its link emulator (opened and closed as its radio's windows
    come and go), its local API, and what the reader did on it."""

    def __init__(self, spec: DeviceSpec, stub: RunningStub, timeline: Timeline, root: Path):
        self.spec = spec
        self.stub = stub
        self.timeline = timeline
        self.state = root / spec.key
        self.clock = DeviceClock(timeline, spec.skew_s)
        self.radio = Radio()
        self.link_profile = _without_outages(load_profile(HOME_LINK).link)
        self._link: LinkEmulator | None = None
        self.port = 0
        self.api: LocalApiClient | None = None
        self.last_byte_real = 0.0
        self.wanted_missing = 0
        self.made = 0
        self.sessions = 0

    def _observe(self, direction: Direction, n: int) -> None:
        self.last_byte_real = time.monotonic()
        self.radio.pieces.append((self.timeline.now(), direction, n))

    async def link_up(self, profile_name: str) -> None:
        self.link_profile = _without_outages(load_profile(profile_name).link)
        link = LinkEmulator(
            self.link_profile,
            (self.stub.host, self.stub.port),
            port=self.port,
            seed=hash(self.spec.key) & 0xFFFF,
            observer=self._observe,
        )
        await link.start()
        self.port = link.port
        self._link = link
        self.radio.opened.append(self.timeline.now())
        self.last_byte_real = time.monotonic()  # give the daemon its first round trips
        if self.api is not None:  # the system's "network is back"
            await self.api.send("POST", "/v1/annotations/sync")

    async def link_down(self) -> None:
        if self._link is not None:
            await self._link.close()
            self._link = None

    @property
    def online(self) -> bool:
        return self._link is not None

    @asynccontextmanager
    async def running(self, account: AccountClient) -> AsyncIterator[LocalApiClient]:
        self.state.mkdir(parents=True)
        await self.link_up(HOME_LINK)
        settings = Settings(
            state_dir=self.state,
            service_url=f"http://127.0.0.1:{self.port}",
            service_key=self.stub.service_key.private_key.public_key(),
            profile=load_profile(self.spec.profile),
            device_name=f"{self.spec.key} ({self.spec.profile})",
            account_token=account.account_token,
        )
        daemon = Daemon(settings, self.clock, FakePower(80.0, charging=False))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop), name=f"daemon {self.spec.key}")
        try:
            deadline = time.monotonic() + 60
            while not settings.api_socket.exists():
                if task.done():
                    task.result()
                if time.monotonic() > deadline:
                    raise BenchError(f"the {self.spec.key} daemon did not start")
                await asyncio.sleep(0.05)
            async with LocalApiClient(settings.api_socket, timeout_s=60) as api:
                self.api = api
                yield api
        finally:
            self.api = None
            stop.set()
            await task
            await self.link_down()


def _without_outages(link: LinkProfile) -> LinkProfile:
    """The profile's link with its own outages taken out: the week's windows are the outages."""
    return dataclasses.replace(link, outage=None, outage_timeline=())


def _api(device: WeekDevice) -> LocalApiClient:
    if device.api is None:
        raise BenchError(f"the {device.spec.key} daemon is not running")
    return device.api


class Reader:
    """The person: reads on both devices, annotates, and keeps count of what they did."""

    def __init__(self, devices: list[WeekDevice], plan: Plan, seed: int) -> None:
        self.devices = devices
        self.plan = plan
        self.rng = random.Random(seed)
        self.made: dict[str, Made] = {}
        self.bought: dict[str, float] = {}  # book_id -> timeline time it was bought
        self.expected_by: dict[str, float] = {}  # book_id -> when the reader expects it
        self.positions: dict[tuple[str, str], float] = {}  # (device, book) -> furthest progress
        self.position_log: list[str] = []
        self.notes_left = plan.notes
        self.sessions_left = plan.days * len(plan.sessions) * len(devices)
        self._texts: dict[tuple[str, str], tuple[str, str]] = {}
        self.missing_events: list[str] = []
        self.titles: dict[str, str] = {}
        self.skipped: list[str] = []

    async def _text(self, device: WeekDevice, book_id: str) -> tuple[str, str] | None:
        """A resource of the book to read and quote from, or None if it is not on the device."""
        cached = self._texts.get((device.spec.key, book_id))
        if cached:
            return cached
        api = _api(device)
        status, details = await api.send("GET", f"/v1/books/{book_id}")
        if status != 200:
            return None
        for resource in details["resources"]:
            if resource["media_type"] != "application/xhtml+xml":
                continue
            code, _, body = await api.resource(book_id, resource["path"])
            if code != 200:
                return None
            text = " ".join(_TAG.sub(" ", body.decode("utf-8", "replace")).split())
            if len(text) >= 600:
                self._texts[(device.spec.key, book_id)] = (resource["path"], text)
                return resource["path"], text
        return None

    def _anchor(self, path: str, text: str, kind: str) -> dict[str, Any]:
        length = 0 if kind == "bookmark" else self.rng.randint(20, 160)
        start = self.rng.randint(64, len(text) - length - 64)
        exact = text[start : start + length] if length else text[start : start + 20]
        return {
            "resource": path,
            "start": start,
            "end": start + length,
            "quote": {
                "exact": exact,
                "prefix": text[start - 32 : start],
                "suffix": text[start + length : start + length + 32],
            },
        }

    def want(self, now: float) -> list[str]:
        """The books the reader expects on every device by now."""
        return [b for b, at in self.expected_by.items() if at <= now]

    async def session(self, device: WeekDevice, day: int) -> None:
        """Open a book, read on, move the position, annotate."""
        api = _api(device)
        now = device.timeline.now()
        wanted = self.want(now)
        if not wanted:
            return
        device.sessions += 1
        # The newest purchase first (the reader has waited for it), else on through the library;
        # a book that is not there is an event the reader notices, and they pick another.
        newest = max(wanted, key=lambda b: self.expected_by[b])
        turn = wanted[(device.sessions + day) % len(wanted)]
        first = newest if self.expected_by[newest] > now - DAY else turn
        text = None
        for book_id in [first, *(b for b in wanted if b != first)]:
            await api.send("POST", f"/v1/books/{book_id}/opened")
            text = await self._text(device, book_id)
            if text is not None:
                break
            device.wanted_missing += 1
            title = self.titles.get(book_id, book_id)
            self.missing_events.append(f"day {day} {device.spec.key}: '{title}' not on the device")
        if text is None:
            return
        path, body = text
        progress = min(1.0, self.positions.get((device.spec.key, book_id), 0.0) + 0.07)
        self.positions[(device.spec.key, book_id)] = progress
        status, _ = await api.send(
            "PUT",
            f"/v1/books/{book_id}/position",
            {"resource": path, "start": int(progress * (len(body) - 1)), "progress": progress},
        )
        if status != 200:
            raise BenchError(f"PUT position answered {status}")
        count = round(self.notes_left / max(1, self.sessions_left))
        self.sessions_left -= 1
        for _ in range(count):
            kind = self.rng.choices(["highlight", "note", "bookmark"], [6, 3, 2])[0]
            doc: dict[str, Any] = {"kind": kind, "anchor": self._anchor(path, body, kind)}
            note = ""
            if kind == "note" or self.rng.random() < 0.2:
                note = f"{device.spec.key} day {day}: {self.rng.choice(body.split())}"
                doc["note"] = note
            status, answer = await api.send("POST", f"/v1/books/{book_id}/annotations", doc)
            if status != 201:
                raise BenchError(f"the local API refused an annotation: {status} {answer}")
            self.made[answer["id"]] = Made(
                answer["id"], book_id, device.spec.key, {note} if note else set()
            )
            device.made += 1
            self.notes_left -= 1

    async def edit_both(self, day: int, count: int) -> None:
        """Notes of the first device edited on both, neither seeing the other's edit."""
        first, second = self.devices
        candidates = [m for m in self.made.values() if m.device == first.spec.key and not m.deleted]
        for made in candidates[:count]:
            if not await _received(second, made.annotation_id):
                self.skipped.append(f"{made.annotation_id} had not reached {second.spec.key}")
                continue
            texts = set()
            for device in (first, second):
                text = f"edited on {device.spec.key} on day {day}"
                status, _ = await _api(device).send(
                    "PATCH", f"/v1/annotations/{made.annotation_id}", {"note": text}
                )
                if status != 200:
                    raise BenchError(f"PATCH answered {status} on {device.spec.key}")
                texts.add(text)
            made.texts, made.conflict = texts, True

    async def delete_while_edited(self, day: int, count: int) -> None:
        """The first device deletes what the second edits: the edit must win, on both."""
        first, second = self.devices
        candidates = [
            m
            for m in self.made.values()
            if m.device == second.spec.key and not m.deleted and not m.conflict
        ]
        for made in candidates[:count]:
            if not await _received(first, made.annotation_id):
                self.skipped.append(f"{made.annotation_id} had not reached {first.spec.key}")
                continue
            await _api(first).send("DELETE", f"/v1/annotations/{made.annotation_id}")
            text = f"kept on {second.spec.key} on day {day}"
            await _api(second).send(
                "PATCH", f"/v1/annotations/{made.annotation_id}", {"note": text}
            )
            made.texts = {text}
        # And a few deleted by their own device, which must stay deleted everywhere.
        own = [m for m in self.made.values() if m.device == first.spec.key and not m.conflict]
        for made in own[-count:]:
            await _api(first).send("DELETE", f"/v1/annotations/{made.annotation_id}")
            made.deleted, made.texts = True, set()


async def _received(device: WeekDevice, annotation_id: str) -> bool:
    status, _ = await _api(device).send("GET", f"/v1/annotations/{annotation_id}")
    return status == 200


@dataclass
class Verdict:
    lost: list[str]
    duplicated: int
    conflicts_shown: int
    conflicts_expected: int
    positions_wrong: list[str]
    shared_missing: list[str]
    agreed_after_s: float | None  # from the reconnection at home to both devices agreeing
    window_s: float
    arrivals: list[tuple[str, str, float | None]]  # (device, title, seconds from purchase)


async def _annotations(device: WeekDevice, book_id: str) -> list[dict[str, Any]]:
    doc = await _api(device).get_json(f"/v1/books/{book_id}/annotations?include_deleted=1")
    found: list[dict[str, Any]] = doc["annotations"]
    return found


async def _view(device: WeekDevice, books: list[str]) -> dict[str, tuple[Any, ...]]:
    """What the reader sees of every annotation, comparable between devices."""
    view = {}
    for book_id in books:
        for a in await _annotations(device, book_id):
            conflicts = tuple(sorted(c["note"] for c in a["conflicts"]))
            view[a["id"]] = (a["deleted"], a["note"], conflicts, a["color"], a["pending"])
    return view


def _visible_texts(entry: tuple[Any, ...]) -> set[str]:
    _, note, conflicts, _, _ = entry
    return ({note} if note else set()) | set(conflicts)


async def judge(reader: Reader, books: list[str], stub: RunningStub, account_id: str) -> Verdict:
    lost, conflicts_shown, duplicated = [], 0, 0
    views = {d.spec.key: await _view(d, books) for d in reader.devices}
    for view in views.values():
        duplicated += sum(1 for annotation_id in view if annotation_id not in reader.made)
    for made in reader.made.values():
        shown_everywhere = True
        for key, view in views.items():
            entry = view.get(made.annotation_id)
            if entry is None:
                lost.append(f"{made.annotation_id} ({made.device}'s) never reached {key}")
                shown_everywhere = False
            elif made.deleted != entry[0]:
                state = "deleted" if entry[0] else "alive"
                lost.append(f"{made.annotation_id} is {state} on {key}")
            elif not made.texts <= _visible_texts(entry):
                lost.append(
                    f"{made.annotation_id} on {key} lacks {made.texts - _visible_texts(entry)}"
                )
                shown_everywhere = False
            elif made.conflict and not entry[2]:
                shown_everywhere = False
        if not made.deleted and stub.store.annotation_state(account_id, made.annotation_id) is None:
            lost.append(f"{made.annotation_id} never reached the service")
        conflicts_shown += made.conflict and shown_everywhere
    positions_wrong = []
    for book_id in books:
        furthest = max((p for (_, b), p in reader.positions.items() if b == book_id), default=None)
        if furthest is None:
            continue
        for device in reader.devices:
            doc = await _api(device).get_json(f"/v1/books/{book_id}/position")
            seen = ((doc.get("furthest") or {}).get("position") or {}).get("progress")
            if seen is None or abs(float(seen) - furthest) > 1e-9:
                positions_wrong.append(f"{book_id} on {device.spec.key}: furthest {seen}")
    shared_missing = []
    for device in reader.devices:
        for book_id in books:
            feed = stub.store.popular_changes(account_id, "", 0, 10_000, book_id).entries
            latest = {passage: readers for _, _, passage, readers, _ in feed}  # oldest first
            published = [p for p, readers in latest.items() if readers > 0]
            held = (await _api(device).get_json(f"/v1/books/{book_id}/popular-highlights"))[
                "passages"
            ]
            if len(held) < len(published):
                shared_missing.append(
                    f"{book_id} on {device.spec.key}: {len(held)} of {len(published)}"
                )
    return Verdict(
        lost,
        duplicated,
        conflicts_shown,
        sum(m.conflict for m in reader.made.values()),
        positions_wrong,
        shared_missing,
        None,
        0.0,
        [],
    )


class Week:
    def __init__(self, plan: Plan, workdir: Path, seed: int, corpus: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.seed = seed
        self.corpus = corpus
        self.rows: list[DayRow] = []
        self.sayings: list[str] = []

    def _quiet(self) -> bool:
        """Nothing on any wire for a while: the timeline may skip to the next wake. A link that is
        up may be waiting on a round trip, so it must have been silent for a few of them."""
        now = time.monotonic()
        online = [d for d in self.devices if d.online]
        # A sleeper just woken may have written a request that is still crossing a link (the
        # emulator sees it when it arrives): a keep-alive ping was skipped past to the window's
        # end and never measured. Its one-way trip, and a margin, before time may skip.
        crossing = max((d.link_profile.worst_rtt_s / 2 for d in online), default=0.0)
        if online and now - self.timeline.last_wake_real < crossing + WAKE_MARGIN_S:
            return False
        idle = now - max(d.last_byte_real for d in self.devices)
        return idle > (self.plan.quiet_s if online else 0.05)

    async def _until(self, t: float) -> None:
        await self.timeline.run_until(
            t, self._quiet, lambda: not any(d.online for d in self.devices)
        )

    def _library(self) -> tuple[Path, list[Path]]:
        ordinary = sorted(
            (p for p in self.corpus.glob("*.epub") if p.stat().st_size <= MAX_BOOK_BYTES),
            key=lambda p: p.name,
        )
        needed = self.plan.books + 1
        if len(ordinary) < needed:
            raise BenchError(f"the week needs {needed} books of at most 4 MB in {self.corpus}")
        chosen = random.Random(self.seed).sample(ordinary, needed)
        library = self.workdir / "library"
        library.mkdir()
        for path in chosen:
            shutil.copy(path, library / path.name)
        return library, chosen

    async def run(self) -> tuple[list[DayRow], Verdict, Reader]:
        plan = self.plan
        library, chosen = self._library()
        start = 18 * HOUR  # day 0, six in the evening
        # The timeline's days are the wall clock's, from today's local midnight: a trip's days
        # end at local midnight (daemon/content/trip.py), whatever hour the week is run at.
        today = datetime.now(UTC).astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
        self.timeline = Timeline(start, today.timestamp())
        async with AsyncExitStack() as stack:
            keeper = asyncio.create_task(self.timeline.keep_time(), name="timeline")
            stack.callback(keeper.cancel)
            stub = await stack.enter_async_context(
                running_stub(self.workdir / "stub", library_dir=library, clock=self.timeline.wall)
            )
            stub.store.set_popular_threshold(1)  # the reader's own shared highlights count
            account = AccountClient(stub.url)
            await account.create_account("week reader")
            await account.share_highlights(True)
            account_id = stub.store.account_for_token(account.account_token)
            assert account_id is not None
            specs = [
                DeviceSpec("kindle", plan.profiles[0], 0, 0.0),
                DeviceSpec("oasis", plan.profiles[1], 20 * 60, plan.skew_s),
            ]
            self.devices = [WeekDevice(s, stub, self.timeline, self.workdir) for s in specs]
            for device in self.devices:
                await stack.enter_async_context(device.running(account))
            reader = Reader(self.devices, plan, self.seed)
            books = [book_of(p) for p in chosen]
            titles = {b.book_id: b.title for b in books}
            reader.titles = titles
            arrivals: list[tuple[str, str, float | None]] = []

            # Day 0, at home: the purchases, then the trip while some still download.
            for book in books[: plan.books]:
                reader.bought[book.book_id] = self.timeline.now()
                reader.expected_by[book.book_id] = start + 3 * HOUR  # before leaving home
                await account.buy(book.book_id)
            await self._until(self.timeline.now() + 1)
            for device in self.devices:
                answer = await _api(device).start_trip(plan.days)
                self.sayings.append(
                    f"day 0, {device.spec.key}, the trip asked: {answer['sentence']}"
                )
            await self._wait_ready(start + 3 * HOUR)
            for device in self.devices:
                answer = await _api(device).trip()
                self.sayings.append(
                    f"day 0, {device.spec.key}, before leaving: {answer['sentence']}"
                )
            await self._until(self.timeline.now() + LEAVE_AFTER_READY_S)
            await self._day_row(0, reader, account_id, stub)
            for device in self.devices:
                await device.link_down()

            extra = books[plan.books]
            for day in range(1, plan.days + 1):
                events: list[tuple[float, str, WeekDevice | None]] = []
                for device in self.devices:
                    for at, _length in plan.windows:
                        events.append((day * DAY + at + device.spec.offset_s, "up", device))
                    for at in plan.sessions:
                        events.append((day * DAY + at, "read", device))
                if day == plan.purchase_day:
                    events.append((day * DAY + 10 * HOUR, "buy", None))
                if day == plan.edit_at[0]:
                    events.append((day * DAY + plan.edit_at[1], "edit_both", None))
                if day == plan.delete_at[0]:
                    events.append((day * DAY + plan.delete_at[1], "delete_edit", None))
                for at, what, target in sorted(events, key=lambda e: e[0]):
                    await self._until(at)
                    _LOG.info(
                        "event=week_event day=%d at_h=%.2f what=%s device=%s",
                        day,
                        (at - day * DAY) / HOUR,
                        what,
                        target.spec.key if target else "-",
                    )
                    if what == "up" and target is not None:
                        length = dict(plan.windows)[at - day * DAY - target.spec.offset_s]
                        await target.link_up(target.spec.profile)
                        await self._window(target, at + length)
                    elif what == "read" and target is not None:
                        await reader.session(target, day)
                    elif what == "buy":
                        reader.bought[extra.book_id] = self.timeline.now()
                        await account.buy(extra.book_id)
                        # Expected once the next window of the device with the earliest one ended.
                        after = [
                            day * DAY + a + length
                            for a, length in plan.windows
                            if day * DAY + a > self.timeline.now()
                        ]
                        reader.expected_by[extra.book_id] = min(after, default=(day + 1) * DAY)
                    elif what == "edit_both":
                        await reader.edit_both(day, plan.shared_edits)
                    elif what == "delete_edit":
                        await reader.delete_while_edited(day, plan.contested)
                await self._until((day + 1) * DAY - 60)
                await self._day_row(day, reader, account_id, stub)

            # Day 8: home, on Wi-Fi; both must agree within one window.
            home = (plan.days + 1) * DAY + 10 * HOUR
            await self._until(home)
            for device in self.devices:
                await device.link_up(HOME_LINK)
            window_s = 600.0
            agreed = await self._agree(list(titles), home, home + window_s)
            await self._day_row(plan.days + 1, reader, account_id, stub)
            verdict = await judge(reader, list(titles), stub, account_id)
            verdict.agreed_after_s = agreed
            verdict.window_s = window_s
            for device in self.devices:
                for book_id, at in reader.bought.items():
                    entry = await _api(device).library_entry(book_id)
                    done = entry and entry.get("completed_at")
                    # completed_at is the device's wall clock: take its skew out.
                    arrivals.append(
                        (
                            device.spec.key,
                            titles[book_id],
                            float(done)
                            - device.spec.skew_s
                            - self.timeline.wall()
                            + self.timeline.now()
                            - at
                            if done
                            else None,
                        )
                    )
            verdict.arrivals = arrivals
            return self.rows, verdict, reader

    async def _wait_ready(self, until: float) -> None:
        while self.timeline.now() < until:
            answers = [await _api(d).trip() for d in self.devices]
            if all(a["ready"] for a in answers):
                return
            await self._until(self.timeline.now() + 5)

    async def _window(self, device: WeekDevice, end: float) -> None:
        """The device's radio has a window until `end`; other devices' events wait for it.
        Its radio time goes to week.log, beside the stub's requests (what asked for each)."""
        opened = self.timeline.now()
        await self._until(end)
        await device.link_down()
        on, least = device.radio.on_seconds(opened, end, device.link_profile)
        wakes, _ = device.radio.wakes(opened, end)
        carried = [t - opened for t, _, _ in device.radio.pieces if opened <= t < end]
        _LOG.info(
            "event=radio_window device=%s on_s=%.2f least_s=%.2f wakes=%d last_byte_s=%.2f",
            device.spec.key,
            on,
            least,
            wakes,
            max(carried, default=0.0),
        )

    async def _agree(self, books: list[str], start: float, end: float) -> float | None:
        """Seconds from `start` until both devices show the same annotations and have nothing
        left to send; None if not by `end`."""
        while self.timeline.now() < end:
            views = [await _view(d, books) for d in self.devices]
            pending = [
                (await _api(d).status())["annotations"]["outbox_depth"] for d in self.devices
            ]
            if views[0] == views[1] and not any(pending):
                return self.timeline.now() - start
            await self._until(self.timeline.now() + 5)
        return None

    async def _day_row(self, day: int, reader: Reader, account_id: str, stub: RunningStub) -> None:
        for device in self.devices:
            api = _api(device)
            library = await api.library()
            complete = {b["book_id"] for b in library if b["state"] == "complete"}
            conflicts = 0
            for book_id in complete:
                conflicts += sum(1 for a in await _annotations(device, book_id) if a["conflicts"])
            on_service = sum(
                1
                for m in reader.made.values()
                if m.device == device.spec.key
                and stub.store.annotation_state(account_id, m.annotation_id) is not None
            )
            link = load_profile(
                device.spec.profile if 1 <= day <= self.plan.days else HOME_LINK
            ).link
            on, least = device.radio.on_seconds(day * DAY, (day + 1) * DAY, link)
            wakes, used = device.radio.wakes(day * DAY, (day + 1) * DAY)
            status, trip = await api.send("GET", "/v1/trip")
            notes_line = next(
                (
                    line
                    for line in format_status(await api.status()).splitlines()
                    if line.startswith("highlights, notes and bookmarks:")
                ),
                "",
            )
            says = (trip["sentence"] if status == 200 else "no trip under way") + f" ({notes_line})"
            self.rows.append(
                DayRow(
                    day,
                    device.spec.key,
                    len(complete),
                    device.wanted_missing,
                    device.made,
                    on_service,
                    conflicts,
                    on,
                    least,
                    says,
                    wakes,
                    used,
                    (wakes - used) * (link.rtt_s + RIDE_S),
                )
            )
            device.wanted_missing = 0


def _figures(rows: list[DayRow]) -> list[list[str]]:
    return [
        [
            str(r.day),
            r.device,
            str(r.books_on_device),
            str(r.wanted_missing),
            str(r.notes_made),
            str(r.notes_on_service),
            str(r.conflicts),
            f"{r.radio_on_s:.0f} s / {r.radio_min_s:.0f} s",
            r.says,
        ]
        for r in rows
    ]


def verdict_lines(verdict: Verdict, reader: Reader, rows: list[DayRow], plan: Plan) -> list[str]:
    days = [r for r in rows if 1 <= r.day <= plan.days]
    on = sum(r.radio_on_s for r in days)
    least = sum(r.radio_min_s for r in days)
    more = sum(r.more_wakes_s for r in days)
    agreed = verdict.agreed_after_s
    return [
        f"'book not on device' events: {len(reader.missing_events)}"
        + (f" ({'; '.join(reader.missing_events[:3])})" if reader.missing_events else ""),
        f"lost notes: {len(verdict.lost)}"
        + (f" ({'; '.join(verdict.lost[:3])})" if verdict.lost else ""),
        f"duplicated notes: {verdict.duplicated}",
        f"conflicts visible on both devices: {verdict.conflicts_shown} of"
        f" {verdict.conflicts_expected}",
        f"positions wrong: {len(verdict.positions_wrong)}"
        + (f" ({'; '.join(verdict.positions_wrong[:3])})" if verdict.positions_wrong else ""),
        f"shared highlights missing: {len(verdict.shared_missing)} books"
        + (f" ({'; '.join(verdict.shared_missing[:3])})" if verdict.shared_missing else ""),
        "both devices agree "
        + (
            f"{agreed:.0f} s after reconnecting at home (window {verdict.window_s:.0f} s)"
            if agreed is not None
            else f"NOT within the {verdict.window_s:.0f} s window after reconnecting"
        ),
        f"radio on {on:.0f} s on days 1-{plan.days}, {on / least if least else 0:.2f}x the least"
        f" the bytes need ({least:.0f} s); the radio woke {sum(r.wakes for r in days)} times in"
        f" {sum(r.windows_used for r in days)} windows"
        + (
            f": the wakes beyond one a window need at least {more:.0f} s more; with them, the"
            f" radio was on {on / (least + more):.2f}x the least"
            if more > 0
            else ""
        ),
    ]


def passed(verdict: Verdict, reader: Reader, rows: list[DayRow], plan: Plan) -> dict[str, bool]:
    days = [r for r in rows if 1 <= r.day <= plan.days]
    least = sum(r.radio_min_s for r in days)
    return {
        "no book missing": not reader.missing_events,
        "no note lost": not verdict.lost and not verdict.duplicated,
        "conflicts on both": verdict.conflicts_shown == verdict.conflicts_expected,
        "positions": not verdict.positions_wrong,
        "shared highlights": not verdict.shared_missing,
        "agree in a window": verdict.agreed_after_s is not None,
        "radio within 1.2x": least > 0 and sum(r.radio_on_s for r in days) <= 1.2 * least,
    }


async def run(args: argparse.Namespace) -> Section:
    plan = Plan.short() if args.short else Plan(days=args.days, notes=args.notes)
    with tempfile.TemporaryDirectory(prefix="bench-week-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(workdir / "week.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        started = time.monotonic()
        try:
            rows, verdict, reader = await Week(plan, workdir, args.seed, corpus_dir()).run()
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        took = time.monotonic() - started
    lines = verdict_lines(verdict, reader, rows, plan)
    for row in _figures(rows):
        print(" | ".join(row))
    for line in lines:
        print(line)
    print(f"the week took {took:.0f} s of real time")
    arrivals = [
        [device, title, "not arrived" if s is None else f"{s:,.0f} s"]
        for device, title, s in verdict.arrivals
    ]
    words = ["week", "--days", str(plan.days), "--notes", str(plan.notes)]
    return Section(
        name="week",
        title="A week offline with two devices",
        method=METHOD,
        tables=[
            Table(
                heading="Day by day",
                meaning="; ".join(lines) + ".",
                columns=[
                    "day",
                    "device",
                    "books on device",
                    "wanted, not there",
                    "notes made",
                    "notes on the service",
                    "conflicts kept",
                    "radio on / least",
                    "what the trip says",
                ],
                rows=_figures(rows),
                command=command(*words),
            ),
            Table(
                heading="From purchase to complete on each device",
                meaning="Day 0's books at home on Wi-Fi; the day-3 book waits for the next window"
                " (timeline seconds, outages included).",
                columns=["device", "book", "purchase to complete"],
                rows=arrivals,
                command=command(*words),
            ),
        ],
        notes=[
            f"The week ran in {took:.0f} s of real time on the timeline (bench/timeline.py).",
            *reader.skipped[:5],
        ],
    )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=7, help="days away (default: %(default)s)")
    parser.add_argument("--notes", type=int, default=200, help="default: %(default)s")
    parser.add_argument("--short", action="store_true", help="the test's two-day version")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the stub, the devices and week.log here (default: a temporary folder)",
    )


BENCHMARK = Benchmark(
    name="week",
    summary="a reader's week offline with two devices: notes, conflicts, books, radio time",
    add_arguments=_arguments,
    run=run,
)
