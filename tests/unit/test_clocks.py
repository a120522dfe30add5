"""Clocks (FAULTS.md #26): a device clock at 1970, a day back, ten years ahead, or jumping back in
the middle of a download; expiry is judged by max(clock, time floor), the floor being the issue
time of verified manifests, persisted by the store; and a manifest issued far ahead cannot push
the floor past the time the device believes it is by more than a day."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.content.trust import verify_manifest
from daemon.errors import ExpiredError
from daemon.models import LibraryChange
from daemon.protocol.manifest import Manifest
from daemon.store import Store
from daemon.store.frames import FLOOR_STEP_S
from tests.builders import NOW, make_manifest, signed

SERVICE_KEY = Ed25519PrivateKey.generate()
FILES = [("OEBPS/ch1.xhtml", b"<p>one</p>" * 300), ("OEBPS/ch2.xhtml", b"<p>two</p>" * 300)]
DAY = 86_400
YEAR = 365 * DAY
CLOCKS = {"1970": 0, "one day back": NOW - DAY, "right": NOW, "ten years ahead": NOW + 10 * YEAR}


def verify(store: Store, envelope: bytes, now: float) -> Manifest:
    return verify_manifest(
        envelope,
        pinned_key=SERVICE_KEY.public_key(),
        book_id="bk_test",
        trusted_version=store.frames.trusted_version("bk_test"),
        held_frame_hashes=lambda version: store.frames.frame_hashes("bk_test", version),
        time_floor=store.frames.time_floor(),
        now=now,
    )


def device(tmp_path: Path) -> Store:
    """A device that verified a manifest issued at NOW: its floor is NOW."""
    store = Store.open(tmp_path / "db")
    store.library.apply_library_changes(
        [LibraryChange(1, "bk_test", "add", "bought", 1, NOW)], 1, NOW
    )
    first, _ = make_manifest(FILES, issued_at=NOW)
    store.frames.record_manifest(verify(store, signed(first, SERVICE_KEY), NOW), b"", NOW)
    assert store.frames.time_floor() == NOW
    return store


@pytest.mark.faults(17, 26)
@pytest.mark.parametrize("clock", CLOCKS)
@pytest.mark.parametrize("issued_days_ago", [0, 10, 29, 31, 400])
def test_expiry_is_judged_by_the_later_of_the_clock_and_the_floor(
    tmp_path: Path, clock: str, issued_days_ago: int
) -> None:
    store = device(tmp_path)
    now = CLOCKS[clock]
    manifest, _ = make_manifest(FILES, version=2, issued_at=NOW - issued_days_ago * DAY)
    envelope = signed(manifest, SERVICE_KEY)
    if manifest.expires_at <= max(now, store.frames.time_floor()):
        with pytest.raises(ExpiredError, match="expired"):
            verify(store, envelope, now)
    else:
        assert verify(store, envelope, now).version == 2
    store.close()


@pytest.mark.faults(26)
def test_a_clock_jumping_back_mid_download_neither_revives_an_expired_manifest_nor_stops_it(
    tmp_path: Path,
) -> None:
    store = device(tmp_path)
    fresh, package = make_manifest(FILES, version=2, issued_at=NOW + DAY)
    store.frames.record_manifest(
        verify(store, signed(fresh, SERVICE_KEY), NOW + DAY), b"", NOW + DAY
    )
    frame = fresh.frames[0]
    store.frames.commit_frame(
        "bk_test", 2, 0, package[frame.offset : frame.offset + frame.length], NOW
    )
    # The clock jumps back to 1970 between two frames: the download goes on...
    frame = fresh.frames[1]
    assert store.frames.commit_frame(
        "bk_test", 2, 1, package[frame.offset : frame.offset + frame.length], 0
    ).complete
    # ...and a manifest that had expired by the floor stays expired.
    stale, _ = make_manifest(FILES, version=3, issued_at=NOW + DAY - 31 * DAY)
    with pytest.raises(ExpiredError, match="time floor"):
        verify(store, signed(stale, SERVICE_KEY), 0)
    store.close()


@pytest.mark.faults(26)
def test_a_manifest_issued_ten_years_ahead_moves_the_floor_a_day_at_most(tmp_path: Path) -> None:
    store = device(tmp_path)
    ahead, _ = make_manifest(FILES, version=2, issued_at=NOW + 10 * YEAR)
    store.frames.record_manifest(verify(store, signed(ahead, SERVICE_KEY), NOW), b"", NOW)
    assert store.frames.time_floor() == NOW + FLOOR_STEP_S
    # An honest manifest issued now is still in date: the device is not frozen out for good.
    honest, _ = make_manifest(FILES, version=3, issued_at=NOW)
    assert verify(store, signed(honest, SERVICE_KEY), NOW).version == 3
    store.close()
