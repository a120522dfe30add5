"""Annotation sync: pushes the outbox to the service in batches, then pulls the service's changes.

Runs when asked: after a local edit or when the push channel says another device changed something,
as deferrable work (a moment later at the earliest, so a burst of highlights travels in one request,
and in the next wake window, at most the profile's batch window later: see daemon/radio/windows.py);
and at once on start and when the link returns (or the reader asks). A failed round is retried after
its jittered backoff, in a wake window too, cut short when the link returns. Nothing here looks at
the battery: a note push runs whatever the charge.

Exactly once: each op carries its client-made op_id, and is deleted from the outbox only after
the service acknowledged that id; a crash anywhere before the delete re-sends it, and the service
recognises the id. A page of changes is joined with the cursor in one transaction, and joins are
idempotent, so a page applied twice changes nothing. Kill points mark each step (FAULTS.md #3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from functools import partial

from daemon.backoff import Backoff
from daemon.clock import Clock
from daemon.errors import ServiceHTTPError, ShelfsyncError, TransportError, refused_by_service
from daemon.killpoints import killpoint
from daemon.logs import log_event
from daemon.notes.store import NotesStore
from daemon.protocol import merge
from daemon.protocol.hlc import HybridClock
from daemon.radio.windows import RadioWindows
from daemon.retry import Comeback, Retry, record_failure
from daemon.service import ServiceAPI

_LOG = logging.getLogger("shelfsync.annotations")
BATCH_OPS = 2000  # 10,000 offline edits go in 5 requests
BATCH_BYTES = 2 * 1024 * 1024  # of JSON before compression (the service takes up to 8 MiB)
PULL_PAGE = 200
SETTLE_S = 0.2  # wait after a local edit for the rest of a burst


class AnnotationSync:
    def __init__(
        self,
        notes: NotesStore,
        client: ServiceAPI,
        clock: Clock,
        hlc: HybridClock,
        windows: RadioWindows,
        *,
        batch_window_s: float,
        settle_s: float = SETTLE_S,
        backoff: Backoff | None = None,
        comeback: Comeback | None = None,
    ) -> None:
        self._notes = notes
        self._client = client
        self._clock = clock
        self._hlc = hlc
        self._windows = windows
        self._batch_window_s = batch_window_s
        self._settle_s = settle_s
        self.retry = Retry(
            "annotation sync", clock, backoff or Backoff(base_s=2.0, cap_s=600.0), comeback
        )
        self._requested = asyncio.Event()
        self._link_up = asyncio.Event()
        self._batch_ops = BATCH_OPS
        self._names_stale = False  # the account's device names changed since they were asked
        self._names_taken = True  # the service takes and gives device names
        self._syncing = False

    def request(self) -> None:
        """Something changed locally or remotely: sync in the next wake window."""
        self._requested.set()

    def names_changed(self) -> None:
        """The service says a device of the account was renamed: ask for the names again at
        the next sync (in its wake window: a rename is not urgent)."""
        self._names_stale = True
        self._requested.set()

    def link_up(self) -> None:
        """The link to the service is (maybe) back: sync now, even in the middle of a backoff,
        without waiting for a burst of edits to settle."""
        self._link_up.set()
        self._requested.set()

    @property
    def busy(self) -> bool:
        """A sync asked for at once (the link's return) or under way (a window's work:
        daemon/radio/windows.py); an edit's sync rides whatever window comes."""
        return self._link_up.is_set() or self._syncing

    async def run(self) -> None:
        while True:
            await self._requested.wait()
            await self._window(self._settle_s)
            self._requested.clear()
            self._link_up.clear()
            self._syncing = True
            try:
                await self.sync_once()
                self.retry.succeeded()
                continue
            except (ShelfsyncError, OSError) as e:
                decision = self.retry.failed(e)
            finally:
                self._syncing = False
            record_failure("annotation sync", self._notes.record_sync, None, decision.error)
            level = logging.INFO if self.retry.failures == 1 else logging.DEBUG
            self.retry.log_failed(_LOG, "annotation_sync_failed", decision, level)
            await self.retry.wait(
                decision,
                partial(self._windows.wait, "annotations"),
                slack_s=self._batch_window_s,
                unless=[self._link_up],
            )
            self._requested.set()

    async def _window(self, delay_s: float) -> None:
        """Wait `delay_s`, then for a wake window; at once if the link returns meanwhile."""
        due = self._clock.monotonic() + delay_s
        await self._windows.wait(
            "annotations", due, due + self._batch_window_s, unless=self._link_up
        )

    async def sync_once(self) -> tuple[int, int]:
        """Push every pending op, then pull every change; (ops acknowledged, states joined)."""
        pushed, requests = await self._push()
        pulled, authors = await self._pull()
        await self._names(authors)
        self._notes.record_sync(self._clock.wall(), "")
        log_event(
            _LOG,
            logging.INFO,
            "annotations_synced",
            pushed=pushed,
            push_requests=requests,
            pulled=pulled,
            cursor=self._notes.annotation_cursor(),
        )
        return pushed, pulled

    async def _push(self) -> tuple[int, int]:
        acked = requests = 0
        while batch := self._notes.outbox_batch(self._batch_ops, BATCH_BYTES):
            killpoint("annotation_push_sending")
            try:
                result = await self._client.push_annotation_ops([op.body for op in batch])
            except ServiceHTTPError as e:
                if e.status != 413 or len(batch) == 1:
                    raise
                # A service with a smaller body limit: halve the batch and go on.
                self._batch_ops = max(1, len(batch) // 2)
                continue
            requests += 1
            killpoint("annotation_push_acked")
            self._hlc.observe(result.clock)
            sent = {op.op_id for op in batch}
            # Only what was sent in this batch is ever forgotten, whatever the answer says.
            acked_now = [op_id for op_id in result.acked if op_id in sent]
            rejected = {k: v for k, v in result.rejected.items() if k in sent}
            acked += self._notes.outbox_done(acked_now, rejected)
            killpoint("annotation_trimmed")
            for op_id, reason in rejected.items():
                log_event(_LOG, logging.WARNING, "annotation_op_refused", op=op_id, detail=reason)
            if not acked_now and not rejected:
                raise TransportError("the service acknowledged none of the batch")
        return acked, requests

    async def _names(self, authors: set[str]) -> None:
        """Tell the service this device's new name, if the reader gave one, and ask for the
        account's device names when one was renamed or a change came from a device not named
        yet: a request only when something is new, not one a sync."""
        if not self._names_taken:
            return
        name = self._notes.name_to_send()
        try:
            if name is not None:
                await self._client.rename_device(name)
                self._notes.name_sent(name)
            if self._names_stale or not authors <= self._notes.device_names().keys():
                self._names_stale = False
                self._notes.set_device_names(await self._client.device_names())
        except ServiceHTTPError as e:
            if e.retryable or refused_by_service(e):
                raise
            # A service without device names (an older one: 404) must not hold back the notes:
            # names are a nicety, asked for again after a restart.
            self._names_taken = False
            log_event(_LOG, logging.WARNING, "device_names_refused", status=e.status)

    async def _pull(self) -> tuple[int, set[str]]:
        """Join every change since the cursor; (states joined, the devices that wrote them)."""
        cursor = self._notes.annotation_cursor()
        joined = 0
        authors: set[str] = set()
        while True:
            page = await self._client.annotation_changes(cursor, PULL_PAGE)
            killpoint("annotation_pull_received")
            self._observe(
                [page.clock]
                + [merge.max_stamp(item) for item in page.items]
                + [merge.position_max_stamp(p) for p in page.positions]
            )
            clashes = self._notes.apply_remote(
                page.items, page.positions, page.cursor, self._hlc.last
            )
            killpoint("annotation_pull_applied")
            for item_id in clashes:
                log_event(_LOG, logging.WARNING, "annotation_id_clash", item=item_id)
            joined += len(page.items) + len(page.positions)
            for item in page.items:
                authors |= {node for node in merge.author_nodes(item) if node != "service"}
            cursor = page.cursor
            if not page.has_more:
                return joined, authors

    def _observe(self, stamps: Iterable[str]) -> None:
        """Move the local clock past every stamp received, so the next local edit of any of
        these annotations is ordered after what this device has now seen."""
        for stamp in stamps:
            if stamp:
                self._hlc.observe(stamp)
