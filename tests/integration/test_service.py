"""The daemon as a system service: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING),
SIGHUP reloads, SIGTERM stops cleanly with everything acknowledged durable, and a start without
the service serves the device offline. Real processes, a real datagram socket."""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import socket
from pathlib import Path

import aiohttp

from daemon.api.client import LocalApiClient
from daemon.client import AccountClient
from daemon.notes.store import NotesStore
from daemon.protocol.merge import note_versions
from daemon.store import Store
from devkit.children import child, script
from server_stub.app import running_stub
from server_stub.catalog import PackagingSettings
from server_stub.cli import LISTENING, SAMPLE_LIBRARY
from server_stub.epub import read_epub
from server_stub.packaging import book_id_for
from server_stub.signing import load_or_create_key
from tests.integration.notes_helpers import eventually
from tests.integration.service_helpers import (
    BOOK_SENTENCE,
    SAMPLE_BOOK,
    ServiceManager,
    daemon_process,
    log_lines,
    terminate,
    write_config,
)

NOTE_TEXT = "a private thought about the fourth dimension"


def _free_port() -> int:
    """A loopback port nobody listens on (the service is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _delivered(api: LocalApiClient) -> dict[str, object] | None:
    return next((b for b in await api.library() if b["state"] == "complete"), None)


async def test_under_a_service_manager_it_is_ready_pinged_reloaded_stopped_and_serves_offline(
    tmp_path: Path,
) -> None:
    manager = ServiceManager(tmp_path / "notify")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    epub = read_epub(SAMPLE_LIBRARY / SAMPLE_BOOK)
    try:
        async with running_stub(
            tmp_path / "stub",
            library_dir=SAMPLE_LIBRARY,
            packaging=PackagingSettings(level=3),
        ) as stub:
            book_id = next(
                b.book_id for b in stub.import_report.imported if b.path.name == SAMPLE_BOOK
            )
            account = AccountClient(stub.url)
            token_file = tmp_path / "account-token"
            token_file.write_text(await account.create_account("reader"))
            token_file.chmod(0o600)
            config = write_config(
                tmp_path / "config.toml",
                service_url=stub.url,
                service_key=str(stub.pub_path),
                profile="emulator-loopback",
                account_token_file="account-token",
                state_dir="state",
            )
            async with daemon_process(config, log, manager) as daemon:
                ready = await manager.expect("READY=1")
                # Ready means serving: the socket answers at once.
                async with LocalApiClient(state / "api.sock") as api:
                    assert (await api.status())["daemon"]["running"]
                    assert re.search(r"STATUS=(online|offline); 0 on the device", ready)
                    await account.buy(book_id)
                    book = await eventually(lambda: _delivered(api), timeout_s=60)
                    assert book["book_id"] == book_id
                    status, note = await api.send(
                        "POST",
                        f"/v1/books/{book_id}/annotations",
                        {
                            "kind": "note",
                            "note": NOTE_TEXT,
                            "anchor": {
                                "resource": "epub/text/chapter-1.xhtml",
                                "start": 10,
                                "end": 10 + len(BOOK_SENTENCE),
                                "quote": {"exact": BOOK_SENTENCE},
                            },
                        },
                    )
                    assert status == 201, note
                await manager.expect(r"STATUS=online; 1 on the device, last sync \d\d:\d\d")
                await manager.expect("WATCHDOG=1")
                await manager.expect("WATCHDOG=1")  # again: pinged for as long as it runs

                # SIGHUP: the log level changes at once; a new profile waits for a restart.
                config.write_text(
                    config.read_text().replace("emulator-loopback", "paperwhite-wifi")
                    + 'log_level = "debug"\n'
                )
                daemon.send_signal(signal.SIGHUP)
                await manager.expect("RELOADING=1")
                await manager.expect("READY=1")
                reloaded = await eventually(lambda: _lines(log, "config_reloaded"))
                assert "log_level=debug" in reloaded[0]
                assert "needs_restart=profile" in reloaded[0]
                assert daemon.returncode is None

                assert await terminate(daemon) == 0
                await manager.expect("STOPPING=1")
        stopped = log_lines(log, "daemon_stopped")
        assert len(stopped) == 1
        assert "other_tasks=0" in stopped[0]
        assert not (state / "api.sock").exists()
        # Everything acknowledged before the stop is on disk: the whole book and the note.
        store, notes = (
            Store.open(state / "shelfsync.db", readonly=True),
            NotesStore.open(state / "shelfsync.db"),
        )
        try:
            assert [b["state"] for b in store.views.library_view()] == ["complete"]
            items = [item for item, _ in notes.items(book_id, False)]
            assert [[text for _, text in note_versions(i)] for i in items] == [[NOTE_TEXT]]
        finally:
            store.close()
            notes.close()

        # The service is gone (and the profile now changed): the daemon starts all the same.
        write_config(
            config,
            service_url=f"http://127.0.0.1:{_free_port()}",
            service_key=str(tmp_path / "stub" / "service.pub"),
            profile="paperwhite-wifi",
            state_dir="state",
        )
        async with daemon_process(config, log, manager) as daemon:
            await manager.expect("READY=1")
            async with LocalApiClient(state / "api.sock") as api:
                chapter = next(f for f in epub.files if f.path == "epub/text/chapter-1.xhtml")
                assert await api.resource(book_id, chapter.path) == (
                    200,
                    "application/xhtml+xml",
                    chapter.data,
                )
                listed = await api.get_json(f"/v1/books/{book_id}/annotations")
                assert [a["note"] for a in listed["annotations"]] == [NOTE_TEXT]
                assert not (await api.status())["daemon"]["online"]
            assert await terminate(daemon) == 0
    finally:
        manager.close()
    assert len(log_lines(log, "daemon_stopped")) == 2


async def test_with_the_service_unreachable_a_new_device_keeps_trying_and_still_stops(
    tmp_path: Path,
) -> None:
    load_or_create_key(tmp_path / "stub")
    manager = ServiceManager(tmp_path / "notify")
    log = tmp_path / "daemon.log"
    config = write_config(
        tmp_path / "config.toml",
        service_url=f"http://127.0.0.1:{_free_port()}",
        service_key=str(tmp_path / "stub" / "service.pub"),
        state_dir="state",
    )
    try:
        async with daemon_process(
            config, log, manager, env={"SHELFSYNC_ACCOUNT_TOKEN": "acct-token-from-env"}
        ) as daemon:
            await manager.expect(
                r"STATUS=not registered yet: waiting for the network \(the service cannot be"
                r" reached\); trying again in \d+ s"
            )
            await manager.expect(r"EXTEND_TIMEOUT_USEC=\d+")  # systemd: still starting
            assert await eventually(lambda: _lines(log, "registration_waiting"))
            assert daemon.returncode is None  # not an error: it waits for the service
            assert await terminate(daemon) == 0
    finally:
        manager.close()
    assert "READY=1" not in "\n".join(manager.messages)  # nothing to serve yet
    assert len(log_lines(log, "daemon_stopped")) == 1


async def _lines(log: Path, event: str) -> list[str]:
    return log_lines(log, event)


async def test_no_log_holds_a_token_a_key_or_the_books_text(tmp_path: Path) -> None:
    """A demo's flow with every log at debug: the service and the daemon as processes, a book
    bought, delivered and read back over the token-guarded TCP API, a note made on it."""
    stub_log, device_log = tmp_path / "stub.log", tmp_path / "device.log"
    state = tmp_path / "state"
    epub = read_epub(SAMPLE_LIBRARY / SAMPLE_BOOK)
    stub_args = [script("shelfsync-stub"), "--data", str(tmp_path / "stub"), "--port", "0"]
    async with child([*stub_args, "--zstd-level", "3"], stub_log, pipe_stdout=True) as stub:
        url = await _listening_url(stub)
        account = AccountClient(url)
        token_file = tmp_path / "account-token"
        token_file.write_text(await account.create_account("reader"))
        token_file.chmod(0o600)
        book_id = book_id_for(epub.identifier, epub.language)
        port = _free_port()
        config = write_config(
            tmp_path / "config.toml",
            service_url=url,
            service_key=str(tmp_path / "stub" / "service.pub"),
            profile="emulator-loopback",
            account_token_file="account-token",
            state_dir="state",
            tcp_port=port,
            log_level="debug",
        )
        manager = ServiceManager(tmp_path / "notify")
        async with daemon_process(config, device_log, manager) as daemon:
            await manager.expect("READY=1")
            api_token = (state / "api-token").read_text().strip()
            await account.buy(book_id)
            async with LocalApiClient(state / "api.sock") as api:
                await eventually(lambda: _delivered(api), timeout_s=60)
                status, note = await api.send(
                    "POST", f"/v1/books/{book_id}/annotations", _note(book_id)
                )
                assert status == 201, note
            async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {api_token}"}
            ) as session:
                for f in epub.files:
                    resource = f"http://127.0.0.1:{port}/v1/books/{book_id}/resources/{f.path}"
                    async with session.get(resource) as r:
                        assert (r.status, await r.read()) == (200, f.data)
            assert await terminate(daemon) == 0
        manager.close()
    db = Store.open(state / "shelfsync.db", readonly=True)
    try:
        device_token = db.get_meta("device_token")
    finally:
        db.close()
    device_key = (state / "device.key").read_bytes()
    service_key = (tmp_path / "stub" / "service.key").read_bytes()
    secrets = {
        "account token": account.account_token,
        "device token": device_token,
        "api token": api_token,
        "device key (base64)": base64.b64encode(device_key).decode(),
        "device key (hex)": device_key.hex(),
        "service signing key": service_key.decode(errors="replace").strip(),
        "the book's text": BOOK_SENTENCE,
        "the note's text": NOTE_TEXT,
    }
    assert BOOK_SENTENCE.encode() in next(f.data for f in epub.files if f.path.endswith("-1.xhtml"))
    for log in (stub_log, device_log):
        text = log.read_text()
        assert "event=delivery_complete" in text or "event=book_imported" in text
        leaked = [what for what, secret in secrets.items() if secret and secret in text]
        assert not leaked, f"{log.name} holds {leaked}"
        # One format, one line per event: the time, the level, the logger, the event.
        for line in text.splitlines():
            assert LINE.match(line), f"{log.name}: {line}"


LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ event=\w+( |$)"
)


def _note(book_id: str) -> dict[str, object]:
    return {
        "kind": "note",
        "note": NOTE_TEXT,
        "anchor": {
            "resource": "epub/text/chapter-1.xhtml",
            "start": 10,
            "end": 10 + len(BOOK_SENTENCE),
            "quote": {"exact": BOOK_SENTENCE},
        },
    }


async def _listening_url(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    while line := await asyncio.wait_for(proc.stdout.readline(), 60):
        if line.startswith(LISTENING.encode()):
            return line.decode().split()[-1]
    raise AssertionError("the stub exited before listening")
