"""Delivery receipts: tells the service how each delivery went, and keeps what it says back.

A completed delivery's receipt is made by the store in the same transaction as the completion
(daemon/sql/0005_receipts.sql); this worker also makes a `failed` receipt for a delivery that
has failed attempts and is still not complete a promise (60 s) after the device heard of it,
so the service learns of a stuck delivery while it is stuck, not after. Receipts are sent in
bounded batches, oldest first, and marked sent only once the service acknowledged their ids;
a lost answer re-sends them and the service recognises the ids (exactly once). After a batch is
acknowledged, and whenever the service announces one, the notices feed is pulled: that is how
an apology for a broken promise reaches the reader (GET /v1/notices, `shelfsync status`).

Radio: sending is deferrable work. The worker looks when the link comes up, on each poll while push
is down, when the service announces notices, and, while a delivery ordered in the last `WATCH_S` is
under way, every `check_s` (a local query); what it has to send then waits for a wake window
(daemon/radio/windows.py), which a delivery under way keeps open, and wakes the radio itself only
after the profile's batch window. The link coming up and an announcement go at once.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from daemon.backoff import Backoff
from daemon.clock import Clock, sleep_or_until
from daemon.errors import ShelfsyncError, StoreError, TransportError
from daemon.logs import log_event
from daemon.profile import DeviceProfile
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, Retry
from daemon.service import ServiceAPI
from daemon.store import Store

_LOG = logging.getLogger("shelfsync.receipts")
PROMISE_S = 60.0  # DESIGN.md promise 1: a delivery not complete by then is reported as failing
BATCH = 50  # receipts per request: ~25 KB of JSON, well under the service's 64 KiB body limit
NOTICE_PAGE = 100
CHECK_S = 2.0
WATCH_S = 600.0  # how long after an order the worker keeps checking for its receipt


def device_description(profile: DeviceProfile) -> dict[str, Any]:
    """What the service judges the receipts against: the device class and its link."""
    return {
        "profile": profile.name,
        "down_kbps": profile.link.down_kbps,
    }


class ReceiptSync:
    def __init__(
        self,
        store: Store,
        client: ServiceAPI,
        clock: Clock,
        profile: DeviceProfile,
        windows: RadioWindows,
        *,
        check_s: float = CHECK_S,
        backoff: Backoff | None = None,
        comeback: Comeback | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._clock = clock
        self._windows = windows
        self._batch_window_s = profile.sync.batch_window_s
        self._device = device_description(profile)
        self._check_s = check_s
        self.retry = Retry("receipts", clock, backoff or Backoff(base_s=1.0, cap_s=600.0), comeback)
        self._requested = asyncio.Event()
        self._link_up = asyncio.Event()
        self._pull_wanted = False
        self._sending = False
        # The daemon starting is the start of contact: what happened before it is not known.
        self._mark_link_up()

    def wake(self) -> None:
        """The library changed: a delivery is (or is about to be) under way, so watch for its
        receipt; costs no network by itself."""
        self._requested.set()

    def on_link_event(self, kind: str) -> None:
        """Connectivity's events: the link is up, a poll while push is down, a push message."""
        if kind == "online":
            self._mark_link_up()
        if kind in ("online", "notices_changed"):
            self._pull_wanted = True
            self._link_up.set()
            self._requested.set()
        elif kind == "poll":
            self._requested.set()

    @property
    def busy(self) -> bool:
        """Receipts to send (unless a failure's backoff holds them), or a round asked for at once
        or under way (a window's work: daemon/radio/windows.py)."""
        if self._sending or self._link_up.is_set():
            return True
        return self.retry.failures == 0 and bool(self._store.receipts.unsent_receipts(1))

    def _mark_link_up(self) -> None:
        try:
            self._store.receipts.mark_link_up(self._clock.wall())
        except StoreError as e:  # a full disk: orders then count from when they were made
            log_event(_LOG, logging.WARNING, "link_up_not_recorded", error=str(e))

    async def run(self) -> None:
        while True:
            await self._next_round()
            self._requested.clear()
            try:
                if not self._link_up.is_set() and self._has_network_work():
                    await self._window(0.0)
                self._link_up.clear()
                self._sending = True
                await self.sync_once()
                self.retry.succeeded()
                continue
            except (ShelfsyncError, OSError) as e:
                decision = self.retry.failed(e)
            finally:
                self._sending = False
            level = logging.INFO if self.retry.failures == 1 else logging.DEBUG
            self.retry.log_failed(_LOG, "receipts_failed", decision, level)
            await self.retry.wait(
                decision,
                partial(self._windows.wait, "receipts"),
                slack_s=self._batch_window_s,
                unless=[self._link_up],
            )
            self._requested.set()

    async def _window(self, delay_s: float) -> None:
        """Wait `delay_s`, then for a wake window; at once if the link comes up meanwhile."""
        due = self._clock.monotonic() + delay_s
        await self._windows.wait("receipts", due, due + self._batch_window_s, unless=self._link_up)

    def _has_network_work(self) -> bool:
        """Whether a round now would use the network: a receipt to send, notices to pull."""
        self._make_failed_receipts()
        return self._pull_wanted or bool(self._store.receipts.unsent_receipts(1))

    def _make_failed_receipts(self) -> None:
        made = self._store.receipts.make_failed_receipts(self._clock.wall(), PROMISE_S)
        if made:
            log_event(_LOG, logging.INFO, "delivery_failing_reported", receipts=made)

    async def _next_round(self) -> None:
        """Wait until asked, or `check_s` while a delivery is under way."""
        if self._requested.is_set():
            return
        watching = self._store.receipts.has_open_deliveries(self._clock.wall() - WATCH_S)
        if watching:
            await sleep_or_until(self._clock, self._check_s, self._requested)
        else:
            await self._requested.wait()

    async def sync_once(self) -> tuple[int, int]:
        """Make due `failed` receipts, send every unsent receipt, then pull notices if any
        receipt went or the service announced some; (receipts sent, new notices)."""
        self._make_failed_receipts()
        sent = await self._send()
        new = 0
        if sent or self._pull_wanted:
            self._pull_wanted = False  # cleared first: an announcement during the pull counts
            try:
                new = await self._pull_notices()
            except (TransportError, StoreError):
                self._pull_wanted = True
                raise
        if sent or new:
            self._store.receipts.mark_contact(self._clock.wall())  # the link is back
        return sent, new

    async def _send(self) -> int:
        sent = 0
        while batch := self._store.receipts.unsent_receipts(BATCH):
            answer = await self._client.send_receipts(
                {
                    # The service corrects the device's times by its own clock with this.
                    "sent_at": self._clock.wall(),
                    "device": self._device,
                    "receipts": [r.to_doc() for r in batch],
                }
            )
            ids = {r.receipt_id for r in batch}
            # Only what was sent in this batch is ever marked, whatever the answer says.
            acked = [i for i in answer.acked if i in ids]
            rejected = {k: v for k, v in answer.rejected.items() if k in ids}
            done = self._store.receipts.mark_sent(acked, rejected, self._clock.wall())
            for receipt_id, detail in rejected.items():
                log_event(
                    _LOG, logging.WARNING, "receipt_refused", receipt=receipt_id, detail=detail
                )
            if not done:
                raise TransportError("the service acknowledged none of the receipts")
            sent += done
            log_event(_LOG, logging.INFO, "receipts_sent", receipts=len(acked))
        return sent

    async def _pull_notices(self) -> int:
        cursor = self._store.receipts.notice_cursor()
        new = 0
        while True:
            page = await self._client.notices(cursor, NOTICE_PAGE)
            new += self._store.receipts.add_notices(page.notices, page.cursor, self._clock.wall())
            cursor = page.cursor
            if not page.has_more:
                break
        for notice in self._store.receipts.recent_notices(new):
            log_event(
                _LOG, logging.INFO, "notice_received", kind=notice["kind"], book=notice["book_id"]
            )
        return new
