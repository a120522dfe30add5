"""A loopback OPDS catalog for the tests: the real feeds of tests/stub/opds/, their links
pointed at this server, and the sample library's EPUBs and cover images behind those links."""

from __future__ import annotations

import json
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from server_stub.cli import SAMPLE_LIBRARY

FIXTURES = Path(__file__).resolve().parent / "opds"
CAROL = SAMPLE_LIBRARY / "cwa_christmas_carol.epub"
ALICE = SAMPLE_LIBRARY / "epubjs_alice.epub"
TIME_MACHINE = SAMPLE_LIBRARY / "se_h-g-wells_the-time-machine.epub"
ATOM = "application/atom+xml;profile=opds-catalog;kind=acquisition"
OPDS2 = "application/opds+json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def image(book: Path, member: str) -> bytes:
    """A real cover image: one of the sample books' pictures."""
    with zipfile.ZipFile(book) as archive:
        return archive.read(member)


def pointed_at(text: str, base: str) -> str:
    """The opds-community test catalog's links, pointed at the loopback server `base`."""
    return text.replace(
        "https://feedbooks.github.io/opds-test-catalog", base + "/feedbooks"
    ).replace("https://test.opds.io", base)


def with_next_atom(text: str, href: str) -> str:
    """The Atom feed with a `next` link added beside its `start` link."""
    return text.replace(
        '<link rel="start"', f'<link rel="next" href="{href}"/>\n  <link rel="start"', 1
    )


def with_next_json(text: str, href: str) -> str:
    doc = json.loads(text)
    doc["links"].append({"rel": "next", "href": href, "type": OPDS2})
    return json.dumps(doc, ensure_ascii=False)


@dataclass
class Origin:
    """The catalog server: path (with query) -> handler; every request's path is recorded."""

    routes: dict[str, Handler] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    url: str = ""

    def serve(self, path: str, body: bytes | str, content_type: str) -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body

        async def handler(_: web.Request) -> web.StreamResponse:
            return web.Response(body=data, headers={"Content-Type": content_type})

        self.routes[path] = handler

    def serve_file(self, path: str, file: Path) -> None:
        self.serve(path, file.read_bytes(), "application/epub+zip")

    def redirect(self, path: str, location: str) -> None:
        async def handler(_: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(location)

        self.routes[path] = handler

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requested.append(request.path_qs)
        handler = self.routes.get(request.path_qs) or self.routes.get(request.path)
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)


@asynccontextmanager
async def running_origin(origin: Origin) -> AsyncIterator[Origin]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", origin._dispatch)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        origin.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield origin
    finally:
        await runner.cleanup()
