"""A hostile service answering package range requests (FAULTS.md #8, #9, #11, #12, #13, #23),
Mender's HTTP resumer table among them. A stand-in service on loopback answers each request
the way the scenario says; the device's client must refuse it with a typed, transient error
(delivery then backs off and resumes from its last verified frame), never hand over bytes of
another range, and read no more than it asked for. Each scenario is followed by an honest
answer that the same client takes.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from daemon.client import ClientLimits, DeviceCredentials, ServiceClient
from daemon.errors import ProtocolError, RangeError, StalledError, TransportError
from tests.reliability import Figures

PACKAGE = random.Random(13).randbytes(256 * 1024)
START, END = 1000, 40_999  # the range asked for, inclusive
LIMITS = ClientLimits(connect_timeout_s=2, stall_timeout_s=0.5, min_rate_bytes_per_s=8192)
PATH = "/v1/books/bk_pkg/versions/1/package"

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def honest(request: web.Request) -> web.StreamResponse:
    first, last = START, END
    return web.Response(
        status=206,
        body=PACKAGE[first : last + 1],
        headers={"Content-Range": f"bytes {first}-{last}/{len(PACKAGE)}"},
    )


def partial(first: int, last: int, total: int, body: bytes) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=206, body=body, headers={"Content-Range": f"bytes {first}-{last}/{total}"}
        )

    return answer


async def not_bytes(request: web.Request) -> web.StreamResponse:
    return web.Response(
        status=206, body=PACKAGE[START : END + 1], headers={"Content-Range": "items 1-2/3"}
    )


async def range_ignored(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200, body=PACKAGE)


async def gzip_forced(request: web.Request) -> web.StreamResponse:
    return web.Response(
        status=206,
        body=gzip.compress(PACKAGE[START : END + 1]),
        headers={
            "Content-Range": f"bytes {START}-{END}/{len(PACKAGE)}",
            "Content-Encoding": "gzip",
        },
    )


async def _headers_then(request: web.Request, body: Callable[[web.StreamResponse], Any]) -> Any:
    response = web.StreamResponse(
        status=206, headers={"Content-Range": f"bytes {START}-{END}/{len(PACKAGE)}"}
    )
    response.content_length = END - START + 1
    await response.prepare(request)
    await body(response)
    return response


async def silence_after_headers(request: web.Request) -> web.StreamResponse:
    async def nothing(response: web.StreamResponse) -> None:
        await asyncio.sleep(30)  # cancelled when the client gives up (handler_cancellation)

    result: web.StreamResponse = await _headers_then(request, nothing)
    return result


async def drip(request: web.Request) -> web.StreamResponse:
    async def one_byte_at_a_time(response: web.StreamResponse) -> None:
        for byte in PACKAGE[START : END + 1]:
            await response.write(bytes([byte]))
            await asyncio.sleep(0.05)

    result: web.StreamResponse = await _headers_then(request, one_byte_at_a_time)
    return result


async def reset_mid_body(request: web.Request) -> web.StreamResponse:
    async def cut(response: web.StreamResponse) -> None:
        await response.write(PACKAGE[START : START + 5000])
        await response.drain()
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()  # SO_LINGER 0: an RST, not a FIN

    result: web.StreamResponse = await _headers_then(request, cut)
    return result


async def endless(request: web.Request) -> web.StreamResponse:
    async def forever(response: web.StreamResponse) -> None:
        await response.write(PACKAGE[START : END + 1])
        while True:
            await response.write(bytes(64 * 1024))

    response = web.StreamResponse(
        status=206, headers={"Content-Range": f"bytes {START}-{END}/{len(PACKAGE)}"}
    )
    await response.prepare(request)  # chunked: no length, and no end
    await forever(response)
    return response


WRONG_START = PACKAGE[START + 512 : END + 513]
# Mender's resumer table, and the rest of what a hostile service can answer to a range request.
SCENARIOS: dict[str, tuple[int, Answer, type[Exception]]] = {
    "Range ignored (200, the whole)": (13, range_ignored, RangeError),
    "Content-Range starts elsewhere": (
        13,
        partial(START + 512, END + 512, len(PACKAGE), WRONG_START),
        RangeError,
    ),
    "Content-Range ends elsewhere": (
        13,
        partial(START, END - 512, len(PACKAGE), PACKAGE[START : END - 511]),
        RangeError,
    ),
    "Content-Range of a package of another size": (
        13,
        partial(START, END, len(PACKAGE) + 1, PACKAGE[START : END + 1]),
        RangeError,
    ),
    "Content-Range not in bytes": (13, not_bytes, RangeError),
    "body shorter than declared": (
        13,
        partial(START, END, len(PACKAGE), PACKAGE[:10]),
        TransportError,
    ),
    "gzip forced": (23, gzip_forced, ProtocolError),
    "headers, then silence": (8, silence_after_headers, StalledError),
    "a drip of 20 B/s": (11, drip, StalledError),
    "reset mid-body": (9, reset_mid_body, TransportError),
}


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[list[Answer], ServiceClient]]:
    answers: list[Answer] = []

    async def package(request: web.Request) -> web.StreamResponse:
        return await answers[-1](request)

    app = web.Application()
    app.router.add_get(PATH, package)
    runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = ServiceClient(f"http://127.0.0.1:{port}", DeviceCredentials("dev_x", "token"), LIMITS)
    try:
        yield answers, client
    finally:
        await client.close()
        await runner.cleanup()


async def fetch(client: ServiceClient) -> bytes:
    async with client.package("bk_pkg", 1, START, END, len(PACKAGE)) as body:
        return await body.read_exactly(END - START + 1)


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(name, marks=pytest.mark.faults(row), id=name)
        for name, (row, _, _) in SCENARIOS.items()
    ],
)
async def test_a_hostile_range_answer_is_refused_typed_then_an_honest_one_is_taken(
    stand_in: tuple[list[Answer], ServiceClient], scenario: str, fault_figures: Figures
) -> None:
    answers, client = stand_in
    _, answer, error = SCENARIOS[scenario]
    answers.append(answer)
    with pytest.raises(error):
        await fetch(client)
    answers.append(honest)
    assert await fetch(client) == PACKAGE[START : END + 1]
    fault_figures.record(runs=1, wrong_resources=0)


@pytest.mark.faults(12)
async def test_an_endless_body_is_read_no_further_than_the_range(
    stand_in: tuple[list[Answer], ServiceClient], fault_figures: Figures
) -> None:
    answers, client = stand_in
    answers.append(endless)
    assert await fetch(client) == PACKAGE[START : END + 1]  # and the connection is dropped
    answers.append(honest)
    assert await fetch(client) == PACKAGE[START : END + 1]
    fault_figures.record(runs=1, wrong_resources=0)
