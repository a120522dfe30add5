"""The local API against its OpenAPI 3.1 document (daemon/api/openapi.json, served at
/v1/openapi.json): every route is described and every answer of a real device, one request
of each kind, matches the document; then schemathesis fuzzes every route over the TCP
listener, a bounded and seeded number of examples per route: 0 answers 5xx, 0 unauthenticated
2xx, every answer as described."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server_stub.app import running_stub
from tests.conftest import REPO, StubImport
from tests.integration.harness import Device, running_device
from tests.openapi import LOCAL_API

BOOK = "se_h-g-wells_the-time-machine.epub"
EXAMPLES_PER_ROUTE = int(os.environ.get("SHELFSYNC_FUZZ_EXAMPLES", "20"))


@pytest.fixture
async def device(tmp_path: Path, corpus_stub_data: Path) -> AsyncIterator[Device]:
    async with (
        running_stub(corpus_stub_data, port=0) as stub,
        running_device(stub.url, stub.public_key_text, tmp_path / "d", tcp_port=0) as device,
    ):
        yield device


def base_url(device: Device) -> str:
    api = device.daemon.api
    assert api is not None
    return f"http://127.0.0.1:{api.tcp_port}"


def bearer(device: Device) -> dict[str, str]:
    return {"Authorization": "Bearer " + device.daemon.settings.api_token_path.read_text().strip()}


def test_every_route_is_described_and_every_described_route_exists(device: Device) -> None:
    api = device.daemon.api
    assert api is not None
    routes = {
        (route.method, _template(route.resource.canonical))
        for route in api.make_app().router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert routes == LOCAL_API.operations()


def _template(canonical: str) -> str:
    """aiohttp's route with its regular expressions left out: the document's path template."""
    return canonical.replace("{path:.+}", "{path}").replace("{name:[a-z.]*}", "{name}")


async def test_the_served_document_is_the_repositorys(device: Device) -> None:
    async with (
        aiohttp.ClientSession(headers=bearer(device)) as session,
        session.get(base_url(device) + "/v1/openapi.json") as r,
    ):
        assert r.status == 200
        assert await r.json() == LOCAL_API.document
    assert (REPO / "daemon" / "api" / "openapi.json").read_text() == json.dumps(
        LOCAL_API.document, indent=1
    ) + "\n"


class Checked:
    """An authenticated session on the TCP listener that checks every answer against the
    document as it comes."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self._base = base

    async def __call__(
        self,
        method: str,
        template: str,
        path: str | None = None,
        body: Any = None,
        **headers: str,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self._session.request(
            method,
            self._base + (path or template),
            json=body,
            headers={name.replace("_", "-"): value for name, value in headers.items()},
            allow_redirects=False,
        ) as r:
            raw = await r.read()
        LOCAL_API.check_answer(method, template, r.status, r.content_type, raw)
        doc = json.loads(raw) if r.content_type == "application/json" else raw
        return r.status, doc, r


async def test_every_answer_of_every_route_is_as_described(
    device: Device, stub_corpus_import: StubImport
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    await device.account.buy(book_id)
    await device.wait_complete(book_id)
    b = f"/v1/books/{book_id}"
    async with aiohttp.ClientSession(headers=bearer(device)) as session:
        call = Checked(session, base_url(device))
        assert (await call("GET", "/v1/openapi.json"))[0] == 200
        assert (await call("GET", "/v1/status"))[0] == 200
        status, page, _ = await call("GET", "/v1/library", "/v1/library?limit=1")
        assert (status, [x["book_id"] for x in page["books"]], page["next_cursor"]) == (
            200,
            [book_id],
            None,
        )
        assert (await call("GET", "/v1/library", "/v1/library?state=in_cloud"))[1]["books"] == []
        assert (await call("GET", "/v1/library", "/v1/library?cursor=nonsense"))[0] == 400
        assert (await call("GET", "/v1/library", "/v1/library?limit=0"))[0] == 400
        assert (await call("GET", "/v1/library/{book_id}", f"/v1/library/{book_id}"))[0] == 200
        assert (await call("GET", "/v1/library/{book_id}", "/v1/library/bk_none"))[0] == 404
        status, book, _ = await call("GET", "/v1/books/{book_id}", b)
        assert (await call("GET", "/v1/books/{book_id}", "/v1/books/bk_none"))[0] == 404
        assert (await call("GET", "/v1/books/{book_id}", "/v1/books/bad%20id"))[0] == 400
        assert (await call("GET", "/v1/books/{book_id}/toc", b + "/toc"))[1]["toc"] == book["toc"]

        resource = "/v1/books/{book_id}/resources/{path}"
        chapter = max(book["resources"], key=lambda r: r["size"] * ("html" in r["media_type"]))
        url = f"{b}/resources/{chapter['path']}"
        status, whole, answer = await call("GET", resource, url)
        assert (status, answer.content_type, len(whole)) == (
            200,
            chapter["media_type"],
            chapter["size"],
        )
        etag = answer.headers["ETag"]
        assert "script-src" not in answer.headers["Content-Security-Policy"]  # none at all
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["Cache-Control"] == "private, no-cache"
        status, part, answer = await call("GET", resource, url, Range="bytes=100-1099")
        assert (status, part) == (206, whole[100:1100])
        assert answer.headers["Content-Range"] == f"bytes 100-1099/{len(whole)}"
        assert (await call("GET", resource, url, Range="bytes=-10"))[1] == whole[-10:]
        status, _, answer = await call("GET", resource, url, Range=f"bytes={len(whole)}-")
        assert (status, answer.headers["Content-Range"]) == (416, f"bytes */{len(whole)}")
        assert (await call("GET", resource, url, If_None_Match=etag))[0] == 304
        assert (await call("GET", resource, url, If_None_Match='"other"'))[0] == 200
        assert (await call("GET", resource, f"{b}/resources/no/such.xhtml"))[0] == 404

        notes = "/v1/books/{book_id}/annotations"
        anchor = {"resource": chapter["path"], "start": 0, "end": 4, "quote": {"exact": "Time"}}
        new = {"id": "an_openapi01", "kind": "highlight", "anchor": anchor, "color": "yellow"}
        assert (await call("POST", notes, f"{b}/annotations", new))[0] == 201
        assert (await call("POST", notes, f"{b}/annotations", new))[0] == 200
        assert (await call("POST", notes, f"{b}/annotations", {**new, "color": "blue"}))[0] == 409
        assert (await call("POST", notes, "/v1/books/bk_none/annotations", new))[0] == 404
        assert (await call("POST", notes, f"{b}/annotations", {"kind": 1}))[0] == 400
        assert len((await call("GET", notes, f"{b}/annotations"))[1]["annotations"]) == 1
        one = "/v1/annotations/{item_id}"
        assert (await call("GET", one, "/v1/annotations/an_openapi01"))[0] == 200
        edit = {"note": "a note"}
        assert (await call("PATCH", one, "/v1/annotations/an_openapi01", edit))[0] == 200
        unknown = {"replaces": ["001764000000000-000003-dev_elsewhere"]}
        assert (await call("PATCH", one, "/v1/annotations/an_openapi01", unknown))[0] == 409
        assert (await call("DELETE", one, "/v1/annotations/an_openapi01"))[0] == 200
        assert (await call("GET", one, "/v1/annotations/an_openapi01"))[0] == 410
        assert (await call("GET", one, "/v1/annotations/an_never0001"))[0] == 404
        assert (await call("POST", "/v1/annotations/sync"))[0] == 202

        place = {"resource": chapter["path"], "start": 10, "progress": 0.1}
        position = "/v1/books/{book_id}/position"
        assert (await call("PUT", position, f"{b}/position", place))[0] == 200
        assert (await call("PUT", position, "/v1/books/bk_none/position", place))[0] == 404
        here = (await call("GET", position, f"{b}/position"))[1]["here"]
        assert here["position"] == place
        popular = "/v1/books/{book_id}/popular-highlights"
        assert (await call("GET", popular, f"{b}/popular-highlights"))[0] == 200

        pin = "/v1/books/{book_id}/pin"
        assert (await call("POST", pin, f"{b}/pin", {"pinned": True}))[0] == 200
        assert (await call("POST", pin, f"{b}/pin", {"pinned": "yes"}))[0] == 400
        assert (await call("POST", pin, "/v1/books/bk_none/pin", {"pinned": True}))[0] == 404
        opened = "/v1/books/{book_id}/opened"
        assert (await call("POST", opened, f"{b}/opened"))[0] == 200
        download = "/v1/books/{book_id}/download"
        assert (await call("POST", download, f"{b}/download"))[0] == 202
        assert (await call("GET", "/v1/trip"))[0] == 404
        assert (await call("POST", "/v1/trip", body={"days": 3}))[0] == 202
        assert (await call("POST", "/v1/trip", body={"days": 0}))[0] == 400
        assert (await call("GET", "/v1/trip"))[0] == 200
        assert (await call("GET", "/v1/notices"))[0] == 200
        assert (await call("TRACE", "/v1/trip"))[0] == 405
        assert (await call("POST", "/v1/login-links"))[0] == 403  # the socket's only

        assert (await call("GET", "/"))[0] == 303
        assert (await call("GET", "/app/{name}", "/app/"))[0] == 200
        assert (await call("GET", "/app/{name}", "/app/app.js"))[0] == 200
        assert (await call("GET", "/app/{name}", "/app/app.css"))[0] == 200
        assert (await call("GET", "/app/{name}", "/app/nope.js"))[0] == 404
        assert (await call("GET", "/login", "/login?code=wrong"))[0] == 401
    async with aiohttp.ClientSession() as session:
        call = Checked(session, base_url(device))
        assert (await call("GET", "/v1/status"))[0] == 401
        link = await device.api.post_json("/v1/login-links")  # on the socket
        LOCAL_API.check_answer(
            "POST", "/v1/login-links", 201, "application/json", json.dumps(link).encode()
        )
        status, _, answer = await call("GET", "/login", link["url"].split(base_url(device))[1])
        assert (status, answer.headers["Location"]) == (303, "/app/")


async def test_schemathesis_finds_no_5xx_and_no_unauthenticated_2xx(
    device: Device, stub_corpus_import: StubImport, tmp_path: Path
) -> None:
    book_id = stub_corpus_import.book_ids[BOOK]
    await device.account.buy(book_id)
    await device.wait_complete(book_id)
    har = tmp_path / "fuzz.har"
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        str(REPO / "daemon" / "api" / "openapi.json"),
        f"--url={base_url(device)}",
        f"--header=Authorization: {bearer(device)['Authorization']}",
        f"--max-examples={EXAMPLES_PER_ROUTE}",
        "--seed=14",
        "--workers=1",
        "--phases=examples,coverage,fuzzing",
        "--checks=not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance,ignored_auth,"
        "unsupported_method",
        "--suppress-health-check=all",
        "--request-timeout=20",
        "--report=har",
        f"--report-har-path={har}",
        "--output-truncate=false",
    ]
    fuzz = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        cwd=tmp_path,  # its cache of found failures stays out of the checkout
    )
    output, _ = await fuzz.communicate()
    text = output.decode(errors="replace")
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = [e["response"]["status"] for e in entries]
    unauthenticated_2xx = [
        e["request"]["url"]
        for e in entries
        if 200 <= e["response"]["status"] < 300
        and not any(
            h["name"].lower() in ("authorization", "cookie") for h in e["request"]["headers"]
        )
    ]
    print(f"schemathesis: {len(entries)} requests, {sum(s >= 500 for s in statuses)} 5xx")
    assert fuzz.returncode == 0, text[-6000:]
    assert len(entries) > 10 * len(LOCAL_API.operations())
    assert [s for s in statuses if s >= 500] == []
    assert unauthenticated_2xx == []
