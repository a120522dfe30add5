"""Key rotation (FAULTS.md #4, #18, #20; issue 24 #6): a trust root is taken only when the trusted
root's keys and its own have signed it, one version after the other; a rotation to new signing
keys is all or nothing, and after it what the old keys vouched for (trusted versions, the time
floor, a fast-forwarded version) no longer binds."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import apsw
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.content.trust import verify_manifest, verify_root
from daemon.errors import ExpiredError, ManifestError, RollbackError, SignatureError, StoreError
from daemon.models import LibraryChange
from daemon.protocol.crypto import sign_root_envelope
from daemon.protocol.manifest import Manifest
from daemon.protocol.root import Root, encode_root, pinned_root
from daemon.store import Store
from tests.builders import NOW, make_manifest, signed
from tests.faultvfs import CutMode, FaultDisk
from tests.reliability import Figures

# Fixed keys: the kill test's child process must sign what the parent checks.
OLD = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
NEW = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
FILES = [("OEBPS/ch1.xhtml", b"<p>one</p>" * 300), ("OEBPS/ch2.xhtml", b"<p>two</p>" * 300)]
DAY = 86_400
TEN_YEARS = 3650 * DAY
FAST_FORWARD = 2**53 - 1  # the highest version the manifest format admits (its "2^62")
ROOT = Path(__file__).resolve().parents[2]
KILL_POINTS = (
    "trust_root_inserted",
    "trust_versions_dropped",
    "trust_floor_reset",
    "trust_fast_forwarded_dropped",
)


def root_of(version: int, *keys: Ed25519PrivateKey, threshold: int = 1) -> Root:
    public = tuple(k.public_key() for k in keys)
    return Root(version, NOW, public, threshold, public)


def envelope_of(root: Root, *signers: Ed25519PrivateKey) -> bytes:
    return sign_root_envelope(list(signers), encode_root(root))


ROTATED = envelope_of(root_of(2, NEW), OLD, NEW)


@pytest.mark.faults(18)
def test_a_root_signed_by_the_trusted_root_and_by_itself_is_taken() -> None:
    root = verify_root(pinned_root(OLD.public_key()), ROTATED)
    assert root.version == 2
    assert not root.same_signing_keys(pinned_root(OLD.public_key()))


@pytest.mark.faults(18, 20)
@pytest.mark.parametrize(
    ("envelope", "error", "message"),
    [
        (envelope_of(root_of(2, NEW), NEW), SignatureError, "the trusted root 1"),
        (envelope_of(root_of(2, NEW), OLD), SignatureError, "root 2 itself"),
        (envelope_of(root_of(3, NEW), OLD, NEW), RollbackError, "does not follow"),
        (
            # one key signing twice is one signature towards a threshold of two
            envelope_of(root_of(2, OLD, NEW, threshold=2), OLD, OLD),
            SignatureError,
            "1 valid signatures",
        ),
        (b"SSR1\x01" + bytes(72) + b"{}", ManifestError, "not a trust root"),
        (ROTATED[:40], ManifestError, "malformed trust root"),
    ],
    ids=["new key only", "old key only", "a version skipped", "duplicate key ids", "junk", "cut"],
)
def test_a_root_without_both_signatures_in_order_is_refused(
    envelope: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        verify_root(pinned_root(OLD.public_key()), envelope)


def test_the_next_root_must_be_signed_by_the_rotated_keys_not_the_first() -> None:
    second = verify_root(pinned_root(OLD.public_key()), ROTATED)
    third = root_of(3, Ed25519PrivateKey.generate())
    with pytest.raises(SignatureError, match="the trusted root 2"):
        verify_root(second, envelope_of(third, OLD))


def verify(store: Store, envelope: bytes, root: Root, now: float = NOW) -> Manifest:
    return verify_manifest(
        envelope,
        pinned_key=root.signing_keys,
        book_id="bk_test",
        trusted_version=store.frames.trusted_version("bk_test"),
        held_frame_hashes=lambda version: store.frames.frame_hashes("bk_test", version),
        time_floor=store.frames.time_floor(),
        now=now,
    )


def fast_forwarded(path: Path) -> Store:
    """A device fast-forwarded while its clock ran ten years ahead: its old signing key went
    wrong and signed a manifest of the highest version, issued in that future, which moved the
    time floor there too (a day at most past the clock of the day)."""
    store = Store.open(path)
    store.library.apply_library_changes(
        [LibraryChange(1, "bk_test", "add", "bought", 2, NOW)], 1, NOW
    )
    forged, _ = make_manifest(FILES, version=FAST_FORWARD, issued_at=NOW + TEN_YEARS)
    pinned = pinned_root(OLD.public_key())
    store.frames.record_manifest(
        verify(store, signed(forged, OLD), pinned, NOW + TEN_YEARS), b"", NOW + TEN_YEARS
    )
    return store


def honest(key: Ed25519PrivateKey) -> bytes:
    manifest, _ = make_manifest(FILES, version=2, issued_at=NOW)
    return signed(manifest, key)


def rotate(store: Store) -> Root:
    pinned = pinned_root(OLD.public_key())
    root = verify_root(pinned, ROTATED)
    store.frames.rotate_trust(
        root.version,
        ROTATED,
        new_signing_keys=not root.same_signing_keys(pinned),
        issued_at=root.issued_at,
        now=NOW,
    )
    return root


@pytest.mark.faults(18, 26)
def test_a_fast_forwarded_device_recovers_only_by_a_key_rotation(tmp_path: Path) -> None:
    # python-tuf's test_new_timestamp_fast_forward_recovery, for a book's manifest.
    store = fast_forwarded(tmp_path / "db")
    pinned = pinned_root(OLD.public_key())
    assert store.frames.time_floor() == NOW + TEN_YEARS
    # The clock is set right again; the honest version 2 is refused, as rolled back and as
    # expired by the floor.
    with pytest.raises(RollbackError, match="older than the trusted"):
        verify(store, honest(OLD), pinned)
    two, _ = make_manifest(FILES, version=FAST_FORWARD, issued_at=NOW)
    with pytest.raises(ExpiredError, match="time floor"):
        verify(store, signed(two, OLD), pinned)
    # The service rotates its signing key and re-signs the honest version 2.
    root = rotate(store)
    assert store.frames.trust_root_envelope() == ROTATED
    assert store.frames.trusted_version("bk_test") == 0
    assert store.frames.time_floor() == root.issued_at
    assert store.frames.frame_hashes("bk_test", FAST_FORWARD) is None  # dropped: fetched again
    assert verify(store, honest(NEW), root).version == 2
    # The old key, and what it signs, are out for good.
    with pytest.raises(SignatureError, match="pinned service key"):
        verify(store, honest(OLD), root)
    store.close()


@pytest.mark.faults(4, 16)
def test_a_new_root_with_the_same_signing_keys_keeps_what_they_vouched_for(
    tmp_path: Path,
) -> None:
    store = fast_forwarded(tmp_path / "db")
    floor = store.frames.time_floor()
    pinned = pinned_root(OLD.public_key())
    same_keys = Root(2, NOW, (NEW.public_key(),), 1, (OLD.public_key(),))
    envelope = envelope_of(same_keys, OLD, NEW)
    root = verify_root(pinned, envelope)
    store.frames.rotate_trust(
        2, envelope, new_signing_keys=False, issued_at=root.issued_at, now=NOW
    )
    assert (store.frames.trusted_version("bk_test"), store.frames.time_floor()) == (
        FAST_FORWARD,
        floor,
    )
    with pytest.raises(RollbackError):
        verify(store, honest(OLD), root)
    store.close()


def rotate_in_child(path: str) -> None:
    """Run in a subprocess with SHELFSYNC_KILL_AT set: rotate, and die at the kill point."""
    store = Store.open(Path(path))
    rotate(store)
    store.close()


def trust_state(path: Path) -> tuple[bytes | None, int, int, bool]:
    store = Store.open(path)
    try:
        held = store.frames.frame_hashes("bk_test", FAST_FORWARD) is not None
        return (
            store.frames.trust_root_envelope(),
            store.frames.trusted_version("bk_test"),
            store.frames.time_floor(),
            held,
        )
    finally:
        store.close()


@pytest.mark.faults(4)
@pytest.mark.parametrize("point", [*KILL_POINTS, None])
def test_a_kill_at_any_step_of_a_rotation_leaves_the_old_trust_or_the_new(
    tmp_path: Path, point: str | None
) -> None:
    path = tmp_path / "db"
    fast_forwarded(path).close()
    before = trust_state(path)
    env = {k: v for k, v in os.environ.items() if k != "SHELFSYNC_KILL_AT"}
    if point:
        env["SHELFSYNC_KILL_AT"] = point
    child = subprocess.run(
        [sys.executable, "-c", f"from {__name__} import rotate_in_child as r; r({str(path)!r})"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
    )
    after = trust_state(path)
    if point:
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-500:]
        assert after == before  # the transaction never committed: the old trust, whole
        # and a replayed older manifest is still refused under it
        store = Store.open(path)
        with pytest.raises(RollbackError):
            verify(store, honest(OLD), pinned_root(OLD.public_key()))
        store.close()
    else:
        assert child.returncode == 0, child.stderr.decode()[-500:]
        assert after == (ROTATED, 0, NOW, False)


# With the power gone, closing a connection still tries to checkpoint and remove the WAL;
# SQLite ignores those failures and apsw reports each one as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.faults(4, 5)
def test_a_power_cut_at_any_write_of_a_rotation_leaves_the_old_trust_or_the_new(
    tmp_path: Path, fault_figures: Figures
) -> None:
    template = tmp_path / "template.db"
    fast_forwarded(template).close()
    before = trust_state(template)
    after = (ROTATED, 0, NOW, False)
    rng = random.Random(4)
    db = tmp_path / "device" / "db"
    cuts = 0
    with FaultDisk() as disk:

        def fresh() -> None:
            shutil.rmtree(db.parent, ignore_errors=True)
            db.parent.mkdir()
            shutil.copy(template, db)
            disk.reset()

        def rotated() -> bool:
            """Rotate on the faulty disk; True if the rotation returned (acknowledged)."""
            store = None
            try:
                store = Store.open(db)
                rotate(store)
                return True
            except (StoreError, apsw.Error):
                return False  # the power went
            finally:
                with contextlib.suppress(apsw.Error):
                    if store is not None:
                        store.close()

        fresh()
        assert rotated()
        ops = disk.ops
        for at_op in range(1, ops + 1):
            for mode in CutMode:
                fresh()
                disk.arm_cut(at_op)
                acknowledged = rotated()
                if not disk.cut_happened:
                    continue
                disk.apply_cut(mode, rng)
                disk.reset()
                cuts += 1
                state = trust_state(db)
                assert state in (before, after), (at_op, mode)
                if acknowledged:
                    assert state == after, (at_op, mode)
    fault_figures.record(runs=cuts)
    assert cuts > 0
