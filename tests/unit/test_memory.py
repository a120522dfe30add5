"""What keeps the daemon within a 64 MiB device's budget: what a running daemon imports, the
libraries' text it gives back, and JSON answers built without the encoder's one-shot peak."""

from __future__ import annotations

import ctypes
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon import memory
from daemon.api.answers import safe_dumps
from daemon.memory import TEXT_EVERY_S, clean_text_mappings, give_back, text_mappings

ROOT = Path(__file__).resolve().parents[2]

# Loaded for a command other than `run`, a typo, the service, or the benchmarks: never by the
# daemon's own start (docs/PROFILES.md, `ram_budget_mb`).
NOT_AT_START = (
    "server_stub",
    "devkit",
    "bench",
    "tests",
    "importlib.metadata",  # `--version`; brings zipfile and csv
    "zipfile",
    "difflib",  # the "did you mean" of a mistyped configuration key
)


def test_the_daemon_starts_without_modules_only_other_commands_need() -> None:
    code = "import sys, daemon.cli, daemon.app; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "daemon.app" in loaded
    unwanted = [m for m in loaded if any(m == n or m.startswith(f"{n}.") for n in NOT_AT_START)]
    assert unwanted == []


def test_version_is_still_told_when_asked() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", "from daemon.cli import main; main()", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0
    assert shown.stdout.startswith("shelfsync ")  # the installed package's version follows


SMAPS = """\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 11 /usr/bin/python3.11
Rss:                 512 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c0100000-55d0c0300000 r-xp 00100000 08:01 11 /usr/bin/python3.11
Rss:                2048 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0000200000 r-xp 00000000 08:01 12 /lib/with text relocations.so
Rss:                 128 kB
Private_Dirty:         4 kB
Anonymous:             4 kB
7f0000200000-7f0000400000 r-xp 00000000 00:00 0
Rss:                  64 kB
Private_Dirty:        64 kB
Anonymous:            64 kB
7fff00000000-7fff00002000 r-xp 00000000 00:00 0                  [vdso]
Rss:                   8 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r-xp 00000000 08:01 13 /lib/libz.so.1 (deleted)
Rss:                   4 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
"""


def test_only_clean_text_of_files_is_dropped() -> None:
    assert clean_text_mappings(SMAPS) == [
        (0x55D0C0100000, 0x55D0C0300000),
        (0x7F0000400000, 0x7F0000500000),
    ]


def test_maps_names_the_text_mappings_smaps_judges() -> None:
    """/proc/<pid>/maps (cheap) lists the same mappings by the same keys as smaps, so smaps is
    read only for a mapping not judged yet."""
    maps = "\n".join(line for line in SMAPS.splitlines() if not line.split()[0].endswith(":"))
    assert text_mappings(maps).keys() == text_mappings(SMAPS).keys()
    assert list(text_mappings(maps).values()) == [True, True, True]


def test_dropping_the_libraries_text_shrinks_the_process_and_keeps_it_working() -> None:
    code = """
import hashlib, json, sqlite3
import daemon.app
from daemon.memory import drop_library_text, text_mappings

def rss_kib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))

described = text_mappings(open("/proc/self/maps").read()).keys() <= text_mappings(
    open("/proc/self/smaps").read()
).keys()
before = rss_kib()
dropped = drop_library_text()
after = rss_kib()
worked = (
    hashlib.sha256(b"shelfsync").hexdigest()[:8],
    json.loads(json.dumps({"a": [1, 2.5]})),
    sqlite3.connect(":memory:").execute("SELECT 40 + 2").fetchone()[0],
)
print(json.dumps([described, dropped, before, after, worked]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    described, dropped, before, after, worked = json.loads(out.stdout)
    assert worked == [hashlib.sha256(b"shelfsync").hexdigest()[:8], {"a": [1, 2.5]}, 42]
    if not described:
        # qemu-user (make arm-check) answers /proc/self/maps for the emulated process but
        # /proc/self/smaps for its own: nothing is judged clean, nothing dropped, all still works.
        assert dropped == 0
        pytest.skip("/proc/self/smaps does not describe this process (qemu-user): run on a device")
    assert dropped > 10  # the interpreter, libc, OpenSSL, cryptography, apsw, zstandard ...
    assert after < before


def test_a_download_takes_its_frame_sized_blocks_from_the_heap_and_maps_them_again_after() -> None:
    """glibc's mallinfo2 counts the blocks mmapped: outside a download a 1 MiB block is one
    (the daemon's fixed threshold), during downloads it comes from the heap, also while one of
    two concurrent downloads has ended, and once the last has ended it is mapped again."""
    code = """
import ctypes
from daemon import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def mapped_for_a_frame():
    before = libc.mallinfo2().hblks
    frame = bytearray(1 << 20)
    return libc.mallinfo2().hblks - before

memory.keep_heap_small()
seen = [mapped_for_a_frame()]
with memory.heap_kept_for_downloads():
    with memory.heap_kept_for_downloads():
        seen.append(mapped_for_a_frame())
    seen.append(mapped_for_a_frame())
seen.append(mapped_for_a_frame())
print(seen)
"""
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("not glibc 2.33 or later")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[1, 0, 0, 1]"


def test_text_is_dropped_with_a_trim_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every trim (two a book delivered), reading smaps each time, dropping the text more
    than doubled the CPU a library of small books cost to deliver."""
    now = [1000.0]
    drops: list[float] = []
    monkeypatch.setattr(memory.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(memory, "drop_library_text", lambda: drops.append(now[0]) or 0)
    monkeypatch.setattr(memory, "_text_dropped_at", now[0])  # as at start
    for step in range(1, 26):  # a trim every tenth of the period, for 2.5 periods
        now[0] = 1000.0 + step * TEXT_EVERY_S / 10
        give_back()
    assert drops == [1000.0 + TEXT_EVERY_S, 1000.0 + 2 * TEXT_EVERY_S]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner)
        | st.dictionaries(st.text(), inner)
        | st.dictionaries(st.integers(), inner)  # keys json.dumps turns into strings
    ),
    max_leaves=40,
)


@given(JSON)
def test_answers_are_the_text_json_dumps_gives(doc: object) -> None:
    whole = json.dumps(doc, ensure_ascii=False)
    escaped = whole.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    assert safe_dumps(doc) == escaped


def test_a_large_answer_is_the_same_text_with_markup_escaped() -> None:
    book = {
        "book_id": "b1",
        "resources": [{"path": f"ch{i}.xhtml", "size": i, "available": True} for i in range(3000)],
        "toc": [{"label": "<i>A</i> & B", "children": [{"label": "C", "href": "c.xhtml#x"}]}],
        "nothing": [],
        "empty": {},
    }
    text = safe_dumps(book)
    assert json.loads(text) == book
    assert "<" not in text
    assert "&" not in text
