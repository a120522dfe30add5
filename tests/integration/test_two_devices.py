"""One reader, two devices, a few days away, in short (issue 23's "done when").

Two real daemons on one account and the real stub on loopback, as issue 23 scripted a week
(`python -m bench week` is the long run): a Kindle whose clock is 20 minutes ahead and a phone
whose clock is a day behind. Each step is one of the issue's findings, now held:
purchases arrive whatever the clocks say (#1); the same passage highlighted on both is one
highlight (#10); a passage other readers share after the device had the book comes on "sync"
(#2); offline, places read later are later (#5), an edit beats a delete and says so (#6), the
status speaks a reader's words and a trip says the service cannot be reached (#7); a book not
on the device answers with its title and state (#8); a trip gets purchases first and is ready
only when everything it asked for has run (#2, #3).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from daemon.client import AccountClient
from tests.conftest import StubImport
from tests.integration.harness import Device, running_device
from tests.integration.notes_helpers import BOOK_FILE, BareDevice, anchor, eventually
from tests.integration.test_annotations import Restartable, SkewedClock, synced

DAY_S = 86_400.0
ARCHIVED = "idpf_wasteland.epub"
TRIP_BOOKS = ("epubjs_alice.epub", "cwa_christmas_carol.epub")


async def status_text(device: Device) -> dict[str, Any]:
    status: dict[str, Any] = await device.api.status()
    return status


async def test_one_reader_two_devices_a_few_days_away(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport
) -> None:
    ids = stub_corpus_import.book_ids
    book = ids[BOOK_FILE]
    async with AsyncExitStack() as stack:
        service = Restartable(corpus_stub_data, stack)
        stack.push_async_callback(service.stop)  # last: the devices stop while it answers
        stub = await service.start()
        stub.store.set_popular_threshold(2)
        account = AccountClient(stub.url)
        await account.create_account("one reader")
        account_id = stub.store.account_for_token(account.account_token)
        assert account_id is not None
        stub.store.seed_library(account_id, [ids[ARCHIVED]], at=time.time() - 30 * DAY_S)
        kindle, phone = [
            await stack.enter_async_context(
                running_device(
                    stub.url, stub.public_key_text, tmp_path / name, account=account, clock=clock
                )
            )
            for name, clock in (("kindle", SkewedClock(20 * 60)), ("phone", SkewedClock(-DAY_S)))
        ]
        # Other readers who share their highlights, for the popular passages.
        others = []
        for i in range(2):
            other = AccountClient(stub.url)
            await other.create_account(f"another reader {i}")
            await other.share_highlights(True)
            await other.buy(book)
            others.append(await BareDevice.register(stub.url, other, tmp_path / f"other{i}"))
            stack.push_async_callback(others[-1].client.close)

        # 1. Bought: on both devices, whatever their clocks say (#1).
        await account.buy(book)
        for device in (kindle, phone):
            assert (await device.wait_complete(book))["archived"] is False
        kindle_id = (await kindle.api.status())["device_id"]
        phone_id = (await phone.api.status())["device_id"]
        named = await kindle.api.send("PUT", "/v1/device", {"name": "Kindle by the bed"})
        assert named == (200, {"device_id": kindle_id, "name": "Kindle by the bed"})
        await phone.api.send("PUT", "/v1/device", {"name": "Phone"})
        names = {kindle_id: "Kindle by the bed", phone_id: "Phone"}

        # A book of the cloud archive, not on the device, answers with its
        # title and state (#8).
        status, archived = await kindle.api.send("GET", f"/v1/books/{ids[ARCHIVED]}")
        assert status == 200, archived
        assert (archived["state"], archived["readable"]) == ("in_cloud", False)
        assert archived["title"]

        # 2. The same passage highlighted on both devices is one highlight (#10).
        marks = []
        for device, color in ((kindle, "yellow"), (phone, "blue")):
            status, mark = await device.api.send(
                "POST", f"/v1/books/{book}/annotations", {"kind": "highlight", "anchor": anchor()}
            )
            assert status in (200, 201), mark
            marks.append(mark)
            await device.api.send("PATCH", f"/v1/annotations/{mark['id']}", {"color": color})
        assert marks[0]["id"] == marks[1]["id"]

        async def one_highlight(device: Device) -> bool:
            doc = await device.api.get_json(f"/v1/books/{book}/annotations?kind=highlight")
            return len(doc["annotations"]) == 1 and await synced(device)

        for device in (kindle, phone):
            await eventually(lambda d=device: one_highlight(d))  # type: ignore[misc]

        # Each device names the other as its reader named it, not by its dev_ id (#7).
        async def by_name(device: Device) -> bool:
            (mark,) = (await device.api.get_json(f"/v1/books/{book}/annotations"))["annotations"]
            return bool(mark["created_by_name"] == names[mark["created_by"]])

        for device in (kindle, phone):
            await eventually(lambda d=device: by_name(d))  # type: ignore[misc]

        # 3. Other readers share a passage of a book already on the device: "sync" brings it.
        for i, other in enumerate(others):
            _, op = other.highlight(f"an_shared{i:05d}", book, "Calibre is a library manager")
            await other.client.push_annotation_ops([op])
        assert (await kindle.api.send("POST", "/v1/annotations/sync"))[0] == 202

        async def shared_passage() -> bool:
            doc = await kindle.api.get_json(f"/v1/books/{book}/popular-highlights")
            return len(doc["passages"]) == 1

        await eventually(shared_passage)

        # The phone, online, asked for nothing: the service told it (#2, popular_changed).
        async def shared_on_the_phone() -> bool:
            doc = await phone.api.get_json(f"/v1/books/{book}/popular-highlights")
            return len(doc["passages"]) == 1

        await eventually(shared_on_the_phone)

        # A note both devices have, for the edit-beats-delete below.
        status, note = await kindle.api.send(
            "POST",
            f"/v1/books/{book}/annotations",
            {"kind": "note", "anchor": anchor("the note", 400), "note": "first words"},
        )
        assert status == 201, note
        await eventually(lambda: _has(phone, note["id"]))

        # 4. Away: the service cannot be reached from either device.
        await service.stop()
        path = f"/v1/books/{book}/position"
        place = {"resource": "text/the_main_gui_window.xhtml", "start": 300}
        assert (await kindle.api.send("PUT", path, {**place, "progress": 0.3}))[0] == 200
        await asyncio.sleep(1.0)  # read a second later (beyond the clock offset's error)
        assert (await phone.api.send("PUT", path, {**place, "progress": 0.6}))[0] == 200
        note_path = f"/v1/annotations/{note['id']}"
        assert (await phone.api.send("DELETE", note_path))[0] == 200
        assert (await kindle.api.send("PATCH", note_path, {"note": "kept words"}))[0] == 200
        trip = await kindle.api.start_trip(1)
        assert not trip["ready"]
        assert "The service cannot be reached" in trip["sentence"], trip["sentence"]
        assert "1 reading position" in _format(await status_text(kindle))

        # 5. Back: everything meets.
        stub = await service.start()
        for device in (kindle, phone):
            await eventually(lambda d=device: synced(d))  # type: ignore[misc]

        async def phone_latest() -> Any:
            view = await kindle.api.get_json(path)
            return view if view["latest"]["device_id"] == phone_id else None

        view = await eventually(phone_latest)  # read later on the phone, a day behind (#5)
        assert view["latest"]["position"]["progress"] == 0.6
        assert view["here"]["position"]["progress"] == 0.3

        async def kept_on(device: Device) -> Any:
            status, doc = await device.api.send("GET", note_path)
            return doc if status == 200 and doc["note"] == "kept words" else None

        for device in (kindle, phone):
            kept = await eventually(lambda d=device: kept_on(d))  # type: ignore[misc]
            assert kept["delete_overruled"]["device_id"] == phone_id  # edit beat delete (#6)
        text = _format(await status_text(kindle))
        assert "device: Kindle by the bed" in text
        assert "1 highlight, 1 note, 0 bookmarks on the device" in text
        assert "kept although another device deleted it" in text
        assert "Error" not in text  # no exception text (#7)

        # 6. A trip with fresh purchases: they come first, and "Ready" means all of it ran.
        for name in TRIP_BOOKS:
            await account.buy(ids[name])
        report = await kindle.api.start_trip(2)
        while not report["ready"]:
            assert "bk_" not in report["sentence"]  # books by title (#3, #7)
            await asyncio.sleep(0.05)
            report = await kindle.api.trip()
        states = {b["book_id"]: b["state"] for b in await kindle.api.library()}
        assert all(states[ids[name]] == "complete" for name in TRIP_BOOKS)
        assert states[ids[ARCHIVED]] == "complete"  # the archive book the first trip asked for
        assert report["shared_highlights"] == 1
        assert report["shared_highlights_refreshed"]


def _format(status: dict[str, Any]) -> str:
    from daemon.api.status import format_status

    return format_status(status)


async def _has(device: Device, item_id: str) -> bool:
    return (await device.api.send("GET", f"/v1/annotations/{item_id}"))[0] == 200
