"""Connectivity against the fake service and a fake clock: the channel's hello makes the device
online and asks for a pull; a lost channel is reconnected after its backoff, polling meanwhile;
a busy service's Retry-After is honoured; a refusal (401) is not retried on the poll's cadence
but reported; a stop is clean."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from daemon.backoff import Backoff
from daemon.errors import NoRouteError, ServiceHTTPError, StalledError, TransportError
from daemon.radio.connectivity import SERVICE_DOWN_RECONNECT_S, Connectivity
from tests.fake_clock import FakeClock, settle
from tests.fakes.service import FakeService
from tests.unit.workers import radio, running

BACKOFF = Backoff(base_s=1.0, cap_s=600.0)
KEEPALIVE_S = 120.0
POLL_S = 30.0


@dataclass
class World:
    clock: FakeClock
    service: FakeService
    link: Connectivity
    syncs: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    clock = FakeClock()
    service = FakeService(clock)
    async with radio(clock) as windows:
        world = World(clock, service, None)  # type: ignore[arg-type]
        world.link = Connectivity(
            service,
            clock,
            windows,
            lambda: world.syncs.append(clock.monotonic()),
            keepalive_s=KEEPALIVE_S,
            poll_interval_s=POLL_S,
            backoff=BACKOFF,
            on_event=world.events.append,
        )
        async with running(world.link.run()):
            yield world


async def test_the_hello_makes_the_device_online_and_a_push_asks_for_a_pull(world: World) -> None:
    await settle()
    assert world.link.online
    assert world.events[:2] == ["online", "hello"]
    world.service.push({"type": "library_changed"})
    await settle()
    assert len(world.syncs) == 2  # the hello's, and the push's


async def test_the_keep_alive_pings_within_its_period(world: World) -> None:
    await world.clock.advance(KEEPALIVE_S * 3)
    pings = world.service.times_of("ping")
    assert len(pings) >= 3
    assert all(b - a <= KEEPALIVE_S for a, b in itertools.pairwise(pings))


async def test_a_lost_channel_is_reconnected_after_its_backoff_polling_meanwhile(
    world: World,
) -> None:
    await settle()
    world.service.fail("push_channel", StalledError("no answer"), times=3)
    world.service.drop_channel()
    await settle()
    assert not world.link.online
    await world.clock.advance(POLL_S * 4)
    tries = world.service.times_of("push_channel")
    assert len(tries) == 5  # the first, three that failed, the one that worked
    assert all(b - a <= POLL_S for a, b in itertools.pairwise(tries[1:]))
    assert world.link.online
    assert "poll" in world.events


async def test_retry_after_of_a_busy_service_is_honoured(world: World) -> None:
    await settle()
    world.service.fail("push_channel", ServiceHTTPError(503, "/v1/push", retry_after="90"))
    world.service.drop_channel()
    await world.clock.advance(89)
    assert len(world.service.times_of("push_channel")) == 2
    await world.clock.advance(POLL_S + 2)
    assert len(world.service.times_of("push_channel")) == 3
    assert world.link.online


async def test_a_refused_device_is_not_retried_on_the_polls_cadence(world: World) -> None:
    await settle()
    world.service.fail("push_channel", ServiceHTTPError(401, "/v1/push"), None)
    world.service.drop_channel()
    await world.clock.advance(30 * 60)
    assert len(world.service.times_of("push_channel")) == 2
    report = world.link.retry.report()
    assert report is not None
    assert "refused this device" in report["doing"]


async def _reconnect_gaps(error: Exception, outage_s: float) -> list[float]:
    """The gaps between push channel tries through an outage that fails each with `error`,
    on a profile that polls every half hour."""
    clock = FakeClock()
    service = FakeService(clock)
    async with radio(clock) as windows:
        link = Connectivity(
            service,
            clock,
            windows,
            lambda: None,
            keepalive_s=KEEPALIVE_S,
            poll_interval_s=1800.0,
            backoff=BACKOFF,
        )
        async with running(link.run()):
            await settle()
            service.fail("push_channel", error, None)
            service.drop_channel()
            await clock.advance(outage_s)
    tries = service.times_of("push_channel")[1:]
    return [b - a for a, b in itertools.pairwise(tries)]


async def test_a_service_that_is_down_is_tried_again_within_the_promise_however_long() -> None:
    # Refused, or reset by a proxy: the network answers, the service is not there (an outage).
    gaps = await _reconnect_gaps(TransportError("push channel: connection refused"), 3600.0)
    assert len(gaps) > 60
    assert max(gaps) <= SERVICE_DOWN_RECONNECT_S + 1e-6  # the fake clock adds in floats


async def test_without_a_network_the_reconnects_back_off_to_the_poll_interval() -> None:
    # A connect that times out: no network, and a radio that would search in vain.
    gaps = await _reconnect_gaps(StalledError("push channel: timed out"), 3600.0)
    assert max(gaps) > SERVICE_DOWN_RECONNECT_S * 5


async def test_with_no_route_at_all_the_reconnects_back_off_to_the_poll_interval() -> None:
    # ENETUNREACH, no name lookup: the radio is off; a dial every 40 s might bring it up.
    gaps = await _reconnect_gaps(NoRouteError("push channel: Network is unreachable"), 3600.0)
    assert max(gaps) > SERVICE_DOWN_RECONNECT_S * 5
