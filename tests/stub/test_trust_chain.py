"""The stub's key rotation: each root signed by the key before and the new one, kept across
restarts, and what a device provisioned with service.pub walks to."""

from __future__ import annotations

from pathlib import Path

from daemon.content.trust import verify_root
from daemon.protocol.crypto import key_id, public_key_from_text
from daemon.protocol.root import pinned_root
from server_stub.signing import TrustChain, load_or_create_key


def test_rotations_chain_from_the_provisioned_key_and_survive_a_restart(tmp_path: Path) -> None:
    service_key = load_or_create_key(tmp_path)
    chain = TrustChain(service_key)
    assert (chain.version, chain.envelope(2)) == (1, None)
    assert chain.rotate(1_764_000_000) == 2
    assert chain.rotate(1_764_000_100) == 3
    reloaded = TrustChain(load_or_create_key(tmp_path))
    assert reloaded.version == 3
    # A device provisioned with service.pub (unchanged) walks 1 -> 2 -> 3.
    trusted = pinned_root(public_key_from_text(service_key.pub_path.read_text()))
    for version in (2, 3):
        envelope = reloaded.envelope(version)
        assert envelope is not None
        trusted = verify_root(trusted, envelope)
    assert [key_id(k) for k in trusted.signing_keys] == [key_id(reloaded.signing_key.public_key())]
    assert (tmp_path / "roots" / "3.key").stat().st_mode & 0o777 == 0o600
