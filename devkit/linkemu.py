"""The link emulator: a userspace TCP proxy on loopback that gives its connections the link of a
device profile (docs/PROFILES.md), for tests, the demo and the benchmarks.

Kernel traffic shaping (tc netem) is not available on the build machines, so the shaping happens
here, on the bytes the proxy relays between the device (the client) and the service (upstream):

    async with LinkEmulator(load_profile("kindle-keyboard-3g").link, ("127.0.0.1", 8080)) as link:
        service_url = f"http://127.0.0.1:{link.port}"  # what the daemon gets as --service
        link.reset()  # faults on demand: RST every open connection, on both sides
        link.stall()  # ... or hold every byte and every new connection until link.resume()

The model, per direction (down: upstream to client; up: client to upstream):

- Rate: one token bucket per direction, shared by every connection. One emulator is one
  device's radio, so two downloads split the link as they would on the device.
- Latency: bytes arrive rtt/2 plus a random 0..jitter/2 after they cross the bucket, so a request
  and its answer take rtt plus 0..jitter, as the profile defines a round trip. Bytes never
  overtake each other (TCP delivers in order), so under a steady stream the jitter adds up to
  jitter/2 per direction rather than averaging out.
- Connection setup: the proxy's own kernel completes the client's handshake at once, so the
  emulator holds a new connection for one round trip (the SYN and SYN-ACK) before it opens the
  upstream one; the first request then arrives 1.5 round trips after connect(), as on a real link.
- Loss: TCP turns loss into delay before an application sees it, so it is modelled as that
  delay. Each 1448-byte segment is lost with probability loss_pct; a piece holding a lost segment
  arrives one retransmission timeout late (RTO = max(200 ms, 2 x rtt), as docs/PROFILES.md
  defines it), and its lost segments cross the bucket twice.
  Not modelled: the congestion window's cut after each loss. At 1% loss and a 300 ms round trip a
  real TCP gets about half of a 1 Mbit/s link (Mathis et al., 1997), so a lossy emulated link is
  optimistic about throughput; its latency costs are honest.
- Outage (the profile's `outage` or `outage_timeline`, timed from the emulator's start, through
  `LinkProfile.is_down`): bytes that would arrive while the link is down are lost; the sender
  resends after RTO, then waits twice as long each time (at most 120 s), and the first resend
  after the link is back gets through. The lost bytes then cross the bucket again. After 15
  resends (6 for a SYN) the connection is given up and reset, as Linux gives up. A connection
  opened during an outage is held silent: nothing is forwarded and no RST is sent, as with a radio
  out of coverage.

Memory is bounded: each direction of a connection holds at most `queue_bytes` in flight plus one
asyncio stream buffer (64 KiB). When its queue is full, the emulator stops reading that socket, so
TCP flow control pushes back on the sender.

`shelfsync-link` (`main`) runs one from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Literal, Self

from daemon.errors import ShelfsyncError
from daemon.profile import LinkProfile, list_profiles, load_profile
from server_stub.logs import configure, kv

log = logging.getLogger("devkit.linkemu")

Direction = Literal["down", "up"]
Observer = Callable[[Direction, int], None]  # called with each piece delivered: (direction, bytes)
# Called for each piece held back by a lost segment: (direction, when it would have arrived,
# when it does), both time.time().
LossObserver = Callable[[Direction, float, float], None]
Address = tuple[str, int]

HOST = "127.0.0.1"  # the emulator listens on loopback only
LISTENING = "shelfsync-link listening on"
MSS = 1448  # payload bytes per TCP segment: a 1500-byte MTU less IP, TCP and timestamp headers
MIN_RTO_S = 0.2  # Linux's floor on the retransmission timeout
MAX_BACKOFF_S = 120.0  # Linux's ceiling on one backed-off retransmission wait (TCP_RTO_MAX)
SYN_RTO_S = 1.0  # Linux's first SYN retransmission timeout
DATA_RETRIES = 15  # Linux's tcp_retries2: resends of data before a connection is given up
SYN_RETRIES = 6  # Linux's tcp_syn_retries
PIECE_S = 0.01  # a piece carries ~10 ms of the link's rate: smooth shaping, ~100 wakeups a second
MAX_PIECE = 64 * 1024  # bytes: also the stream buffer limit, so one read fills at most a piece
MIN_QUEUE = 64 * 1024  # bytes in flight per direction of a connection, at least...
MAX_QUEUE = 4 * 1024 * 1024  # ...and at most


class GaveUpError(ConnectionError):
    """Every resend fell in an outage: the sender gave the connection up, as TCP does."""


def retransmission_timeout(link: LinkProfile) -> float:
    """The retransmission timeout on this link, in seconds: max(200 ms, 2 x rtt), as
    docs/PROFILES.md defines the cost of a loss (200 ms is Linux's floor on the RTO)."""
    return max(MIN_RTO_S, 2 * link.rtt_s)


def resend_time(link: LinkProfile, lost_at_s: float, rto_s: float, retries: int) -> float | None:
    """When bytes lost at `lost_at_s` (link time) get through: the sender resends after `rto_s`,
    then after waits twice as long each time (at most 120 s), and the first resend sent while
    the link is up arrives. None: all `retries` resends fell in outages, and the sender gives up."""
    t, wait = lost_at_s, rto_s
    for _ in range(retries):
        t += wait
        if not link.is_down(t):
            return t
        wait = min(2 * wait, MAX_BACKOFF_S)
    return None


def down_seconds(link: LinkProfile, start_s: float, end_s: float, step_s: float = 0.01) -> float:
    """Seconds of outage within [start_s, end_s] (link time), to within `step_s` per outage."""
    total, t = 0.0, start_s
    while t < end_s:
        if link.is_down(t):
            up = min(link.next_up(t), end_s)
            total += up - t
            t = up
        else:
            t += step_s
    return total


def describe_link(link: LinkProfile) -> str:
    """The link in one line, e.g. `1 Mbit/s down, 384 kbit/s up, RTT 300-450 ms, loss 1%, ...`."""
    rtt = f"{link.rtt_ms}-{link.rtt_ms + link.jitter_ms}" if link.jitter_ms else f"{link.rtt_ms}"
    parts = [
        f"{_rate(link.down_kbps)} down",
        f"{_rate(link.up_kbps)} up",
        f"RTT {rtt} ms",
        f"loss {link.loss_pct:g}%",
    ]
    if link.outage is not None:
        parts.append(f"down {link.outage.down_s:g} s every {link.outage.every_s:g} s")
    elif link.outage_timeline:
        spans = ", ".join(f"{a:g}-{b:g} s" for a, b in link.outage_timeline)
        parts.append(f"down at {spans}")
    else:
        parts.append("no outage")
    return ", ".join(parts)


def _rate(kbps: int) -> str:
    return f"{kbps / 1000:g} Mbit/s" if kbps >= 1000 else f"{kbps} kbit/s"


class TokenBucket:
    """`rate` bytes per second with up to `burst` bytes saved up.

    A take beyond what is saved goes into debt and waits it out, so concurrent takers are served
    in turn at the rate: the bucket is the link's serialisation, shared by every connection."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def charge(self, n: int) -> float:
        """Take `n` bytes now, into debt if need be; returns the monotonic time they are sent."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        return now + max(0.0, -self._tokens / self.rate)

    async def take(self, n: int) -> None:
        """Wait until `n` bytes are sent."""
        await asyncio.sleep(self.charge(n) - time.monotonic())


class _Way:
    """One direction of the link: its bucket, delays and loss, shared by every connection."""

    def __init__(self, name: Direction, rate: int, link: LinkProfile, rng: random.Random) -> None:
        self.name = name
        self.piece = min(MAX_PIECE, max(MSS, int(rate * PIECE_S)))
        self.bucket = TokenBucket(rate, self.piece)
        self.rto = retransmission_timeout(link)
        # Room for what is in flight over the worst one-way delay plus a loss's RTO, twice over,
        # so the queue never throttles the rate; beyond that, back-pressure.
        in_flight = rate * 2 * (link.worst_rtt_s / 2 + self.rto)
        self.queue_bytes = min(MAX_QUEUE, max(MIN_QUEUE, int(in_flight)))
        self._link = link
        self._rng = rng

    def one_way(self) -> float:
        return (self._link.rtt_ms + self._rng.uniform(0, self._link.jitter_ms)) / 2000

    def lost_segments(self, n: int) -> int:
        p = self._link.loss_pct / 100
        if p == 0:
            return 0
        return sum(self._rng.random() < p for _ in range(math.ceil(n / MSS)))


class _Flight:
    """The pieces of one direction of one connection between the bucket and the far socket."""

    def __init__(self, way: _Way) -> None:
        self._queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(
            max(2, math.ceil(way.queue_bytes / way.piece))
        )
        self.bytes = 0

    async def put(self, item: tuple[float, bytes] | None) -> None:
        await self._queue.put(item)
        if item is not None:
            self.bytes += len(item[1])

    async def get(self) -> tuple[float, bytes] | None:
        return await self._queue.get()


@dataclass
class LinkStats:
    connections: int = 0  # accepted so far
    bytes_down: int = 0  # payload delivered to clients
    bytes_up: int = 0  # payload delivered upstream
    resets: int = 0  # connections reset: by reset(), by a side's RST, or by a sender giving up


class LinkEmulator:
    """A TCP proxy from 127.0.0.1:`port` to `upstream` with the link `link` (module docstring).

    `seed` makes jitter and loss repeatable; `observer` is called with each delivered piece,
    `on_loss` with each piece a lost segment held back."""

    def __init__(
        self,
        link: LinkProfile,
        upstream: Address,
        *,
        port: int = 0,
        seed: int | None = None,
        observer: Observer | None = None,
        on_loss: LossObserver | None = None,
    ) -> None:
        self.link = link
        self.upstream = upstream
        self.port = port
        self.stats = LinkStats()
        self.started_wall = 0.0  # time.time() at start: link time 0
        rng = random.Random(seed)
        self._down = _Way("down", link.down_bytes_per_s, link, rng)
        self._up = _Way("up", link.up_bytes_per_s, link, rng)
        self._observer = observer
        self._on_loss = on_loss
        self._epoch = 0.0  # time.monotonic() at start
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._closing = False
        # Every connection's task, with the sockets to reset; a task drops out when it ends.
        self._connections: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}
        self._flights: set[_Flight] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.port, limit=MAX_PIECE)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._epoch = time.monotonic()
        self.started_wall = time.time()
        log.info(
            kv(
                "link_started",
                port=self.port,
                upstream=self.upstream,
                link=describe_link(self.link),
            )
        )

    async def close(self) -> None:
        """Stop listening and reset every open connection; returns once all their tasks ended."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, for an HTTP upstream."""
        return f"http://{HOST}:{self.port}"

    @property
    def buffered_bytes(self) -> int:
        """Bytes the emulator holds in flight now, over all connections and both directions."""
        return sum(f.bytes for f in self._flights)

    @property
    def queue_bytes(self) -> dict[Direction, int]:
        """The most each direction of one connection holds in flight (plus a 64 KiB buffer)."""
        return {"down": self._down.queue_bytes, "up": self._up.queue_bytes}

    def link_time(self, wall: float) -> float:
        """Link time (seconds since start, as `LinkProfile.is_down` counts) of a time.time()."""
        return wall - self.started_wall

    def reset(self) -> int:
        """Reset every open connection on both sides (RST, as SO_LINGER 0 sends); how many."""
        for task, writers in self._connections.items():
            for writer in writers:
                _rst(writer)
            task.cancel()
        return len(self._connections)

    def stall(self) -> None:
        """Hold every byte and every new connection, silently, until `resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def _now(self) -> float:
        return time.monotonic() - self._epoch

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            _rst(writer)
            return
        self.stats.connections += 1
        task = asyncio.create_task(
            self._serve(reader, writer), name=f"link connection {self.stats.connections}"
        )
        self._connections[task] = [writer]
        task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self._connections.pop(task, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error(kv("link_connection_failed", error=repr(error)))

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        writers = self._connections[task]
        flights = [_Flight(self._up), _Flight(self._down)]
        self._flights.update(flights)
        clean = False
        try:
            await self._establish()
            up_r, up_w = await asyncio.open_connection(*self.upstream, limit=MAX_PIECE)
            writers.append(up_w)
            async with asyncio.TaskGroup() as pumps:
                for reader, writer, way, flight in (
                    (client_r, up_w, self._up, flights[0]),
                    (up_r, client_w, self._down, flights[1]),
                ):
                    pumps.create_task(self._send(reader, flight, way), name=f"link {way.name} in")
                    pumps.create_task(
                        self._deliver(flight, writer, way), name=f"link {way.name} out"
                    )
            clean = True
        except* OSError as group:  # a side reset or vanished, or the sender gave up
            log.info(kv("link_connection_reset", reason=repr(group.exceptions[0])))
        finally:
            self._flights.difference_update(flights)
            if not clean and not self._closing:
                self.stats.resets += 1
            for writer in writers:
                if clean:
                    writer.close()
                else:
                    _rst(writer)  # the other side sees what this one did: a reset

    async def _establish(self) -> None:
        """Hold a new connection as its SYN would be held: stall, outage, one round trip."""
        await self._flowing.wait()
        now = self._now()
        if self.link.is_down(now):
            up = resend_time(self.link, now, SYN_RTO_S, SYN_RETRIES)
            if up is None:
                raise GaveUpError(f"no SYN got through the outage from link time {now:.1f} s")
            await asyncio.sleep(up - now)
        await asyncio.sleep(self._up.one_way() + self._down.one_way())

    async def _send(self, reader: asyncio.StreamReader, flight: _Flight, way: _Way) -> None:
        """Read from one socket, pass the bytes through the bucket, and put them in flight."""
        arrival = 0.0
        while data := await reader.read(way.piece):
            lost = way.lost_segments(len(data))
            await way.bucket.take(len(data) + lost * MSS)
            sent, one_way = time.monotonic(), way.one_way()
            on_time = max(arrival, sent + one_way)  # never overtakes earlier bytes
            arrival = max(arrival, sent + one_way + (way.rto if lost else 0.0))
            if lost and self._on_loss is not None:
                to_wall = time.time() - sent
                self._on_loss(way.name, on_time + to_wall, arrival + to_wall)
            await flight.put((arrival, data))
        await flight.put(None)

    async def _deliver(self, flight: _Flight, writer: asyncio.StreamWriter, way: _Way) -> None:
        """Write each piece to the far socket when it arrives, resending what an outage lost."""
        back = -math.inf  # link time this stream last got through after an outage
        resent = 0.0  # monotonic time by which the bytes resent so far have been sent
        resent_arrival = 0.0
        while (item := await flight.get()) is not None:
            arrival, data = item
            await asyncio.sleep(arrival - time.monotonic())
            lost_at = arrival - self._epoch
            if self.link.is_down(lost_at):
                if lost_at > back:  # the first loss of this outage: back off until a resend lands
                    through = resend_time(self.link, lost_at, way.rto, DATA_RETRIES)
                    if through is None:
                        raise GaveUpError(f"no resend got through from link time {lost_at:.1f} s")
                    back = through
                    resent = self._epoch + back
                # The lost bytes cross the link again, back to back at its rate (pipelined, not
                # a round trip each); the bucket's debt makes other senders wait for them.
                way.bucket.charge(len(data))
                resent += len(data) / way.bucket.rate
                resent_arrival = max(resent_arrival, resent + way.one_way())
                await asyncio.sleep(resent_arrival - time.monotonic())
            await self._flowing.wait()
            writer.write(data)
            flight.bytes -= len(data)
            if way.name == "down":
                self.stats.bytes_down += len(data)
            else:
                self.stats.bytes_up += len(data)
            if self._observer is not None:
                self._observer(way.name, len(data))
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN, as a crashed peer or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing to reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def parse_address(text: str) -> Address:
    """`HOST:PORT` (or `[v6]:PORT`) as an address tuple; ValueError says what is wrong."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shelfsync-link",
        description="Relay TCP connections from 127.0.0.1:PORT to an upstream service through a "
        "device profile's link: rate, latency and jitter, loss, outages. Prints one line "
        f"'{LISTENING} 127.0.0.1:PORT' when ready. Faults on demand: SIGUSR1 resets every open "
        "connection (RST); SIGUSR2 stalls every connection, and resumes them when sent again.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('shelfsync')}")
    parser.add_argument(
        "--profile",
        required=True,
        help=f"device profile name or TOML path ({', '.join(list_profiles())})",
    )
    parser.add_argument(
        "--upstream",
        required=True,
        metavar="HOST:PORT",
        help="where to relay connections, e.g. the stub at 127.0.0.1:8080",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="loopback port to listen on; 0 picks a free one"
    )
    parser.add_argument("--seed", type=int, help="seed for jitter and loss, for repeatable runs")
    return parser


async def _run(link: LinkProfile, upstream: Address, port: int, seed: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with LinkEmulator(link, upstream, port=port, seed=seed) as emulator:

        def toggle_stall() -> None:
            if emulator.stalled:
                emulator.resume()
            else:
                emulator.stall()
            log.info(kv("link_stall", stalled=emulator.stalled))

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(
            signal.SIGUSR1, lambda: log.info(kv("link_reset", connections=emulator.reset()))
        )
        loop.add_signal_handler(signal.SIGUSR2, toggle_stall)
        print(f"{LISTENING} {HOST}:{emulator.port}", flush=True)
        await stop.wait()
        log.info(kv("link_stopped", **asdict(emulator.stats)))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        upstream = parse_address(args.upstream)
        profile = load_profile(args.profile)
    except ValueError as e:
        print(f"shelfsync-link: --upstream {e}", file=sys.stderr)
        return 2
    except ShelfsyncError as e:
        print(f"shelfsync-link: {e}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"shelfsync-link: --port {args.port} is not a TCP port (0-65535)", file=sys.stderr)
        return 2
    configure()
    try:
        asyncio.run(_run(profile.link, upstream, args.port, args.seed))
    except OSError as e:
        print(f"shelfsync-link: cannot listen on {HOST}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
