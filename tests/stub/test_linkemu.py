"""The link emulator: rate, latency, loss, outages, faults and bounded memory, on loopback.

Timing checks use generous bands: they check the shaper's behaviour, not this machine's speed.
A lower bound is the link's own (no machine delivers sooner than the shaper allows). An upper
bound adds this machine's own slowness, measured in the same test (an unshaped emulator's round
trip, or how far a four times faster link overran its ideal), so a slow machine (qemu-user in
`make arm-check`, a loaded CI runner) widens the band by what it costs itself.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Self

import pytest

from daemon.profile import LinkProfile, Outage
from devkit.linkemu import (
    LISTENING,
    MAX_PIECE,
    LinkEmulator,
    down_seconds,
    main,
    resend_time,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

FLAT = LinkProfile(
    down_kbps=10_000,
    up_kbps=10_000,
    rtt_ms=0,
    jitter_ms=0,
    loss_pct=0.0,
    outage=None,
    outage_timeline=(),
)
UNSHAPED = replace(FLAT, down_kbps=10_000_000, up_kbps=10_000_000)  # 10 Gbit/s: the baseline


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


class Upstream:
    """A loopback server for the emulator to relay to; its connection tasks end with it."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.resets = 0
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.create_task(self._run(reader, writer))
        self._tasks.add(task)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handler(reader, writer)
        except ConnectionResetError:
            self.resets += 1
        finally:
            writer.close()


