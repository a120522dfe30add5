"""The reading web app in a real headless Chromium (Debian's package): library, book, chapter
2, a highlight; the content service stopped, the page reloaded, the highlight still there; the
service back, the highlight reaches it. Screenshots go to the test's tmp folder."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from daemon.client import AccountClient
from server_stub.app import running_stub
from tests.conftest import StubImport
from tests.integration.chromium import INSTALL, Page, chromium_page, chromium_path
from tests.integration.harness import Device, running_device
from tests.integration.notes_helpers import eventually

BOOK = "se_h-g-wells_the-time-machine.epub"
ARCHIVED = "epubjs_alice.epub"  # bought before the device joined: it stays in the cloud
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=f"needs Chromium: {INSTALL}")

# Select 40 characters of the chapter's first long paragraph, as a reader's drag would.
SELECT = """(() => {
  const doc = document.querySelector("iframe.book").contentDocument;
  const walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (node.data.trim().length > 80) {
      const range = doc.createRange();
      const from = node.data.search(/\\S/);
      range.setStart(node, from);
      range.setEnd(node, from + 40);
      const selection = doc.defaultView.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      return range.toString();
    }
  }
  return null;
})()"""
MARKED = """(() => {
  const frame = document.querySelector("iframe.book");
  const doc = frame && frame.contentDocument;
  const marks = doc ? [...doc.querySelectorAll("mark[data-shelfsync]")] : [];
  return marks.map((m) => m.textContent).join("");
})()"""


async def click(page: Page, selector: str) -> None:
    await page.wait_for(f"document.querySelector({json.dumps(selector)}) !== null")
    await page.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    async with chromium_page(CHROMIUM, tmp_path / "chromium-profile") as page:
        yield page


async def test_a_highlight_made_in_the_browser_survives_the_service_going_away(
    tmp_path: Path, corpus_stub_data: Path, stub_corpus_import: StubImport, browser: Page
) -> None:
    shots = tmp_path / "screenshots"
    book_id = stub_corpus_import.book_ids[BOOK]
    archived_id = stub_corpus_import.book_ids[ARCHIVED]
    async with AsyncExitStack() as service:
        stub = await service.enter_async_context(running_stub(corpus_stub_data, port=0))
        account = AccountClient(stub.url)
        await account.create_account("reader")
        account_id = stub.store.account_for_token(account.account_token)
        assert account_id is not None
        stub.store.seed_library(account_id, [archived_id], at=time.time() - 86400)
        async with running_device(
            stub.url, stub.public_key_text, tmp_path / "device", tcp_port=0, account=account
        ) as device:
            await device.account.buy(book_id)
            await device.wait_complete(book_id)
            await device.wait_for(archived_id, lambda b: b["state"] == "in_cloud")
            link = await device.api.post_json("/v1/login-links")
            await browser.goto(link["url"])
            card = f"[data-book={book_id}]"
            await browser.wait_for(f"document.querySelector('{card} img.cover')?.naturalWidth > 0")
            await browser.screenshot(shots / "library.png")
            assert "On device" in await browser.evaluate(
                f"document.querySelector('{card}').textContent"
            )
            assert "In the cloud" in await browser.evaluate(
                f"document.querySelector('[data-book={archived_id}]').textContent"
            )

            await click(browser, f"{card} a")
            await click(browser, "#start")
            await click(browser, "#next")
            await browser.wait_for("location.hash.endsWith('/1')")
            await chapter_shown(browser)
            quote = await browser.evaluate(SELECT)
            assert quote
            await click(browser, "#highlight")
            assert await browser.wait_for(MARKED) == quote
            await browser.screenshot(shots / "chapter-2-highlight.png")
            [made] = await annotations(device, book_id)
            assert made["anchor"]["quote"]["exact"] == quote
            chapter_2 = made["anchor"]["resource"]
            position = await device.api.get_json(f"/v1/books/{book_id}/position")
            assert position["here"]["position"]["resource"] == chapter_2

            await service.aclose()  # the content service is gone
            await browser.reload()
            await chapter_shown(browser)
            assert await browser.wait_for(MARKED) == quote
            await browser.screenshot(shots / "offline-after-reload.png")

            async with running_stub(corpus_stub_data, port=stub.port):
                await device.api.post_json("/v1/annotations/sync")  # "the network is back"
                synced = await eventually(lambda: first_synced(device, book_id), timeout_s=30)
            assert synced["id"] == made["id"]
            assert synced["anchor"] == made["anchor"]


async def chapter_shown(page: Page) -> None:
    await page.wait_for(
        "document.querySelector('iframe.book')?.contentDocument?.readyState === 'complete'"
        " && document.querySelector('#chapter-notes h2') !== null"
    )


async def annotations(device: Device, book_id: str) -> list[dict[str, Any]]:
    doc = await device.api.get_json(f"/v1/books/{book_id}/annotations")
    result: list[dict[str, Any]] = doc["annotations"]
    return result


async def first_synced(device: Device, book_id: str) -> dict[str, Any] | None:
    """The annotation once the service has acknowledged it (no longer pending)."""
    [item] = await annotations(device, book_id)
    return None if item["pending"] else item
