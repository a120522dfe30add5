"""Only manifests signed by the pinned key, for the book asked, not rolled back, not expired."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.content.trust import verify_manifest
from daemon.errors import ExpiredError, ManifestError, RollbackError, SignatureError
from daemon.protocol.codec import compress_document, decode_bounded
from daemon.protocol.crypto import ENVELOPE_MAGIC, SIGNING_CONTEXT
from daemon.protocol.manifest import (
    MAX_MANIFEST_BYTES,
    ManifestLimits,
    encode_manifest,
    parse_manifest,
)
from tests.builders import NOW, make_manifest, signed

SERVICE_KEY = Ed25519PrivateKey.generate()
FILES = [("OEBPS/ch1.xhtml", b"<p>one</p>" * 300), ("OEBPS/ch2.xhtml", b"<p>two</p>" * 300)]


def verify(envelope: bytes, **overrides: object) -> object:
    args: dict[str, object] = {
        "pinned_key": SERVICE_KEY.public_key(),
        "book_id": "bk_test",
        "trusted_version": 0,
        "held_frame_hashes": lambda version: None,
        "time_floor": 0,
        "now": NOW + 60,
    }
    args.update(overrides)
    return verify_manifest(envelope, **args)  # type: ignore[arg-type]


def test_a_good_manifest_is_trusted() -> None:
    manifest, _ = make_manifest(FILES)
    assert verify(signed(manifest, SERVICE_KEY)) == manifest


@pytest.mark.faults(20)
def test_another_key_is_refused() -> None:
    manifest, _ = make_manifest(FILES)
    with pytest.raises(SignatureError, match="pinned service key"):
        verify(signed(manifest, Ed25519PrivateKey.generate()))


HEADER = len(ENVELOPE_MAGIC) + 8 + 64  # magic, key id, signature


@pytest.mark.faults(20)
def test_a_changed_byte_breaks_the_signature() -> None:
    manifest, _ = make_manifest(FILES)
    envelope = signed(manifest, SERVICE_KEY)
    raw = decode_bounded(envelope[HEADER:], 1 << 20)
    raw = raw.replace(b'"version":1', b'"version":9')
    with pytest.raises(SignatureError, match="envelope names key"):
        verify(envelope[:HEADER] + compress_document(raw))


@pytest.mark.faults(23)
def test_an_unsigned_bomb_is_refused_before_a_byte_is_decoded() -> None:
    manifest, _ = make_manifest(FILES)
    bomb = compress_document(b" " * MAX_MANIFEST_BYTES)
    assert len(bomb) < 4096
    with pytest.raises(SignatureError):  # the signature is over the compressed bytes
        verify(signed(manifest, SERVICE_KEY)[:HEADER] + bomb)


@pytest.mark.faults(23)
def test_a_signed_manifest_that_inflates_past_the_limit_is_refused_before_decoding() -> None:
    bomb = compress_document(b" " * (MAX_MANIFEST_BYTES + 1))
    signature = SERVICE_KEY.sign(SIGNING_CONTEXT + bomb)
    with pytest.raises(ManifestError, match="the limit is"):
        verify(ENVELOPE_MAGIC + bytes(8) + signature + bomb)


@pytest.mark.faults(22)
@pytest.mark.parametrize(
    "envelope",
    [b"", ENVELOPE_MAGIC, b'{"manifest_zstd": "", "signature": ""}', b"SSE2" + bytes(200)],
)
def test_what_is_not_a_signed_envelope_is_refused_by_name(envelope: bytes) -> None:
    with pytest.raises(ManifestError, match="malformed signed manifest"):
        verify(envelope)


@pytest.mark.faults(19)
def test_a_manifest_for_another_book_is_refused() -> None:
    manifest, _ = make_manifest(FILES, book_id="bk_other")
    with pytest.raises(ManifestError, match="got one for bk_other"):
        verify(signed(manifest, SERVICE_KEY))


@pytest.mark.faults(16)
def test_a_rolled_back_version_is_refused() -> None:
    manifest, _ = make_manifest(FILES, version=2)
    with pytest.raises(RollbackError, match="version 2 is older than the trusted version 3"):
        verify(signed(manifest, SERVICE_KEY), trusted_version=3)


@pytest.mark.faults(19)
def test_a_held_version_cannot_be_redefined() -> None:
    manifest, _ = make_manifest(FILES)
    with pytest.raises(ManifestError, match="differs from the one already held"):
        verify(signed(manifest, SERVICE_KEY), held_frame_hashes=lambda v: ["0" * 64] * 2)


@pytest.mark.faults(17, 26)
def test_expiry_uses_the_time_floor_when_the_clock_is_set_back() -> None:
    manifest, _ = make_manifest(FILES, issued_at=NOW, lifetime_s=3600)
    envelope = signed(manifest, SERVICE_KEY)
    with pytest.raises(ExpiredError):
        verify(envelope, now=NOW + 7200)
    # The clock says 1970, but the device has verified metadata issued later than expiry.
    with pytest.raises(ExpiredError, match="time floor"):
        verify(envelope, now=0, time_floor=NOW + 7200)


@pytest.mark.faults(22)
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frame_size": 0}, "frame_size"),
        ({"package_size": 1}, "package_size"),
        ({"first_chapter": "nope.xhtml"}, "first_chapter"),
    ],
)
def test_inconsistent_manifests_are_refused(change: dict[str, object], message: str) -> None:
    manifest, _ = make_manifest(FILES)
    doc = json.loads(encode_manifest(manifest))
    doc.update(change)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(doc).encode())


@pytest.mark.faults(22)
@pytest.mark.parametrize("path", ["../etc/passwd", "/abs", "a/../../b", "a\x00b", "a\\b", ""])
def test_resource_paths_that_leave_the_book_are_refused(path: str) -> None:
    manifest, _ = make_manifest(FILES)
    bad = replace(
        manifest, resources=(replace(manifest.resources[0], path=path), *manifest.resources[1:])
    )
    with pytest.raises(ManifestError, match="resource path"):
        parse_manifest(encode_manifest(bad))


@pytest.mark.faults(22)
def test_garbage_is_a_manifest_error_not_a_crash() -> None:
    for data in (b"", b"[]", b"{", b'{"format": 1}', b"\xff\xfe", b"[" * 100_000):
        with pytest.raises(ManifestError):
            parse_manifest(data)


# What a device takes of one signed manifest is sized to its RAM budget (issue 24 #7, #8): a
# compromised service's 8 MiB title, 150,000 resources, 1 MiB labels or `javascript:` links
# once reached the local API, which stalled on them.
SMALL_DEVICE = ManifestLimits.for_ram_budget(64 * 1024 * 1024)
# Its counts and lengths, over manifests the size cap alone would let through.
SMALL_DEVICE_FIELDS = replace(SMALL_DEVICE, max_bytes=MAX_MANIFEST_BYTES)


def _empty_resources(count: int) -> list[dict[str, object]]:
    return [
        {"path": f"OEBPS/e{i}.css", "media_type": "text/css", "size": 0, "offset": 6000}
        for i in range(count)
    ]


def _toc(label: str = "One", href: str = "OEBPS/ch1.xhtml") -> list[dict[str, object]]:
    return [{"label": label, "href": href, "children": []}]


OVERSIZED = {
    "an 8 MiB title": ({"title": "t" * (8 << 20)}, "title"),
    "an author of 1 MiB": ({"authors": ["a" * (1 << 20)]}, "authors"),
    "a thousand authors": ({"authors": ["a"] * 1000}, "authors"),
    "a language tag of 1 KiB": ({"language": "x" * 1024}, "language"),
    "150,000 resources": ({"resources": _empty_resources(150_000)}, "resources"),
    "a TOC label of 1 MiB": ({"toc": _toc(label="l" * (1 << 20))}, "label"),
    "100,000 TOC entries": ({"toc": _toc() * 100_000}, "toc"),
    "a javascript: TOC link": ({"toc": _toc(href="javascript:alert(1)")}, "href"),
    "a remote TOC link": ({"toc": _toc(href="https://evil.example/")}, "href"),
    "a TOC link to a file the book lacks": ({"toc": _toc(href="OEBPS/ch9.xhtml#x")}, "href"),
    "100,000 page-list entries": (
        {"reading": {"page_list": [{"label": "1", "href": "OEBPS/ch1.xhtml"}] * 100_000}},
        "page_list",
    ),
}


@pytest.mark.faults(22)
@pytest.mark.parametrize("field", OVERSIZED)
def test_manifest_fields_past_the_devices_bounds_are_refused(field: str) -> None:
    manifest, _ = make_manifest(FILES)
    doc = json.loads(encode_manifest(manifest))
    change, message = OVERSIZED[field]
    if "resources" in change:  # the stream must still add up
        change = {"resources": doc["resources"] + change["resources"]}  # type: ignore[operator]
    doc.update(change)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(doc).encode(), limits=SMALL_DEVICE_FIELDS)


def test_a_toc_link_into_the_book_with_a_fragment_is_taken() -> None:
    manifest, _ = make_manifest(FILES)
    doc = json.loads(encode_manifest(manifest))
    doc["toc"] = _toc(href="OEBPS/ch2.xhtml#part-2")
    parsed = parse_manifest(json.dumps(doc).encode(), limits=SMALL_DEVICE)
    assert parsed.toc[0].href == "OEBPS/ch2.xhtml#part-2"


@pytest.mark.faults(12, 23)
def test_a_signed_manifest_larger_than_the_device_takes_is_refused_by_its_header() -> None:
    """A 626-byte envelope of a 16 MiB manifest cost a device +40 MiB (issue 24 #8)."""
    bomb = compress_document(b" " * MAX_MANIFEST_BYTES)
    signature = SERVICE_KEY.sign(SIGNING_CONTEXT + bomb)
    with pytest.raises(ManifestError, match=f"the limit is {SMALL_DEVICE.max_bytes}"):
        verify(ENVELOPE_MAGIC + bytes(8) + signature + bomb, limits=SMALL_DEVICE)


def test_device_limits_grow_with_the_ram_budget_and_take_the_largest_corpus_book() -> None:
    small, large = SMALL_DEVICE, ManifestLimits.for_ram_budget(256 * 1024 * 1024)
    assert small.max_bytes < large.max_bytes <= MAX_MANIFEST_BYTES
    # idpf_mahabharata: a 615 KB manifest of 2,020 resources and 2,014 TOC entries
    assert small.max_bytes >= 615_097
    assert small.max_items >= 2_020
