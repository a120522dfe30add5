"""Annotations across two real devices and the stub: sync, conflicts, deletes, positions, popular
highlights, and bodies that must change nothing (issue 4; FAULTS.md #3, #27-#29, #32, #33)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.api.answers import safe_dumps
from daemon.client import AccountClient
from daemon.clock import SystemClock
from daemon.errors import AnnotationError, DiskFullError
from daemon.models import LibraryChange
from daemon.notes.shared_highlights import SharedHighlights
from daemon.notes.store import NotesStore
from daemon.protocol import annotation_input, merge
from daemon.protocol.hlc import HybridClock
from daemon.radio.windows import RadioWindows
from daemon.store import Store
from server_stub.annotations import passage_of
from server_stub.app import RunningStub, running_stub
from server_stub.store import AnnotationOp
from server_stub.store import Store as StubStore
from tests.conftest import StubImport
from tests.integration.harness import Device, running_device
from tests.integration.notes_helpers import (
    BOOK_FILE,
    BareDevice,
    anchor,
    eventually,
    import_one_book,
)

DAY_S = 86_400.0


@pytest.fixture(scope="module")
def one_book(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> StubImport:
    return import_one_book(
        tmp_path_factory.mktemp("notes-library"), tmp_path_factory.mktemp("notes-stub"), corpus_dir
    )


@pytest.fixture
def stub_data(tmp_path: Path, one_book: StubImport) -> Path:
    return Path(shutil.copytree(one_book.data_dir, tmp_path / "stub-data"))


@pytest.fixture
def book_id(one_book: StubImport) -> str:
    return one_book.book_ids[BOOK_FILE]


class SkewedClock(SystemClock):
    """A device whose wall clock is off by `offset_s` (FAULTS.md #29)."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def wall(self) -> float:
        return time.time() + self.offset_s


@asynccontextmanager
async def devices(
    stub: RunningStub, tmp_path: Path, book_id: str, *clocks: SystemClock | None
) -> AsyncIterator[list[Device]]:
    """Devices of one account (one per clock), with the book bought and on each of them."""
    account = AccountClient(stub.url)
    await account.create_account("reader")
    async with AsyncExitStack() as stack:
        found = [
            await stack.enter_async_context(
                running_device(
                    stub.url, stub.public_key_text, tmp_path / f"dev{i}", account=account, clock=c
                )
            )
            for i, c in enumerate(clocks)
        ]
        await account.buy(book_id)
        for device in found:
            await device.wait_complete(book_id)
        yield found


async def device_id(device: Device) -> str:
    return str((await device.api.status())["device_id"])


async def notes_status(device: Device) -> dict[str, Any]:
    status: dict[str, Any] = (await device.api.status())["annotations"]
    return status


async def synced(device: Device) -> bool:
    status = await notes_status(device)
    return status["outbox_depth"] == 0 and status["last_sync_at"] is not None


async def get(device: Device, item_id: str) -> tuple[int, Any]:
    return await device.api.send("GET", f"/v1/annotations/{item_id}")


async def create(device: Device, book_id: str, **body: Any) -> dict[str, Any]:
    status, doc = await device.api.send("POST", f"/v1/books/{book_id}/annotations", body)
    assert status == 201, doc
    return dict(doc)


async def patch(device: Device, item_id: str, **body: Any) -> dict[str, Any]:
    status, doc = await device.api.send("PATCH", f"/v1/annotations/{item_id}", body)
    assert status == 200, doc
    return dict(doc)


async def test_annotations_travel_between_devices_and_deletes_are_told_apart(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    async with (
        running_stub(stub_data) as stub,
        devices(stub, tmp_path, book_id, None, None) as (a, b),
    ):
        made = await create(a, book_id, kind="highlight", anchor=anchor(), note="read again")
        assert made["pending"]  # saved, not yet acknowledged by the service
        item = made["id"]

        async def on_b() -> Any:
            status, doc = await get(b, item)
            return doc if status == 200 else None

        seen = await eventually(on_b)
        assert (seen["note"], seen["color"], seen["created_by"]) == (
            "read again",
            "yellow",
            await device_id(a),
        )
        assert not (await eventually(lambda: get(a, item)))[1]["pending"]

        await patch(b, item, color="blue")

        async def blue_on_a() -> bool:
            return bool((await get(a, item))[1]["color"] == "blue")

        await eventually(blue_on_a)

        # Never received vs deleted elsewhere.
        assert (await get(b, "an_neverexisted"))[0] == 404
        status, gone = await a.api.send("DELETE", f"/v1/annotations/{item}")
        assert status == 200
        assert gone["deleted"]

        async def deleted_on_b() -> Any:
            status, doc = await get(b, item)
            return doc if status == 410 else None

        tombstone = (await eventually(deleted_on_b))["annotation"]
        assert tombstone["deleted_by"] == await device_id(a)
        listed = await b.api.get_json(f"/v1/books/{book_id}/annotations?include_deleted=1")
        assert [x["id"] for x in listed["annotations"]] == [item]
        assert (await b.api.get_json(f"/v1/books/{book_id}/annotations"))["annotations"] == []
        # Deleting again is answered the same, and sends nothing more.
        assert (await a.api.send("DELETE", f"/v1/annotations/{item}"))[0] == 200

        await eventually(lambda: synced(a))
        await eventually(lambda: synced(b))
        account_id = stub.store.account_for_token(a.account.account_token)
        assert account_id is not None
        assert stub.store.annotation_op_count(account_id) == 3  # create, recolor, delete


@pytest.mark.faults(27)
async def test_offline_edits_on_two_devices_keep_both_texts_and_edit_beats_delete(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    async with restartable(stub_data) as service:
        stub = await service.start()
        a, b = await service.stack.enter_async_context(devices(stub, tmp_path, book_id, None, None))
        note = (await create(a, book_id, kind="note", anchor=anchor(), note="first"))["id"]
        mark = (await create(a, book_id, kind="highlight", anchor=anchor("second")))["id"]
        for item in (note, mark):
            await eventually(partial(_status_is, b, item, 200))

        # The service goes away; both devices go on editing, for "days".
        await service.stop()
        await patch(a, note, note="A's words")
        await patch(b, note, note="B's words")
        assert (await a.api.send("DELETE", f"/v1/annotations/{mark}"))[0] == 200
        await patch(b, mark, color="green")
        offline = await notes_status(a)
        assert offline["outbox_depth"] == 2  # never reported as synced while unacknowledged
        assert (await get(a, note))[1]["pending"]

        await service.start()  # the link returns: both sync at once
        await eventually(lambda: synced(a))
        await eventually(lambda: synced(b))

        async def converged() -> Any:
            views = [(await get(d, note))[1] for d in (a, b)]
            same = views[0] == views[1] and not views[0]["pending"]
            return views[0] if same and views[0]["conflicts"] else None

        view = await eventually(converged)
        assert {view["note"], view["conflicts"][0]["note"]} == {"A's words", "B's words"}
        # Edit beats delete: B recolored without having seen A's delete. The highlight says
        # so, and both readers are told in their notices (issue 23 #6).
        status, kept = await get(a, mark)
        assert status == 200
        assert kept["color"] == "green"
        assert kept["delete_overruled"]["device_id"] == (await a.api.status())["device_id"]

        async def told(device: Device) -> Any:
            notices = (await device.api.get_json("/v1/notices"))["notices"]
            found = [n for n in notices if n["kind"] == "kept_despite_delete"]
            return found or None

        for device in (a, b):
            (notice,) = await eventually(partial(told, device))
            assert notice["book_id"] == book_id
            assert "was kept" in notice["message"]

        # Resolving names the versions the reader saw; the conflict clears everywhere.
        versions = [view["note_version"], view["conflicts"][0]["version"]]
        await patch(a, note, note="both", replaces=versions)

        async def resolved_on_b() -> bool:
            doc = (await get(b, note))[1]
            return bool(doc["note"] == "both" and doc["conflicts"] == [])

        await eventually(resolved_on_b)
        assert (await notes_status(a))["last_sync_error"] is None


async def _status_is(device: Device, item: str, status: int) -> bool:
    return (await get(device, item))[0] == status


class Restartable:
    """A stub that a test stops and starts again on the same port (the link goes and comes)."""

    def __init__(self, data_dir: Path, stack: AsyncExitStack) -> None:
        self.data_dir = data_dir
        self.stack = stack
        self.port = 0
        self._running: AbstractAsyncContextManager[RunningStub] | None = None

    async def start(self) -> RunningStub:
        self._running = running_stub(self.data_dir, port=self.port)
        stub = await self._running.__aenter__()
        self.port = stub.port
        return stub

    async def stop(self) -> None:
        if self._running is not None:
            running, self._running = self._running, None
            await running.__aexit__(None, None, None)


@asynccontextmanager
async def restartable(data_dir: Path) -> AsyncIterator[Restartable]:
    async with AsyncExitStack() as stack:
        service = Restartable(data_dir, stack)
        try:
            yield service
        finally:
            await stack.aclose()  # the devices first, while the service may still answer
            await service.stop()


@pytest.mark.faults(29)
async def test_reading_position_here_latest_and_furthest_with_a_skewed_clock(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    async with (
        running_stub(stub_data) as stub,
        devices(stub, tmp_path, book_id, None, SkewedClock(-DAY_S)) as (a, b),
    ):
        path = f"/v1/books/{book_id}/position"
        place = {"resource": "text/the_main_gui_window.xhtml", "start": 300}
        assert (await a.api.send("PUT", path, {**place, "progress": 0.8}))[0] == 200

        async def b_has_it() -> bool:
            return (await b.api.get_json(path))["furthest"] is not None

        await eventually(b_has_it)
        # B's clock is a day behind, but it read after syncing: its place is the latest.
        assert (await b.api.send("PUT", path, {**place, "progress": 0.3}))[0] == 200
        b_id = await device_id(b)

        async def a_sees_b() -> Any:
            view = await a.api.get_json(path)
            return view if view["latest"]["device_id"] == b_id else None

        view = await eventually(a_sees_b)
        assert view["here"]["position"]["progress"] == 0.8
        assert view["latest"]["position"]["progress"] == 0.3
        assert view["furthest"]["position"]["progress"] == 0.8
        assert view["furthest"]["this_device"]
        assert len(view["devices"]) == 2
        assert (await b.api.get_json(path))["here"]["position"]["progress"] == 0.3


async def test_a_position_read_offline_carries_the_time_it_was_read(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    """Issue 23 #5: B's clock is a day behind. Offline, its hybrid clock stayed at the last
    stamp it saw from the service, so every place B read after A, offline, was older than A's."""
    async with restartable(stub_data) as service:
        stub = await service.start()
        a, b = await service.stack.enter_async_context(
            devices(stub, tmp_path, book_id, None, SkewedClock(-DAY_S))
        )
        await eventually(lambda: synced(b))
        await service.stop()
        path = f"/v1/books/{book_id}/position"
        place = {"resource": "text/the_main_gui_window.xhtml", "start": 300}
        assert (await a.api.send("PUT", path, {**place, "progress": 0.5}))[0] == 200
        # A second later (read later, not a timing claim): more than the clock offset's
        # measurement error, the time the changes page took to come (half of it, with NTP's
        # midpoint), even on a loaded machine.
        await asyncio.sleep(1.0)
        assert (await b.api.send("PUT", path, {**place, "progress": 0.6}))[0] == 200  # later
        await service.start()
        b_id = await device_id(b)

        async def a_sees_b_latest() -> Any:
            view = await a.api.get_json(path)
            return view if len(view["devices"]) == 2 else None

        view = await eventually(a_sees_b_latest)
        assert view["latest"]["device_id"] == b_id
        assert view["latest"]["position"]["progress"] == 0.6
        assert abs(view["latest"]["at"] - time.time()) < DAY_S / 2  # the service's time


@pytest.mark.faults(32)
async def test_bad_bodies_are_refused_and_change_nothing(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    async with (
        running_stub(stub_data) as stub,
        devices(stub, tmp_path, book_id, None) as (a,),
    ):
        path = f"/v1/books/{book_id}/annotations"
        good = {"kind": "note", "anchor": anchor()}
        cases: list[tuple[str, str, Any, int, str]] = [
            ("POST", path, b"x" * (10 * 1024 * 1024), 413, "body_too_large"),
            ("POST", path, b"{", 400, "bad_json"),
            ("POST", path, {**good, "colour": "red"}, 400, "bad_annotation"),
            ("POST", path, {**good, "note": "x" * 8193}, 400, "bad_annotation"),
            (
                "POST",
                path,
                b'{"kind":"note","anchor":{"resource":"a","start":0},"note":"\\ud800"}',
                400,
                "bad_annotation",
            ),
            ("POST", "/v1/books/bk_notonthisdevice/annotations", good, 404, "no_such_book"),
            ("PATCH", "/v1/annotations/an_nosuchthing", {"note": "x"}, 404, "not_received"),
            ("PATCH", "/v1/annotations/..%2f..%2fx", {"note": "x"}, 400, "bad_id"),
            (
                "PUT",
                f"/v1/books/{book_id}/position",
                {"resource": "a", "progress": 2},
                400,
                "bad_annotation",
            ),
        ]
        for method, target, body, status, code in cases:
            got, doc = await a.api.send(method, target, body)
            assert (got, doc["error"]) == (status, code), (method, target, doc)
        made = await create(a, book_id, **good, note="kept")
        got, doc = await a.api.send(
            "PATCH",
            f"/v1/annotations/{made['id']}",
            {"note": "y", "replaces": ["0" * 15 + "-000000-x"]},
        )
        assert (got, doc["error"]) == (409, "unknown_version")
        got, doc = await a.api.send("PATCH", f"/v1/annotations/{made['id']}", {})
        assert (got, doc["field"]) == (400, "body")
        listed = (await a.api.get_json(path))["annotations"]
        assert [(x["id"], x["note"]) for x in listed] == [(made["id"], "kept")]
        await eventually(lambda: synced(a))
        account_id = stub.store.account_for_token(a.account.account_token)
        assert account_id is not None
        assert stub.store.annotation_op_count(account_id) == 1


async def test_popular_passages_count_sharing_readers_and_are_served_offline(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    html = '<script>alert("x")</script> & more'
    async with restartable(stub_data) as service:
        stub = await service.start()
        stub.store.set_popular_threshold(2)
        readers = []
        for i, share in enumerate((True, True, False, True)):
            account = AccountClient(stub.url)
            await account.create_account(f"reader {i}")
            await account.share_highlights(share)
            await account.buy(book_id)
            readers.append(await BareDevice.register(stub.url, account, tmp_path / f"r{i}"))
        # Three readers (one not sharing) mark one passage, written a little differently.
        for i, text in enumerate(
            (
                "Calibre is a library manager",
                "calibre  is a Library manager",
                "Calibre is a library manager",
            )
        ):
            _, op = readers[i].highlight(f"an_popular{i:04d}", book_id, text)
            await readers[i].client.push_annotation_ops([op])
        for i in (0, 3):
            _, op = readers[i].highlight(f"an_html{i:06d}", book_id, html)
            await readers[i].client.push_annotation_ops([op])
        _, op = readers[1].highlight("an_alone00001", book_id, "only one reader")
        await readers[1].client.push_annotation_ops([op])
        for r in readers:
            await r.client.close()

        (device,) = await service.stack.enter_async_context(devices(stub, tmp_path, book_id, None))
        path = f"/v1/books/{book_id}/popular-highlights"

        async def two_passages() -> Any:
            doc = await device.api.get_json(path)
            return doc["passages"] if len(doc["passages"]) == 2 else None

        passages = await eventually(two_passages)
        assert sorted(p["readers"] for p in passages) == [2, 2]  # never the non-sharer
        assert html in {p["anchor"]["quote"]["exact"] for p in passages}
        assert all(set(p) == {"passage_id", "readers", "anchor"} for p in passages)
        await service.stop()
        # Offline: served from the device, as text (escaped in the JSON, FAULTS.md #33).
        socket_path = device.daemon.settings.api_socket
        raw = await raw_get(socket_path, path)
        assert b"<script>" not in raw
        assert b"\\u003cscript\\u003e" in raw
        assert (await device.api.get_json(path))["passages"] == passages


async def test_shared_highlights_refresh_for_a_book_on_the_device_on_sync_and_before_a_trip(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    """Issue 23 #2: a passage published after the device had the book came neither after
    POST /v1/annotations/sync nor before the trip said "Ready"."""
    async with AsyncExitStack() as stack:
        stub = await stack.enter_async_context(running_stub(stub_data))
        stub.store.set_popular_threshold(2)
        readers = []
        for i in range(2):
            account = AccountClient(stub.url)
            await account.create_account(f"reader {i}")
            await account.share_highlights(True)
            await account.buy(book_id)
            readers.append(await BareDevice.register(stub.url, account, tmp_path / f"r{i}"))
            stack.push_async_callback(readers[-1].client.close)
        (device,) = await stack.enter_async_context(devices(stub, tmp_path, book_id, None))
        path = f"/v1/books/{book_id}/popular-highlights"

        async def refreshed() -> bool:
            return (await notes_status(device))["popular_refreshed_at"] is not None

        await eventually(refreshed)

        async def publish(item: str, words: str) -> None:
            for i, r in enumerate(readers):
                _, op = r.highlight(f"an_{item}{i:06d}", book_id, words)
                await r.client.push_annotation_ops([op])

        async def passages(n: int) -> bool:
            return len((await device.api.get_json(path))["passages"]) == n

        await publish("first", "Calibre is a library manager")
        assert (await device.api.send("POST", "/v1/annotations/sync"))[0] == 202
        await eventually(partial(passages, 1))

        await publish("second", "only the second passage")
        report = await device.api.start_trip(1)
        while not report["ready"]:
            assert "Shared highlights: refreshing" in report["sentence"], report["sentence"]
            await asyncio.sleep(0.05)
            report = await device.api.trip()
        assert report["shared_highlights"] == 2, report  # ready means refreshed
        assert await passages(2)


async def test_a_passage_shared_from_the_other_device_comes_while_online_without_a_sync(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    """Issue 23 #2: online, a passage published after the device had the book must come within
    180 s; the annotation push that told of the highlight now brings the refresh with it."""
    async with running_stub(stub_data) as stub:
        stub.store.set_popular_threshold(1)
        async with devices(stub, tmp_path, book_id, None, None) as (kindle, phone):
            await kindle.account.share_highlights(True)
            path = f"/v1/books/{book_id}/popular-highlights"

            async def refreshed() -> bool:
                return (await notes_status(phone))["popular_refreshed_at"] is not None

            await eventually(refreshed)
            await create(kindle, book_id, kind="highlight", anchor=anchor())

            async def shared() -> bool:
                return len((await phone.api.get_json(path))["passages"]) == 1

            await eventually(shared)  # well within 180 s; before, the next 6-hourly refresh


async def test_popular_refresh_follows_its_cursor(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    async with running_stub(stub_data) as stub:
        stub.store.set_popular_threshold(2)
        readers = []
        for i in range(3):
            account = AccountClient(stub.url)
            await account.create_account(f"reader {i}")
            await account.share_highlights(True)
            await account.buy(book_id)
            readers.append(await BareDevice.register(stub.url, account, tmp_path / f"r{i}"))
        mine = readers[0]
        store = Store.open(tmp_path / "device.db")
        store.library.apply_library_changes([merge_change(book_id)], cursor=1, now=time.time())
        notes = NotesStore.open(tmp_path / "device.db")
        clock = SystemClock()
        worker = SharedHighlights(
            notes, mine.client, clock, RadioWindows(clock), batch_window_s=0.0
        )
        try:
            marks = []
            for r in readers[:2]:
                delta, op = r.highlight(f"an_cursor{readers.index(r):04d}", book_id, "Same words")
                marks.append(delta)
                await r.client.push_annotation_ops([op])
            await worker.refresh_once()
            assert [p["readers"] for p in notes.popular(book_id)] == [2]
            _, op = readers[2].highlight("an_cursor0002", book_id, "same WORDS")
            await readers[2].client.push_annotation_ops([op])
            assert await worker.refresh_once() == 1
            assert [p["readers"] for p in notes.popular(book_id)] == [3]
            # Two readers delete theirs: below the threshold, the passage leaves the device.
            for r, mark in zip(readers[:2], marks, strict=True):
                stamp = r.clock.tick(int(time.time() * 1000))
                await r.client.push_annotation_ops([r.op("item", merge.delete_delta(mark, stamp))])
            await worker.refresh_once()
            assert notes.popular(book_id) == []
        finally:
            notes.close()
            store.close()
            for r in readers:
                await r.client.close()


def merge_change(book_id: str) -> LibraryChange:
    return LibraryChange(1, book_id, "add", "bought", 1, time.time())


async def raw_get(socket_path: Path, target: str) -> bytes:
    """The answer's body bytes exactly as the daemon sent them."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://shelfsync" + target) as r,
    ):
        return await r.read()


@pytest.mark.faults(28)
async def test_an_op_sent_twice_in_any_order_is_applied_once(
    tmp_path: Path, stub_data: Path, book_id: str
) -> None:
    async with running_stub(stub_data) as stub:
        account = AccountClient(stub.url)
        await account.create_account("reader")
        await account.buy(book_id)
        bare = await BareDevice.register(stub.url, account, tmp_path)
        try:
            created, first = bare.highlight("an_twice00001", book_id, "words")
            stamp = bare.clock.tick(int(time.time() * 1000))
            edit = bare.op("item", merge.edit_delta(created, stamp, merge.Edit({}, "n", None)))
            results = [
                await bare.client.push_annotation_ops(batch)
                for batch in ([edit, first], [first], [first, edit, edit])
            ]
            # Every op is acknowledged each time it is sent, and applied only the first time.
            assert [sorted(r.acked) for r in results] == [
                sorted(json.loads(o)["op_id"] for o in batch)
                for batch in ([edit, first], [first], [first, edit, edit])
            ]
            account_id = stub.store.account_for_token(account.account_token)
            assert account_id is not None
            assert stub.store.annotation_op_count(account_id) == 2
            state = stub.store.annotation_state(account_id, "an_twice00001")
            assert state is not None
            assert list(state["texts"].values()) == ["n"]
        finally:
            await bare.client.close()


SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)


@pytest.mark.faults(33)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(note=SAFE_TEXT, quote=SAFE_TEXT.filter(bool))
def test_any_text_comes_back_exactly_and_as_text_through_the_service(note: str, quote: str) -> None:
    """FAULTS.md #33: whatever a reader typed or quoted (markup, quotes, emoji, newlines) is
    stored as text, comes back identical through the service, and is escaped on output; what
    the limits refuse is refused at the local API and again at the service."""
    doc = {"kind": "highlight", "anchor": {**anchor(), "quote": {"exact": quote}}, "note": note}
    try:
        new = annotation_input.parse_new(doc)
    except AnnotationError:
        return  # refused before anything is stored; the service refuses it too (below)
    stamp = HybridClock("dev_writer").tick(int(time.time() * 1000))
    delta = merge.create_delta("an_0123456789", "bk_anybook", stamp, new)
    with tempfile.TemporaryDirectory() as tmp:
        store = StubStore.open(Path(tmp))
        try:
            account_id, _ = store.create_account("reader", time.time())
            op = AnnotationOp("op_0123456789", delta.item_id, delta)
            applied = store.apply_annotation_ops(
                account_id, "dev_writer", [op], time.time(), passage_of
            )
            assert applied.applied == ["op_0123456789"]
            page = store.annotation_changes(account_id, "dev_reader", 0, 10, 2**20)
        finally:
            store.close()
    received = annotation_input.item_from_doc(json.loads(page.entries[0][2]))
    shown = safe_dumps(merge.item_view(received, False))
    assert "<" not in shown
    assert ">" not in shown
    view = json.loads(shown)
    assert (view["note"], view["anchor"]["quote"]["exact"]) == (note, quote)


@pytest.mark.faults(33)
def test_oversized_text_is_refused_by_the_service_too() -> None:
    stamp = HybridClock("dev_writer").tick(int(time.time() * 1000))
    delta = merge.create_delta(
        "an_0123456789",
        "bk_anybook",
        stamp,
        annotation_input.parse_new({"kind": "note", "anchor": anchor(), "note": "ok"}),
    )
    doc = merge.item_to_doc(delta)
    doc["texts"] = {stamp: "x" * (10 * 1024 * 1024)}
    with pytest.raises(AnnotationError, match="over the limit"):
        annotation_input.item_from_doc(doc)


@pytest.mark.faults(24)
def test_a_full_disk_refuses_the_note_visibly_and_keeps_what_was_saved(tmp_path: Path) -> None:
    """FAULTS.md #24: the save fails with DiskFullError (the API answers 507), nothing half
    written, and every note saved before is still there."""
    store = Store.open(tmp_path / "device.db")
    notes = NotesStore.open(tmp_path / "device.db")
    clock = HybridClock("dev_full")
    try:
        pages = notes._one("PRAGMA page_count")[0]
        notes._db.execute(f"PRAGMA max_page_count = {pages + 8}")
        saved: list[str] = []

        def save_until_full() -> None:
            for _ in range(1000):
                stamp = clock.tick(int(time.time() * 1000))
                new = annotation_input.parse_new(
                    {"kind": "note", "anchor": anchor(), "note": "n" * 8000}
                )
                item_id = f"an_full{len(saved):06d}"
                delta = merge.create_delta(item_id, "bk_full", stamp, new)
                notes.commit_item_edit(delta, f"op_full{len(saved):06d}", stamp, 0)
                saved.append(item_id)

        with pytest.raises(DiskFullError):
            save_until_full()
        assert saved
        assert [i.item_id for i, _ in notes.items("bk_full", True)] == saved
        assert notes.outbox_batch(10_000, 2**40)[-1].op_id == f"op_full{len(saved) - 1:06d}"
        assert store.integrity_check() == "ok"
    finally:
        notes.close()
        store.close()


@pytest.mark.faults(27)
def test_an_edit_that_beats_a_delete_is_told_to_every_device_once(tmp_path: Path) -> None:
    """Issue 23 #6: the service tells each of the account's devices, once, that a note one of
    them deleted was kept because another edited it without having seen the delete."""
    store = StubStore.open(tmp_path)
    try:
        account_id, _ = store.create_account("reader", time.time())
        kindle, _ = store.create_device(account_id, "Hall Kindle", "", time.time())
        phone, _ = store.create_device(account_id, "Phone", "", time.time())
        new = annotation_input.parse_new({"kind": "highlight", "anchor": anchor()})
        made = merge.create_delta("an_kept000001", "bk_anybook", HybridClock(kindle).tick(1), new)
        # Each device changes what it last saw, concurrently: the kindle deletes it, the phone
        # recolours it.
        deleted = merge.delete_delta(made, HybridClock(kindle).tick(2_000))
        edited = merge.edit_delta(
            made, HybridClock(phone).tick(3_000), annotation_input.parse_edit({"color": "green"})
        )
        ops = [
            AnnotationOp("op_made", made.item_id, made),
            AnnotationOp("op_deleted", made.item_id, deleted),
            AnnotationOp("op_edited", made.item_id, edited),
        ]
        store.apply_annotation_ops(account_id, kindle, ops[:2], time.time(), passage_of)
        assert store.notices(kindle, 0, 10) == []  # a delete alone is no news
        applied = store.apply_annotation_ops(account_id, phone, ops[2:], time.time(), passage_of)
        later = merge.edit_delta(
            edited, HybridClock(phone).tick(4_000), annotation_input.parse_edit({"color": "blue"})
        )
        store.apply_annotation_ops(
            account_id,
            phone,
            [AnnotationOp("op_later", made.item_id, later)],
            time.time(),
            passage_of,
        )
        for device in (kindle, phone):
            (notice,) = store.notices(device, 0, 10)  # once, not again for the later edit
            _, kind, book_id, message, _ = notice
            assert (kind, book_id) == ("kept_despite_delete", "bk_anybook")
            assert "deleted on Hall Kindle was kept" in message
            assert applied.notices[device] == notice[0]
    finally:
        store.close()
