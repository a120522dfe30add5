"""`shelfsync-stub` as a parent process runs it: report, one parseable line, clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from server_stub.cli import LISTENING, main
from tests.stub.helpers import write_epub


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server_stub.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_reports_listens_and_stops_on_signal(
    tmp_path: Path, corpus_dir: Path, signum: signal.Signals
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "wasteland.epub").symlink_to(corpus_dir / "idpf_wasteland.epub")
    write_epub(library / "broken.epub", mimetype=b"text/plain")
    process = _start("--data", str(tmp_path / "data"), "--library", str(library), "--port", "0")
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(LISTENING):
                break
        assert lines[0] == "imported 1, updated 0, unchanged 0, refused 1"
        assert lines[1].startswith(f"refused {library / 'broken.epub'}: 'mimetype' holds")
        assert len(lines) == 3
        url = lines[2].removeprefix(LISTENING).strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/v1/service-key", timeout=5) as response:  # noqa: S310
            key = json.loads(response.read())
        assert key["public_key"] == (tmp_path / "data" / "service.pub").read_text().strip()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "event=epub_refused" in stderr
    assert "broken.epub" in stderr
    assert "Traceback" not in stderr


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data", "--library", "--host", "--port", "--faults"):
        assert option in out


def test_cli_refuses_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "70000"]) == 2
    assert "not a TCP port" in capsys.readouterr().err
