"""zstd bombs (FAULTS.md #23, issue 24 #1 and #2): a frame whose header declares a small size but
whose blocks expand to 1 GiB, in an unsigned manifest envelope and in a frame of a package, is
refused with the process's peak RSS growing less than 16 MiB.

Each bomb is opened in a fresh child process, which reads its own VmHWM (the peak resident set)
before and after: the test process has peaked higher long before, so it could not tell.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.errors import ShelfsyncError
from daemon.protocol.codec import DEFAULT_WINDOW_CAP, FrameDecoder, WholePayload, decode_frame
from daemon.protocol.crypto import ENVELOPE_MAGIC, open_envelope
from daemon.protocol.manifest import MAX_MANIFEST_BYTES
from tests.builders import make_manifest, signed
from tests.reliability import Figures

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
PEAK_BOUND_KIB = 16 * 1024
HEADER = len(ENVELOPE_MAGIC) + 8 + 64  # magic, key id, signature


def lying_frame(declared: int, real: int) -> bytes:
    """A zstd frame of `real` zero bytes whose header says it holds `declared`."""
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"\0" * real)
    descriptor = frame[4]
    assert descriptor >> 6 == 2, "a 4-byte content size field"
    at = 5 + (0 if descriptor & 0x20 else 1) + (0, 1, 2, 4)[descriptor & 3]
    return frame[:at] + struct.pack("<I", declared) + frame[at + 4 :]


def _peak_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def open_bomb(kind: str, path: str) -> None:
    """In the child: open the bomb at `path` the way the daemon would; print what happened."""
    data = Path(path).read_bytes()
    before = _peak_kib()
    error = "accepted"
    try:
        if kind == "envelope":
            open_envelope(data, Ed25519PrivateKey.generate().public_key())
        elif kind == "whole":
            decode_frame(data, "zstd", 4 * MIB, DEFAULT_WINDOW_CAP)
        else:
            source = WholePayload(data)
            for _ in FrameDecoder(source, "zstd", 4 * MIB, DEFAULT_WINDOW_CAP).stream(source):
                pass
    except ShelfsyncError as e:
        error = type(e).__name__
    print(json.dumps({"error": error, "growth_kib": _peak_kib() - before}))


def peak_growth(kind: str, bomb: bytes, tmp_path: Path) -> tuple[str, int]:
    path = tmp_path / f"{kind}.bomb"
    path.write_bytes(bomb)
    code = f"from tests.unit.test_bombs import open_bomb; open_bomb({kind!r}, {str(path)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    return result["error"], int(result["growth_kib"])


@pytest.mark.faults(23)
@pytest.mark.parametrize("kind", ["envelope", "whole", "streamed"])
def test_a_frame_that_expands_past_what_it_declares_is_refused_in_flat_memory(
    kind: str, tmp_path: Path, fault_figures: Figures
) -> None:
    if kind == "envelope":  # unsigned: it used to be decoded before the signature was checked
        manifest, _ = make_manifest([("a.xhtml", b"<p/>")])
        header = signed(manifest, Ed25519PrivateKey.generate())[:HEADER]
        bomb = header + lying_frame(MAX_MANIFEST_BYTES, 1 << 30)
    else:  # a frame of a package, declaring the 4 MiB its manifest allows
        bomb = lying_frame(4 * MIB, 1 << 30)
    assert len(bomb) < 64 * 1024
    error, growth = peak_growth(kind, bomb, tmp_path)
    fault_figures.record(runs=1, peak_rss_growth_kib=growth, wrong_resources=0)
    assert error == ("SignatureError" if kind == "envelope" else "DecodeError")
    assert growth < PEAK_BOUND_KIB, f"peak RSS grew {growth} KiB"
