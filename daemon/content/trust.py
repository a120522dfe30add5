"""Whether to trust a signed manifest (pure: bytes and numbers in, a Manifest or an error out).

Checks, in order: the signature against the pinned service key; the manifest's own validity; that
it is for the book asked for; that its version is not below the highest already trusted
(rollback); that a version already held is not redefined (mix-and-match); and that it has not
expired, judged by max(clock, time floor) so a device clock reset to 1970 cannot revive an
expired manifest (TUF's freeze attack).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.errors import ExpiredError, ManifestError, RollbackError
from daemon.protocol.crypto import open_envelope
from daemon.protocol.manifest import PROTOCOL_LIMITS, Manifest, ManifestLimits, parse_manifest


def verify_manifest(
    envelope: bytes,
    *,
    pinned_key: Ed25519PublicKey,
    book_id: str,
    trusted_version: int,
    held_frame_hashes: Callable[[int], list[str] | None],
    time_floor: int,
    now: float,
    limits: ManifestLimits = PROTOCOL_LIMITS,
) -> Manifest:
    manifest = parse_manifest(open_envelope(envelope, pinned_key, limits.max_bytes), limits=limits)
    if manifest.book_id != book_id:
        raise ManifestError(f"asked for the manifest of {book_id}, got one for {manifest.book_id}")
    if manifest.version < trusted_version:
        raise RollbackError(
            f"{book_id}: manifest version {manifest.version} is older than the trusted"
            f" version {trusted_version}"
        )
    held = held_frame_hashes(manifest.version)
    if held is not None and held != [f.sha256 for f in manifest.frames]:
        raise ManifestError(
            f"{book_id}: version {manifest.version} differs from the one already held"
        )
    effective_now = max(now, time_floor)
    if manifest.expires_at <= effective_now:
        raise ExpiredError(
            f"{book_id}: manifest version {manifest.version} expired at {manifest.expires_at}"
            f" (now {int(now)}, trusted time floor {time_floor})"
        )
    return manifest
