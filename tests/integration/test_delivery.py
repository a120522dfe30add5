"""A purchase reaches the device, reads offline byte for byte, and survives a hostile network."""

from __future__ import annotations

import zipfile
from pathlib import Path

from daemon.api.client import LocalApiClient
from server_stub.app import running_stub
from server_stub.epub import read_epub
from server_stub.packaging import book_id_for
from tests.integration.harness import running_device


def book_id_of(path: Path) -> str:
    epub = read_epub(path)
    return book_id_for(epub.identifier, epub.language)


def zip_entries(path: Path) -> list[str]:
    """The files of the EPUB's ZIP, counted without the EPUB reader."""
    with zipfile.ZipFile(path) as z:
        return [i.filename for i in z.infolist() if not i.is_dir()]


async def assert_reads_back(api: LocalApiClient, epub_path: Path) -> int:
    """Every resource of the book, through the local API, equals the EPUB's bytes."""
    epub = read_epub(epub_path)
    book_id = book_id_for(epub.identifier, epub.language)
    for original in epub.files:
        status, media_type, body = await api.resource(book_id, original.path)
        assert status == 200, (original.path, body[:200])
        assert body == original.data, original.path
        assert media_type == original.media_type.split(";")[0]
    return len(epub.files)


async def test_every_corpus_book_is_delivered_and_reads_back_offline(
    corpus_stub_data: Path, corpus_books: list[Path], tmp_path: Path
) -> None:
    async with running_stub(corpus_stub_data, library_dir=None, port=0) as stub:
        device_cm = running_device(stub.url, stub.public_key_text, tmp_path / "device")
        device = await device_cm.__aenter__()
        try:
            for path in corpus_books:
                await device.account.buy(book_id_of(path))
            for path in corpus_books:
                await device.wait_complete(book_id_of(path), timeout_s=120)
        except BaseException:
            await device_cm.__aexit__(None, None, None)
            raise
    # The service is gone: everything must come from the device.
    try:
        resources = 0
        for path in corpus_books:
            resources += await assert_reads_back(device.api, path)
        assert resources == sum(len(zip_entries(path)) for path in corpus_books)
        status = await device.api.status()
        assert status["books"] == {"complete": len(corpus_books)}
    finally:
        await device_cm.__aexit__(None, None, None)
