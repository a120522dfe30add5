"""The rooms and their rules (docs/ARCHITECTURE.md), checked over the source's import graph.

Every import counts, also one inside a function: a lazy import still ships. The graph is read
with ast from the files themselves, so a rule cannot be broken by a module no test imports.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("daemon", "server_stub", "devkit")

# Decide without effects: `now` and every measurement are arguments.
PURE = (
    "daemon.protocol",
    "daemon.content.plan",
    "daemon.content.trust",
    "daemon.radio.wake",
    "daemon.backoff",
    "daemon.models",
    "daemon.errors",
)
EFFECTS = ("aiohttp", "apsw", "asyncio", "socket", "subprocess", "time", "daemon.clock")
# What a room of daemon may import besides itself, protocol and the process level.
ROOMS = {
    "daemon.protocol": (),
    "daemon.content": ("daemon.radio.windows",),
    "daemon.notes": ("daemon.radio.windows",),
    "daemon.radio": (),
    "daemon.api": ("daemon.content", "daemon.notes", "daemon.radio"),
}
COMPOSERS = ("daemon.app", "daemon.cli", "daemon.__main__")  # may import every room
# The process level: the top-level modules of daemon, and the store package beside them.
PROCESS_PACKAGES = ("daemon.store",)
# The device's database (daemon/store/: its connection, and a gateway a domain: library, frames,
# views, receipts), the notes' store on its own connection, and the service's store.
SQL_OWNERS = ("daemon.store", "daemon.notes.store", "server_stub.store")
# A statement as the stores write them; in a docstring it is prose, not SQL.
SQL_TEXT = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|CREATE\s+(TABLE|INDEX|TRIGGER)|PRAGMA\s+\w+)\b"
)
# A gateway's private helpers (daemon/store/gateway.py), which only the stores call.
GATEWAY_HELPERS = frozenset(
    {"_transaction", "_durable_transaction", "_query", "_one", "_rows", "_row", "_db"}
)
HTTP_CLIENTS = ("daemon.client", "daemon.api.client")
NOTIFIER = "daemon.notify"  # the only raw socket in daemon/: datagrams to systemd
RAW_SOCKETS = frozenset({"socket", "socketpair", "create_connection", "fromfd"})
CLIENT_NAMES = frozenset(
    {"ClientSession", "ClientTimeout", "TCPConnector", "UnixConnector", "BaseConnector", "request"}
)


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module, or module.name for `from module import name`
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, ast.Module]:
    trees = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            trees[_module_name(path)] = ast.parse(path.read_text(), str(path))
    return trees


SOURCES = _sources()


def _imports(module: str, tree: ast.Module) -> list[Import]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}:{node.lineno}: use absolute imports"
            assert node.module is not None
            found.append(Import(module, node.module, node.lineno))
            found += [
                Import(module, f"{node.module}.{alias.name}", node.lineno) for alias in node.names
            ]
    return found


IMPORTS = [imp for module, tree in SOURCES.items() for imp in _imports(module, tree)]


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _project_module(target: str) -> str | None:
    """The module of ours an import target names (`from daemon.protocol import merge` names
    daemon.protocol.merge; `from daemon.errors import X` names daemon.errors)."""
    while target:
        if target in SOURCES:
            return target
        target = target.rpartition(".")[0]
    return None


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in SOURCES}
    for imp in IMPORTS:
        target = _project_module(imp.target)
        if target is not None and target != imp.importer:
            graph[imp.importer].add(target)
    return graph


GRAPH = _edges()


def _broken(rule: str, offenders: list[Import]) -> str:
    lines = [f"  {i.importer} line {i.line} imports {i.target}" for i in offenders]
    return f"{rule}:\n" + "\n".join(sorted(set(lines)))


def test_the_device_package_imports_neither_the_service_nor_the_tools() -> None:
    offenders = [
        i
        for i in IMPORTS
        if _within(i.importer, "daemon")
        and _within(i.target, ("server_stub", "devkit", "bench", "tests"))
    ]
    assert not offenders, _broken("daemon/ ships alone", offenders)


def test_the_service_speaks_to_the_device_only_through_the_protocol() -> None:
    offenders = [
        i
        for i in IMPORTS
        if _within(i.importer, "server_stub")
        and _within(i.target, ("daemon", "devkit"))
        and not _within(i.target, ("daemon.protocol", "daemon.errors"))
    ]
    assert not offenders, _broken(
        "server_stub imports only daemon.protocol, daemon.errors", offenders
    )


def test_pure_modules_reach_no_effect_even_through_what_they_import() -> None:
    offenders = []
    for module in SOURCES:
        if not _within(module, PURE):
            continue
        for imp in (i for i in IMPORTS if i.importer == module):
            ours = _project_module(imp.target)
            if _within(imp.target, EFFECTS) or (ours is not None and not _within(ours, PURE)):
                offenders.append(imp)
    assert not offenders, _broken("pure modules import only pure modules, no I/O", offenders)


def test_each_room_imports_only_what_its_docstring_allows() -> None:
    offenders = []
    for imp in IMPORTS:
        room = next((r for r in ROOMS if _within(imp.importer, r)), None)
        target = _project_module(imp.target)
        if not _within(imp.importer, "daemon") or target is None or not _within(target, "daemon"):
            continue
        if room is None:  # the process level
            allowed = _within(imp.importer, COMPOSERS) or "." not in target.removeprefix("daemon.")
            allowed = allowed or _within(target, ("daemon.protocol", *PROCESS_PACKAGES))
        else:
            other_room = next((r for r in ROOMS if _within(target, r)), None)
            allowed = other_room in (None, room, "daemon.protocol") or _within(target, ROOMS[room])
        if not allowed:
            offenders.append(imp)
    assert not offenders, _broken("rooms import across only as daemon/__init__.py says", offenders)


def test_only_the_store_modules_speak_sql() -> None:
    offenders = [
        i for i in IMPORTS if _within(i.target, "apsw") and not _within(i.importer, SQL_OWNERS)
    ]
    assert not offenders, _broken("apsw is imported only by the store modules", offenders)


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *ast.walk(tree)]
    return {
        id(node.body[0].value)
        for node in nodes
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def test_sql_is_written_only_in_the_stores() -> None:
    """No module but a store writes a statement or reaches for a gateway's private helpers: a
    domain's SQL is its gateway's, and every other part calls the gateway's methods."""
    offenders: list[str] = []
    for module, tree in SOURCES.items():
        if _within(module, SQL_OWNERS):
            continue
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings and SQL_TEXT.search(node.value):
                    offenders.append(f"  {module} line {node.lineno} writes {node.value[:40]!r}")
            elif isinstance(node, ast.Attribute) and node.attr in GATEWAY_HELPERS:
                offenders.append(f"  {module} line {node.lineno} calls a gateway's {node.attr}")
    assert not offenders, "SQL is written only in the store modules:\n" + "\n".join(offenders)


