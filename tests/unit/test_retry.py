"""The one retry helper: errors classified once, Retry-After honoured within its bound, a
refusal not retried on a timer, and the service's return cutting every pending wait short."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.backoff import Backoff
from daemon.errors import (
    DiskFullError,
    FrameHashError,
    ProtocolError,
    ServiceHTTPError,
    SignatureError,
    StalledError,
    TransportError,
    UnreachableError,
    retryable,
)
from daemon.retry import (
    REFUSED_RECHECK_S,
    RETRY_AFTER_CAP_S,
    Comeback,
    Retry,
    decide,
    retry_after_s,
)
from tests.fake_clock import FakeClock, settle

BACKOFF = Backoff(base_s=1.0, cap_s=300.0)
NOW = 1_764_000_000.0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (StalledError("timed out"), True),
        (TransportError("reset by peer"), True),
        (ServiceHTTPError(500, "/x"), True),
        (ServiceHTTPError(503, "/x"), True),
        (ServiceHTTPError(429, "/x"), True),
        (ServiceHTTPError(408, "/x"), True),
        (ProtocolError("not JSON"), True),
        (FrameHashError("frame 3", "bk", 1, 3), True),
        (SignatureError("another key"), True),
        (DiskFullError("full"), True),
        (ConnectionResetError(), True),
        (ServiceHTTPError(401, "/x"), False),
        (ServiceHTTPError(403, "/x"), False),
        (ServiceHTTPError(404, "/v1/books/bk/manifest"), True),
        (ServiceHTTPError(410, "/x"), False),
        (ServiceHTTPError(400, "/x"), False),
        (ValueError("a bug"), False),
    ],
    ids=repr,
)
def test_each_error_is_classified_once(error: BaseException, expected: bool) -> None:
    assert retryable(error) is expected


def test_a_refusal_waits_for_a_new_ask_not_for_the_backoff() -> None:
    decision = decide(ServiceHTTPError(401, "/v1/library/changes"), 1, BACKOFF, NOW)
    assert not decision.retryable
    assert decision.refused
    assert decision.delay_s == REFUSED_RECHECK_S


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_is_honoured(status: int) -> None:
    error = ServiceHTTPError(status, "/x", retry_after="20")
    decision = decide(error, 1, BACKOFF, NOW, random.Random(1))
    assert decision.delay_s >= 20
    assert decision.hold_s == 20


def test_retry_after_as_a_date_is_honoured() -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 45, UTC), usegmt=True)
    assert retry_after_s(ServiceHTTPError(503, "/x", retry_after=when), NOW) == 45


@given(st.text(max_size=40))
def test_any_retry_after_is_bounded(header: str) -> None:
    asked = retry_after_s(ServiceHTTPError(503, "/x", retry_after=header), NOW)
    assert asked is None or 0 <= asked <= RETRY_AFTER_CAP_S


@pytest.mark.parametrize("header", ["¹", "٣", "-5", "1e9", "soon", "Wed, 99 Foo 2026"])
def test_a_retry_after_that_is_not_seconds_nor_a_date_is_ignored(header: str) -> None:
    assert retry_after_s(ServiceHTTPError(503, "/x", retry_after=header), NOW) is None


def test_retry_after_on_other_statuses_is_not_read() -> None:
    assert retry_after_s(ServiceHTTPError(500, "/x", retry_after="20"), NOW) is None


async def test_the_service_coming_back_cuts_a_pending_wait_short() -> None:
    clock = FakeClock()
    comeback = Comeback()
    retry = Retry("test", clock, BACKOFF, comeback)
    decision = retry.failed(TransportError("down"))

    async def window(not_before: float, latest: float) -> None:
        await clock.sleep(not_before - clock.monotonic())

    waiting = asyncio.create_task(retry.wait(decision, window))
    await settle()
    assert not waiting.done()
    comeback.announce()
    await settle()
    assert waiting.done()
    await waiting


async def test_the_service_coming_back_does_not_cut_its_retry_after() -> None:
    clock = FakeClock()
    comeback = Comeback()
    retry = Retry("test", clock, BACKOFF, comeback)
    decision = retry.failed(ServiceHTTPError(503, "/x", retry_after="20"))

    async def window(not_before: float, latest: float) -> None:
        await clock.sleep(not_before - clock.monotonic())

    waiting = asyncio.create_task(retry.wait(decision, window))
    comeback.announce()
    await clock.advance(19)
    assert not waiting.done()
    await clock.advance(1)
    assert waiting.done()
    await waiting


def test_a_success_clears_what_status_reports() -> None:
    retry = Retry("test", FakeClock(), BACKOFF)
    retry.failed(ServiceHTTPError(403, "/x", "device revoked"))
    report = retry.report()
    assert report is not None
    assert "refused this device" in report["doing"]
    retry.succeeded()
    assert retry.report() is None


async def test_a_retry_that_could_not_connect_waits_for_the_link_not_its_backoff() -> None:
    clock = FakeClock()
    comeback = Comeback(link_down_wait_s=3600.0)
    retry = Retry("test", clock, BACKOFF, comeback)
    decision = retry.failed(UnreachableError("GET /x: ClientConnectorError: refused"))
    assert decision.unreachable
    assert decision.delay_s >= 3600.0
    assert comeback.link_down
    report = retry.report()
    assert report is not None
    assert report["doing"] == "waiting for the network to come back"

    async def window(not_before: float, latest: float) -> None:
        await clock.sleep(not_before - clock.monotonic())

    waiting = asyncio.create_task(retry.wait(decision, window))
    await clock.advance(BACKOFF.cap_s)  # past any backoff: still waiting for the link
    assert not waiting.done()
    comeback.announce()  # the system: "the network is back"
    await settle()
    assert waiting.done()
    await waiting
    assert not comeback.link_down


async def test_any_exchange_that_succeeds_after_the_link_was_lost_ends_every_wait() -> None:
    clock = FakeClock()
    comeback = Comeback(link_down_wait_s=3600.0)
    waiting_one, probing = (Retry(w, clock, BACKOFF, comeback) for w in ("waits", "probes"))
    decision = waiting_one.failed(UnreachableError("refused"))

    async def window(not_before: float, latest: float) -> None:
        await clock.sleep(not_before - clock.monotonic())

    waiting = asyncio.create_task(waiting_one.wait(decision, window))
    await settle()
    probing.succeeded()  # the push channel's probe got through
    await settle()
    assert waiting.done()
    await waiting


def test_a_link_that_answered_badly_is_not_down() -> None:
    comeback = Comeback(link_down_wait_s=3600.0)
    decision = Retry("test", FakeClock(), BACKOFF, comeback).failed(TransportError("reset"))
    assert not decision.unreachable
    assert decision.delay_s <= BACKOFF.cap_s
    assert not comeback.link_down