async def read_to_end(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    start = time.monotonic()
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    return time.monotonic() - start


async def transfer(link: LinkProfile, down: bytes, up: bytes) -> tuple[float, float]:
    """Both ways at once through `link`: seconds until each direction's last byte arrived."""
    received_up = bytearray()
    up_done = 0.0

    async def source_and_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal up_done

        async def receive() -> None:
            nonlocal up_done
            received_up.extend(await reader.readexactly(len(up)))
            up_done = time.monotonic()

        writer.write(down)
        await asyncio.gather(writer.drain(), receive())

    async with (
        Upstream(source_and_sink) as upstream,
        LinkEmulator(link, ("127.0.0.1", upstream.port)) as emulator,
    ):
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        writer.write(up)
        received_down = await reader.readexactly(len(down))
        down_s = time.monotonic() - start
        while not up_done:
            await asyncio.sleep(0.01)
        up_s = up_done - start
        writer.close()

    assert received_down == down  # in order, nothing lost
    assert received_up == up
    assert (emulator.stats.bytes_down, emulator.stats.bytes_up) == (len(down), len(up))
    return down_s, up_s


async def test_a_1_mbit_link_delivers_about_1_mbit_per_second_each_way() -> None:
    down = random.Random(1).randbytes(200_000)  # 1.6 s at 1 Mbit/s
    up = random.Random(2).randbytes(100_000)  # 1.6 s at 500 kbit/s
    # The baseline: the same bytes, in as many paced pieces, over a link four times as fast;
    # what it takes beyond its 0.4 s is this machine's lateness at waking the shaper.
    fast_down, fast_up = await transfer(replace(FLAT, down_kbps=4000, up_kbps=2000), down, up)
    late_down, late_up = max(0.0, fast_down - 0.4), max(0.0, fast_up - 0.4)
    down_s, up_s = await transfer(replace(FLAT, down_kbps=1000, up_kbps=500), down, up)
    assert 0.6 * 1.6 <= down_s <= 1.15 * 1.6 + late_down, (down_s, fast_down)
    assert 0.6 * 1.6 <= up_s <= 1.15 * 1.6 + late_up, (up_s, fast_up)


async def unshaped_round_trip() -> float:
    """A connection's first round trip through an unshaped emulator: this machine's own cost."""
    async with (
        Upstream(echo) as upstream,
        LinkEmulator(UNSHAPED, ("127.0.0.1", upstream.port)) as emulator,
    ):
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        await round_trip(reader, writer)
        writer.close()
        return time.monotonic() - start


async def test_a_round_trip_takes_the_links_rtt_and_setup_takes_one_more() -> None:
    link = replace(FLAT, rtt_ms=100, jitter_ms=20)
    base = await unshaped_round_trip()
    async with (
        Upstream(echo) as upstream,
        LinkEmulator(link, ("127.0.0.1", upstream.port), seed=1) as emulator,
    ):
        start = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        await round_trip(reader, writer)
        first = time.monotonic() - start
        trips = [await round_trip(reader, writer) for _ in range(3)]
        # Jittered pieces still arrive in order.
        data = random.Random(3).randbytes(100_000)
        writer.write(data)
        assert await reader.readexactly(len(data)) == data
        writer.close()

    assert 0.2 <= first <= 0.24 + 0.15 + base, (first, base)  # the SYN's round trip, the request's
    assert all(0.1 <= t <= 0.12 + 0.1 + base for t in trips), (trips, base)


async def test_loss_arrives_as_retransmission_delay() -> None:
    link = replace(FLAT, loss_pct=99.0)  # rtt 0: the RTO is its 200 ms floor
    base = await unshaped_round_trip()
    async with (
        Upstream(echo) as upstream,
        LinkEmulator(link, ("127.0.0.1", upstream.port), seed=1) as emulator,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        trip = await round_trip(reader, writer)
        writer.close()
    assert 0.4 <= trip <= 0.4 + 0.15 + base, (trip, base)  # lost each way, resent after an RTO


async def test_an_outage_stalls_open_connections_and_holds_new_ones_then_both_resume() -> None:
    link = replace(FLAT, outage_timeline=((0.2, 0.5),))
    base = await unshaped_round_trip()
    async with (
        Upstream(echo) as upstream,
        LinkEmulator(link, ("127.0.0.1", upstream.port)) as emulator,
    ):

        def now() -> float:
            return emulator.link_time(time.time())

        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        assert await round_trip(reader, writer) < 0.1
        await asyncio.sleep(0.25 - now())
        # Sent into the outage: lost, resent after 200 ms and 400 ms more, through at ~0.85 s.
        answered = asyncio.create_task(round_trip(reader, writer))
        await asyncio.sleep(0.3 - now())
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        await asyncio.sleep(0.45 - now())
        assert not answered.done()  # silent...
        assert upstream.accepted == 1  # ...and the new connection not forwarded
        await answered
        assert 0.5 <= now() <= 1.0 + base, base
        # The new connection's SYN is resent 1 s after it was lost: connected at ~1.3 s.
        await round_trip(late_reader, late_writer)
        assert 1.2 <= now() <= 1.6 + 2 * base, base
        assert upstream.accepted == 2
        writer.close()
        late_writer.close()


async def test_after_an_outage_the_lost_bytes_come_back_at_the_links_rate() -> None:
    link = replace(FLAT, down_kbps=20_000, rtt_ms=100, outage_timeline=((0.2, 0.5),))
    payload = random.Random(4).randbytes(1_250_000)  # 0.5 s at 20 Mbit/s
    base, _ = await transfer(UNSHAPED, payload, b"")

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    async with (
        Upstream(source) as upstream,
        LinkEmulator(link, ("127.0.0.1", upstream.port)) as emulator,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        assert await reader.readexactly(len(payload)) == payload
        done = emulator.link_time(time.time())
        writer.close()
    # Lost from ~0.2 s, resent at 0.4 s (still down) and 0.8 s; the ~0.75 MB sent into the
    # outage then crosses again back to back in ~0.3 s: done at ~1.15 s. A round trip per lost
    # piece instead would take over a second more.
    assert 1.0 <= done <= 1.5 + base, (done, base)


async def test_reset_sends_an_rst_to_both_sides() -> None:
    async with (
        Upstream(echo) as upstream,
        LinkEmulator(FLAT, ("127.0.0.1", upstream.port)) as emulator,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        await round_trip(reader, writer)
        assert emulator.reset() == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(1), 2)
        writer.close()
        for _ in range(100):
            if upstream.resets:
                break
            await asyncio.sleep(0.01)
        assert upstream.resets == 1
        # The link itself still works.
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        await round_trip(reader, writer)
        writer.close()
    assert emulator.stats.resets == 1


async def test_stall_holds_bytes_and_new_connections_until_resumed() -> None:
    async with (
        Upstream(echo) as upstream,
        LinkEmulator(FLAT, ("127.0.0.1", upstream.port)) as emulator,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        await round_trip(reader, writer)
        emulator.stall()
        answered = asyncio.create_task(round_trip(reader, writer))
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        await asyncio.sleep(0.3)
        assert not answered.done()
        assert upstream.accepted == 1
        emulator.resume()
        await asyncio.wait_for(answered, 1)
        await asyncio.wait_for(round_trip(late_reader, late_writer), 1)
        writer.close()
        late_writer.close()


async def test_a_reader_that_does_not_read_pushes_back_on_the_sender() -> None:
    total = 32 * 1024 * 1024
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        block = bytes(1024 * 1024)
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    link = replace(FLAT, down_kbps=1_000_000)
    async with (
        Upstream(flood) as upstream,
        LinkEmulator(link, ("127.0.0.1", upstream.port)) as emulator,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", emulator.port)
        await asyncio.sleep(0.5)
        assert sent < total  # the flood is held back, by the emulator's full queue
        assert emulator.buffered_bytes <= emulator.queue_bytes["down"] + MAX_PIECE
        received = 0
        while chunk := await reader.read(1024 * 1024):
            received += len(chunk)
            if received == total:
                break
        assert received == total
        writer.close()


async def test_close_resets_open_connections_and_ends_every_task() -> None:
    link = replace(FLAT, down_kbps=100)
    payload = bytes(1_000_000)  # 80 s at this rate: still going when the emulator closes

    async def slow_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    async with Upstream(slow_source) as upstream:
        emulator = LinkEmulator(link, ("127.0.0.1", upstream.port))
        async with emulator:
            streams = [await asyncio.open_connection("127.0.0.1", emulator.port) for _ in range(2)]
            await asyncio.sleep(0.2)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("link ")]
        for reader, writer in streams:
            with pytest.raises(ConnectionResetError):
                await read_to_end(reader)
            writer.close()


def test_resends_back_off_until_the_link_is_back_and_give_up_after_15() -> None:
    periodic = replace(FLAT, outage=Outage(down_s=30, every_s=60))
    # Lost at 45 s: resent at 45.5, 46.5, 48.5, 52.5 (all down), 60.5 (up).
    assert resend_time(periodic, 45.0, 0.5, 15) == pytest.approx(60.5)
    assert resend_time(periodic, 10.0, 0.5, 15) == pytest.approx(10.5)
    endless = replace(FLAT, outage_timeline=((0.0, 1e6),))
    assert resend_time(endless, 1.0, 0.5, 15) is None
    assert down_seconds(periodic, 0, 120) == pytest.approx(60, abs=0.05)
    assert down_seconds(periodic, 40, 50) == pytest.approx(10, abs=0.05)


async def test_the_command_relays_and_resets_on_sigusr1() -> None:
    async with Upstream(echo) as upstream:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "devkit.linkemu",
            "--profile",
            "emulator-loopback",
            "--upstream",
            f"127.0.0.1:{upstream.port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
            assert line.startswith(f"{LISTENING} 127.0.0.1:"), line
            port = int(line.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await round_trip(reader, writer)
            proc.send_signal(signal.SIGUSR1)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), 5)
            writer.close()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_the_command_says_what_is_wrong_with_its_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--profile", "paperwhite-wifi", "--upstream", "localhost"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert main(["--profile", "no-such-device", "--upstream", "127.0.0.1:1"]) == 2
    assert "shipped profiles" in capsys.readouterr().err