def _uses(module: str, tree: ast.Module, library: str, names: frozenset[str]) -> list[Import]:
    """Where `module` uses one of `library`'s `names`: `library.name`, or imported by name."""
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = node.attr if node.value.id == library else None
        elif isinstance(node, ast.ImportFrom) and node.module == library:
            name = next((a.name for a in node.names if a.name in names), None)
        if name in names:
            found.append(Import(module, f"{library}.{name}", node.lineno))
    return found


def test_only_the_clients_open_http_connections() -> None:
    offenders = [
        use
        for module, tree in SOURCES.items()
        if _within(module, ("daemon", "devkit")) and not _within(module, HTTP_CLIENTS)
        for use in _uses(module, tree, "aiohttp", CLIENT_NAMES)
    ]
    assert not offenders, _broken(
        "only daemon.client and daemon.api.client use aiohttp's client", offenders
    )


def test_only_the_notifier_speaks_to_the_service_manager() -> None:
    """sd_notify's datagrams have one owner at the process level, as every effect does: only
    daemon.notify opens a raw socket (reading socket's constants, AF_UNIX, is no effect)."""
    offenders = [
        use
        for module, tree in SOURCES.items()
        if _within(module, "daemon") and module != NOTIFIER
        for use in _uses(module, tree, "socket", RAW_SOCKETS)
    ]
    assert not offenders, _broken("only daemon.notify opens a raw socket in daemon/", offenders)
    assert "." not in NOTIFIER.removeprefix("daemon."), "the notifier is process level"


def test_the_import_graph_has_no_cycles() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_every_room_says_what_it_owns_and_may_import() -> None:
    for package in ("daemon", *ROOMS, "devkit"):
        docstring = ast.get_docstring(SOURCES[package])
        assert "import" in (docstring or ""), f"{package}/__init__.py: say what it may import"


def test_every_device_module_imports_with_the_service_and_the_tools_absent() -> None:
    """As on a device: server_stub and devkit cannot be found at all."""
    script = """
import importlib, importlib.abc, pkgutil, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("server_stub", "devkit", "bench", "tests"):
            raise ModuleNotFoundError(f"No module named {name!r} (absent on a device)")
        return None
sys.meta_path.insert(0, Absent())
import daemon
names = [m.name for m in pkgutil.walk_packages(daemon.__path__, "daemon.")]
for name in names:
    if name != "daemon.__main__":  # it runs the cli
        importlib.import_module(name)
print(len(names))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= len([m for m in SOURCES if _within(m, "daemon")]) - 1


def test_the_readme_layout_names_every_room_and_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[
        readme.index("```\ndaemon/") : readme.index("```", readme.index("```\ndaemon/") + 4)
    ]
    missing = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            if package == "daemon" and path.name not in layout:
                missing.append(str(path.relative_to(ROOT)))
        for room in (p for p in (ROOT / package).iterdir() if (p / "__init__.py").exists()):
            if f"{room.name}/" not in layout:
                missing.append(f"{package}/{room.name}/")
    assert not missing, f"README.md's layout does not name {missing}"
