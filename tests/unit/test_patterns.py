"""Patterns that check input anchor with \\A and \\Z: `$` also matches before a final newline,
so `^[0-9a-f]{64}$` accepts a hash followed by "\\n" and an id like "X\\n" would pass. A
pattern compiled with re.MULTILINE means its line anchors and is left alone."""

import ast
from pathlib import Path

import pytest

from daemon.protocol import hlc, ids

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("daemon", "server_stub", "devkit", "bench")


def _multiline(call: ast.Call) -> bool:
    return any(
        isinstance(n, ast.Attribute) and n.attr in {"M", "MULTILINE"}
        for arg in call.args[1:] + [k.value for k in call.keywords]
        for n in ast.walk(arg)
    )


def _compiled_patterns() -> list[tuple[str, int, str]]:
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"compile", "match"}
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "re"
                    and node.args
                    and not _multiline(node)
                ):
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        text = first.value
                    elif isinstance(first, ast.JoinedStr):
                        parts = [v.value for v in first.values if isinstance(v, ast.Constant)]
                        text = "".join(str(p) for p in parts)
                    else:
                        continue
                    found.append((str(path.relative_to(ROOT)), node.lineno, text))
    return found


def test_no_pattern_anchors_with_caret_or_dollar() -> None:
    offenders = [
        f"{path}:{line}: {text!r}"
        for path, line, text in _compiled_patterns()
        if text.startswith("^") or (text.endswith("$") and not text.endswith("\\$"))
    ]
    assert not offenders, "anchor with \\A and \\Z instead:\n" + "\n".join(offenders)


def test_a_stamp_with_a_trailing_newline_is_not_a_stamp() -> None:
    stamp = hlc.encode(1_700_000_000_000, 3, "dev_a")
    assert hlc.is_stamp(stamp)
    assert not hlc.is_stamp(stamp + "\n")
    with pytest.raises(ValueError, match="bad node name"):
        hlc.encode(1, 0, "dev_a\n")


def test_a_hash_or_an_id_with_a_trailing_newline_is_refused() -> None:
    for pattern, good in ((ids.SHA256, "a" * 64), (ids.BOOK_ID, "bk_x"), (ids.ITEM_ID, "an_12345")):
        assert pattern.match(good)
        assert not pattern.match(good + "\n")


def test_each_id_pattern_is_written_once() -> None:
    """The shapes of ids live in daemon/protocol/ids.py; a copy elsewhere would drift."""
    shapes = {ids.BOOK_ID.pattern, ids.ITEM_ID.pattern, ids.SHA256.pattern}
    copies = [
        f"{path}:{line}"
        for path, line, text in _compiled_patterns()
        if text in shapes and path != "daemon/protocol/ids.py"
    ]
    assert not copies, "import it from daemon.protocol.ids instead:\n" + "\n".join(copies)
