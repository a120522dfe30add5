"""Whether to trust a signed manifest (pure: bytes and numbers in, a Manifest or an error out).

Checks, in order: the signature against the pinned service key; the manifest's own validity; that
it is for the book asked for; that its version is not below the highest already trusted
(rollback); that a version already held is not redefined (mix-and-match); and that it has not
expired, judged by max(clock, time floor) so a device clock reset to 1970 cannot revive an
expired manifest (TUF's freeze attack).

The keys are the trusted root's (daemon/protocol/root.py): `verify_root` decides whether the
next root in the chain replaces it. A new root with other signing keys re-baselines what the old
keys vouched for (the store drops their trusted versions and starts a new time floor): that is
how a device fast-forwarded by a stolen or broken signing key (a manifest of version 2^62, or
issued in 2111) recovers, and only a root signed by the root keys can do it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from daemon.errors import ExpiredError, ManifestError, RollbackError, SignatureError
from daemon.protocol.crypto import key_id, open_envelope, open_root_envelope, root_signers
from daemon.protocol.manifest import PROTOCOL_LIMITS, Manifest, ManifestLimits, parse_manifest
from daemon.protocol.root import Root, parse_root


def verify_manifest(
    envelope: bytes,
    *,
    pinned_key: Ed25519PublicKey | Sequence[Ed25519PublicKey],
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


def verify_root(trusted: Root, envelope: bytes) -> Root:
    """The root after `trusted`, if `envelope` holds it signed by enough of both the trusted
    root's root keys and its own (TUF 5.3.4-5.3.5); else raise."""
    document, signatures = open_root_envelope(envelope)
    root = parse_root(document)
    if root.version != trusted.version + 1:
        raise RollbackError(
            f"trust root version {root.version} does not follow the trusted version"
            f" {trusted.version}"
        )
    for keys, threshold, whose in (
        (trusted.root_keys, trusted.root_threshold, f"the trusted root {trusted.version}"),
        (root.root_keys, root.root_threshold, f"root {root.version} itself"),
    ):
        signers = root_signers(document, signatures, keys)
        if len(signers) < threshold:
            named = ", ".join(key_id(k) for k in keys)
            raise SignatureError(
                f"trust root {root.version} carries {len(signers)} valid signatures of the root"
                f" keys of {whose} ({named}), {threshold} needed"
            )
    return root
