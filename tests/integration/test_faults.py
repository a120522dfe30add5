"""The network misbehaves; the device refuses what is wrong and still completes the book.

Each test injects one fault with the stub's fault rules, then checks what the device stored,
what it reported, and what it fetched (the stub's request log).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemon.client import MAX_PUSHED_PREFIX
from daemon.protocol.manifest import Manifest, parse_manifest
from server_stub.app import RunningStub
from tests.conftest import StubImport
from tests.integration.harness import Device, admin
from tests.integration.test_delivery import assert_reads_back

BOOK = "idpf_moby-dick.epub"  # 1.6 MB, many frames: room for faults in the middle


@pytest.fixture
def stub(faulty_stub: RunningStub) -> RunningStub:
    return faulty_stub


@pytest.fixture
def device(corpus_device: Device) -> Device:
    return corpus_device


@pytest.fixture
def book_id(stub_corpus_import: StubImport) -> str:
    return stub_corpus_import.book_ids[BOOK]


def manifest_of(stub: RunningStub, book_id: str, version: int = 1) -> Manifest:
    template = stub.store.manifest_template(book_id, version)
    assert template is not None
    return parse_manifest(template, template=True)


async def package_requests(stub: RunningStub) -> list[dict[str, Any]]:
    log = (await admin(stub.url, "GET", "/v1/admin/requests"))["requests"]
    return [r for r in log if r["path"].endswith("/package")]


async def add_fault(stub: RunningStub, **rule: Any) -> None:
    await admin(stub.url, "POST", "/v1/admin/faults", {"rules": [rule]})


def failed_with(kind: str) -> Any:
    return lambda b: kind in (b["last_error"] or "")


async def test_first_chapter_is_served_while_the_rest_is_still_downloading(
    stub: RunningStub, device: Device, book_id: str, corpus_dir: Path
) -> None:
    manifest = manifest_of(stub, book_id)
    needed = manifest.first_chapter_frames()
    assert needed < len(manifest.frames)
    held_back = manifest.frames[needed]
    # The service stops sending right after the first chapter's frames, until released (the
    # package request starts past the frames the push brought).
    after = held_back.offset - pushed_end(manifest)
    await add_fault(stub, route="package", kind="pause", after_bytes=after)
    await device.account.buy(book_id)

    book = await device.wait_for(book_id, lambda b: b["readable"])
    assert book["state"] == "downloading"
    assert book["frames_held"] == needed
    status, _, body = await device.api.resource(book_id, manifest.first_chapter)
    assert status == 200
    chapter = manifest.resource(manifest.first_chapter)
    assert chapter is not None
    assert len(body) == chapter.size

    later = next(r for r in manifest.resources if manifest.frames_for(r).start >= needed)
    status, _, body = await device.api.resource(book_id, later.path)
    assert status == 503
    assert b"not_yet_on_device" in body

    await admin(stub.url, "POST", "/v1/admin/release")
    await device.wait_complete(book_id)
    await assert_reads_back(device.api, corpus_dir / BOOK)


@pytest.mark.faults(14)
async def test_a_tampered_frame_is_refused_and_fetched_again(
    stub: RunningStub, device: Device, book_id: str, corpus_dir: Path
) -> None:
    manifest = manifest_of(stub, book_id)
    pushed = pushed_end(manifest)
    bad = [f for f in manifest.frames if f.offset >= pushed][1]  # within the package request
    at_byte = bad.offset - pushed + bad.length // 2
    await add_fault(stub, route="package", kind="corrupt", at_byte=at_byte)
    await device.account.buy(book_id)

    book = await device.wait_complete(book_id)
    assert book["retries"] >= 1
    requests = await package_requests(stub)
    # The retry resumes at the tampered frame: the frames before it are not fetched again.
    assert requests[1]["range"] == f"bytes={bad.offset}-{manifest.package_size - 1}"
    assert book["bytes_fetched"] == manifest.package_size
    await assert_reads_back(device.api, corpus_dir / BOOK)


def pushed_end(manifest: Manifest) -> int:
    """Where the frames a purchase's push brings end: the leading whole frames that fit the
    room the device says it has (all of it here: MAX_PUSHED_PREFIX)."""
    ends = [f.offset + f.length for f in manifest.frames]
    return max((end for end in ends if end <= MAX_PUSHED_PREFIX), default=0)


async def manifest_fault(stub: RunningStub, via: str, **rule: Any) -> None:
    """A manifest fault on the way `via` names: "push" (the manifest the purchase's push
    carries) or "fetch" (that one too, then every fetch: the device's retries fetch it)."""
    await add_fault(stub, route="pushed_manifest", **rule, times=1)
    if via == "fetch":
        await add_fault(stub, route="manifest", **rule, times=2)


@pytest.mark.faults(20)
@pytest.mark.parametrize("via", ["push", "fetch"])
async def test_a_manifest_signed_by_another_key_is_refused_and_nothing_is_stored(
    stub: RunningStub, device: Device, book_id: str, corpus_dir: Path, via: str
) -> None:
    await manifest_fault(stub, via, kind="bad_signature")
    await device.account.buy(book_id)

    refused = await device.wait_for(book_id, failed_with("SignatureError"))
    assert refused["version"] is None
    assert refused["frames_total"] == 0
    assert await package_requests(stub) == []
    await device.wait_complete(book_id, timeout_s=30)
    await assert_reads_back(device.api, corpus_dir / BOOK)


@pytest.mark.faults(20)
@pytest.mark.parametrize("via", ["push", "fetch"])
async def test_another_books_manifest_is_refused_and_nothing_is_stored(
    stub: RunningStub,
    device: Device,
    book_id: str,
    corpus_dir: Path,
    stub_corpus_import: StubImport,
    via: str,
) -> None:
    other = stub_corpus_import.book_ids["idpf_wasteland.epub"]  # validly signed, mixed in
    await manifest_fault(stub, via, kind="swap_manifest", book_id=other)
    await device.account.buy(book_id)

    refused = await device.wait_for(book_id, failed_with("ManifestError"))
    assert f"asked for the manifest of {book_id}, got one for {other}" in refused["last_error"]
    assert refused["version"] is None
    assert refused["frames_total"] == 0
    assert await package_requests(stub) == []
    await device.wait_complete(book_id, timeout_s=30)
    await assert_reads_back(device.api, corpus_dir / BOOK)


@pytest.mark.faults(10)
async def test_a_truncated_body_resumes_where_it_stopped(
    stub: RunningStub, device: Device, book_id: str
) -> None:
    manifest = manifest_of(stub, book_id)
    cut = manifest.frames[5].offset + 100
    await add_fault(stub, route="package", kind="truncate", after_bytes=cut)
    await device.account.buy(book_id)

    book = await device.wait_complete(book_id)
    first, second = (await package_requests(stub))[:2]
    assert first["bytes"] == cut
    assert second["range"] == f"bytes={manifest.frames[5].offset}-{manifest.package_size - 1}"
    assert book["bytes_fetched"] == manifest.package_size


@pytest.mark.faults(13)
async def test_a_server_that_ignores_range_is_never_spliced(
    stub: RunningStub, device: Device, book_id: str, corpus_dir: Path
) -> None:
    manifest = manifest_of(stub, book_id)
    cut = manifest.frames[4].offset + 10
    await add_fault(stub, route="package", kind="truncate", after_bytes=cut)
    await device.account.buy(book_id)
    # Once the cut happened, the service starts ignoring Range (the retry waits >= 0.1 s).
    while not await package_requests(stub):
        await asyncio.sleep(0.005)
    await add_fault(stub, route="package", kind="ignore_range")

    book = await device.wait_complete(book_id)
    assert book["retries"] >= 2
    statuses = [r["status"] for r in await package_requests(stub)]
    assert statuses[:2] == [206, 200]  # the 200 answer to a resume was refused, not spliced
    await assert_reads_back(device.api, corpus_dir / BOOK)


@pytest.mark.faults(7)
async def test_service_errors_are_retried(stub: RunningStub, device: Device, book_id: str) -> None:
    # The package: the manifest comes with the purchase's push (its errors are the push
    # channel's, tests/integration/test_push_fallback.py).
    await add_fault(stub, route="package", kind="error", status=503, times=2)
    await device.account.buy(book_id)
    book = await device.wait_complete(book_id, timeout_s=30)
    assert book["retries"] == 2
