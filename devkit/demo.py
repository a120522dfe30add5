"""`shelfsync-demo`: the whole story on one machine, with real processes.

Starts the content service (server_stub) with its sample library and the daemon with a device
profile, the daemon reaching the service through the link emulator (devkit.linkemu) with the
profile's link, so the times are the ones a reader on that device would see. Buys a book, prints
when the device was told, when the first chapter became readable and when the book was complete,
then stops the service and reads every resource of the book back through the daemon's local API,
comparing each byte with the original EPUB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import server_stub
from daemon.api.client import LocalApiClient
from daemon.client import AccountClient
from daemon.errors import ShelfsyncError
from daemon.profile import load_profile
from devkit.children import child, script
from devkit.linkemu import LinkEmulator, describe_link, parse_address
from server_stub.epub import read_epub
from server_stub.packaging import book_id_for

SAMPLE_LIBRARY = Path(server_stub.__file__).resolve().parent / "sample_library"
DELIVERY_TIMEOUT_S = 120.0


class DemoError(ShelfsyncError):
    """A step of the demo failed; the message says which log to read."""


async def _listening_url(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    while line := await asyncio.wait_for(proc.stdout.readline(), 120):
        text = line.decode().strip()
        if text.startswith("shelfsync-stub listening on "):
            return text.rsplit(" ", 1)[1]
    raise DemoError("the service stopped before listening; see stub.log")


async def _wait_for(path: Path, proc: asyncio.subprocess.Process, what: str) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            raise DemoError(f"{what} did not start; see its log")
        await asyncio.sleep(0.05)


def _private_file(path: Path, text: str) -> Path:
    """`text` in a file of mode 0600 (replacing one a previous run left)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _pick_book(word: str | None) -> Path:
    books = sorted(SAMPLE_LIBRARY.glob("*.epub"))
    if word:
        books = [b for b in books if word.lower() in b.name.lower()] or books
    return books[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shelfsync-demo",
        description="stub + daemon + a purchase, then read the book back offline",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('shelfsync')}")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-data"),
        help="where the demo keeps its state (default %(default)s)",
    )
    parser.add_argument("--profile", default="paperwhite-wifi")
    parser.add_argument("--book", help="title word of the sample book to buy (default: first)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run_demo(args.workdir, args.profile, args.book))
    except ShelfsyncError as e:
        print(f"shelfsync-demo: {e}", file=sys.stderr)
        return 2


async def run_demo(workdir: Path, profile: str, book_word: str | None) -> int:
    workdir = workdir.resolve()
    stub_dir, device_dir = workdir / "stub", workdir / "device"
    shutil.rmtree(device_dir, ignore_errors=True)  # a fresh device each run; the service keeps
    workdir.mkdir(parents=True, exist_ok=True)
    epub = read_epub(_pick_book(book_word))
    book_id = book_id_for(epub.identifier, epub.language)
    print(f"demo: state in {workdir} (logs: stub.log, device.log)")

    stub_args = [script("shelfsync-stub"), "--data", str(stub_dir), "--port", "0"]
    async with child(stub_args, workdir / "stub.log", pipe_stdout=True) as stub:
        url = await _listening_url(stub)
        print(f"service: {url}, sample library from {SAMPLE_LIBRARY}")
        account = AccountClient(url)  # the buyer, on the store's website: not behind the link
        token_file = _private_file(
            workdir / "account-token", await account.create_account("demo reader")
        )
        socket_path = device_dir / "api.sock"
        link = load_profile(profile).link
        # The device reaches the service only through its profile's link, emulated on loopback.
        async with LinkEmulator(link, parse_address(url.removeprefix("http://"))) as emulator:
            print(f"link: {describe_link(link)} (emulated: {emulator.url} -> {url})")
            device_args = [
                script("shelfsync"),
                "run",
                "--state",
                str(device_dir),
                "--service",
                emulator.url,
                "--service-key",
                str(stub_dir / "service.pub"),
                "--profile",
                profile,
                # A file only its owner reads: a token in argv is in every user's `ps`.
                "--account-token-file",
                str(token_file),
                "--device-name",
                "demo e-reader",
            ]
            async with child(device_args, workdir / "device.log", pipe_stdout=True) as device:
                await _wait_for(socket_path, device, "the daemon")
                async with LocalApiClient(socket_path) as api:
                    await _wait_online(api, device)
                    print(f"device: profile {profile}, buying {epub.title!r} ({book_id})")
                    ordered_at = await account.buy(book_id)
                    book = await _wait_delivered(api, book_id, device)
                    told, first = book["notified_at"], book["first_chapter_at"]
                    print(f"  device told:            {told - ordered_at:7.2f} s")
                    print(f"  first chapter readable: {first - ordered_at:7.2f} s")
                    print(
                        f"  book complete:          {book['completed_at'] - ordered_at:7.2f} s"
                        f"  ({book['bytes_fetched']:,} bytes fetched,"
                        f" {emulator.stats.bytes_down:,} bytes down the link)"
                    )

                    stub.send_signal(signal.SIGTERM)
                    await stub.wait()
                    print("service stopped; reading the book offline through the local API")
                    return await _compare(api, book_id, epub.files)


async def _wait_online(api: LocalApiClient, device: asyncio.subprocess.Process) -> None:
    """Until the push channel is up: a reader's device is online before the purchase, not
    still dialling in (on 3G that alone is a few round trips)."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while not (await api.status())["daemon"].get("push_connected_since"):
        if device.returncode is not None:
            raise DemoError("the daemon exited; see device.log")
        if time.monotonic() > deadline:
            raise DemoError("the daemon never connected to the service; see device.log")
        await asyncio.sleep(0.05)


async def _wait_delivered(
    api: LocalApiClient, book_id: str, device: asyncio.subprocess.Process
) -> dict[str, Any]:
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        if device.returncode is not None:
            raise DemoError("the daemon exited; see device.log")
        book = await api.library_entry(book_id)
        if book is not None and book["completed_at"]:
            return book
        await asyncio.sleep(0.02)
    raise DemoError(f"{book_id} was not delivered within {DELIVERY_TIMEOUT_S:.0f} s")


async def _compare(api: LocalApiClient, book_id: str, originals: tuple) -> int:  # type: ignore[type-arg]
    details = await api.book(book_id)
    served = {r["path"] for r in details["resources"]}
    mismatched = []
    total = 0
    for original in originals:
        status, _, body = await api.resource(book_id, original.path)
        total += len(body)
        if status != 200 or body != original.data:
            mismatched.append(original.path)
    missing = {f.path for f in originals} - served
    if mismatched or missing:
        print(
            f"FAILED: {len(mismatched)} resources differ, {len(missing)} missing:"
            f" {sorted(mismatched + list(missing))[:10]}"
        )
        return 1
    print(
        f"offline read: {len(originals)} resources, {total:,} bytes, all byte-identical"
        " to the original EPUB"
    )
    return 0
