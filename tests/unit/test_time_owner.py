"""Only daemon/clock.py reads the time or waits on it (DESIGN.md: one owner per effect), so a test
moves time by hand (tests/fake_clock.py) and nothing in daemon/ sleeps past it. Checked over the
source's syntax tree, as the layer rules are (tests/unit/test_layers.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOCK = ROOT / "daemon" / "clock.py"
# Calls that read the time or wait on it, by their dotted name.
TIME_CALLS = frozenset(
    {
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
        "time.perf_counter",
        "time.sleep",
        "asyncio.sleep",
        "asyncio.timeout",
        "asyncio.timeout_at",
        "asyncio.wait_for",
        "datetime.now",
        "datetime.utcnow",
        "loop.time",
        "loop.call_later",
        "loop.call_at",
    }
)
# Each exception says why it is not the clock's.
ALLOWED = {
    ("daemon/client.py", "asyncio.timeout"): (
        "I/O deadlines on the service's own sockets (a package frame's minimum rate, a pong),"
        " beside aiohttp's connect and read timeouts that run on the loop's time too; the"
        " workers' tests replace the whole client by tests/fakes/service.py"
    ),
    ("daemon/client.py", "loop.time"): (
        "the minimum-rate watchdog over every request reschedules its asyncio.timeout, whose"
        " deadlines are the loop's time: the same I/O deadline as above"
    ),
    ("daemon/api/server.py", "loop.call_later"): (
        "the local API's deadline on a request's line and headers, set from the transport's"
        " data_received (no coroutine runs yet to wait in): an I/O bound on a reader's socket"
    ),
    ("daemon/memory.py", "time.monotonic"): (
        "how often the libraries' text is dropped with a heap trim (at most once a second): a"
        " bound on the process's own CPU, called from synchronous code deep in the workers and"
        " the local API, not a wait nor a time the daemon keeps or reports"
    ),
    ("daemon/api/answers.py", "asyncio.timeout"): (
        "the local API's deadline on a slow request body: an I/O bound on a reader's socket,"
        " not a wait of the daemon's"
    ),
}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    if isinstance(node, ast.Call) and _dotted(node.func) in (
        "asyncio.get_running_loop",
        "asyncio.get_event_loop",
    ):
        return "loop"
    return None


def _uses_of_time(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            found.append((node.lineno, "from time import"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func) or ""
        if name.endswith("loop.time") or name.endswith("loop.call_later"):
            name = "loop." + name.rsplit(".", 1)[1]
        if name in TIME_CALLS:
            found.append((node.lineno, name))
        elif name == "asyncio.wait" and any(k.arg == "timeout" for k in node.keywords):
            found.append((node.lineno, "asyncio.wait(timeout=)"))
    return found


def test_only_the_clock_reads_the_time_or_waits_on_it() -> None:
    offences = []
    for path in sorted((ROOT / "daemon").rglob("*.py")):
        if path == CLOCK:
            continue
        where = path.relative_to(ROOT).as_posix()
        for line, name in _uses_of_time(ast.parse(path.read_text(), where)):
            if (where, name) not in ALLOWED:
                offences.append(f"{where}:{line}: {name}")
    assert not offences, (
        "read the time and wait through the injected clock (daemon/clock.py: wall, monotonic,"
        " sleep, within, sleep_or_until), or add to ALLOWED saying why: " + ", ".join(offences)
    )


def test_the_check_sees_each_way_of_reading_the_time() -> None:
    source = """
import asyncio, time
from time import monotonic
async def f(loop):
    time.time(); time.monotonic(); await asyncio.sleep(1)
    asyncio.get_running_loop().time(); loop.time()
    async with asyncio.timeout(3): pass
    await asyncio.wait([], timeout=2)
    await asyncio.wait_for(g(), 1)
"""
    names = {name for _, name in _uses_of_time(ast.parse(source))}
    assert names == {
        "from time import",
        "time.time",
        "time.monotonic",
        "asyncio.sleep",
        "loop.time",
        "asyncio.timeout",
        "asyncio.wait(timeout=)",
        "asyncio.wait_for",
    }


def test_every_exception_is_still_needed() -> None:
    for where, name in ALLOWED:
        used = {n for _, n in _uses_of_time(ast.parse((ROOT / where).read_text()))}
        assert name in used, f"{where} no longer uses {name}: drop it from ALLOWED"
