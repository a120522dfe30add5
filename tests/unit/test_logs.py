"""One log line per event, with its level, in one format for the daemon and the service."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from daemon.logs import log_event, setup_logging, under_journald
from daemon.protocol.logline import Event, LineFormatter
from server_stub import logs as stub_logs


def _record(msg: object, level: int = logging.INFO, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("a bug\nover two lines")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("shelfsync.app", level, __file__, 1, msg, None, exc_info)
    record.created = 1_764_763_445.123  # 2025-12-03T12:04:05.123Z
    return record


def test_an_event_is_one_text_line_with_time_level_logger_and_fields() -> None:
    line = LineFormatter("text").format(
        _record(Event("book_stored", {"book_id": "bk_1", "title": 'The "Odd" One', "n": 3}))
    )
    assert line == (
        '2025-12-03T12:04:05.123Z INFO shelfsync.app event=book_stored book_id=bk_1 title="The'
        ' \\"Odd\\" One" n=3'
    )


def test_under_journald_the_line_starts_with_its_sd_daemon_priority_and_has_no_time() -> None:
    formatter = LineFormatter("text", journal=True)
    lines = {
        level: formatter.format(_record(Event("x", {}), level))
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    }
    assert lines == {
        logging.DEBUG: "<7>shelfsync.app event=x",
        logging.INFO: "<6>shelfsync.app event=x",
        logging.WARNING: "<4>shelfsync.app event=x",
        logging.ERROR: "<3>shelfsync.app event=x",
        logging.CRITICAL: "<2>shelfsync.app event=x",
    }


def test_json_lines_carry_the_same_fields_for_tools() -> None:
    line = LineFormatter("json").format(
        _record(Event("frame_committed", {"idx": 4, "path": "OEBPS/a b.xhtml"}), logging.WARNING)
    )
    assert json.loads(line) == {
        "ts": "2025-12-03T12:04:05.123Z",
        "level": "warning",
        "logger": "shelfsync.app",
        "event": "frame_committed",
        "idx": 4,
        "path": "OEBPS/a b.xhtml",
    }


@pytest.mark.parametrize(("style", "journal"), [("text", False), ("text", True), ("json", False)])
def test_a_traceback_stays_on_its_events_line(style: str, journal: bool) -> None:
    formatter = LineFormatter(style, journal=journal)
    line = formatter.format(_record(Event("crashed", {}), logging.ERROR, exc=True))
    assert "\n" not in line
    assert "ValueError: a bug" in line
    assert "Traceback (most recent call last)" in line
    if style == "json":
        assert json.loads(line)["traceback"].endswith("ValueError: a bug\nover two lines")


def test_under_journald_json_lines_carry_the_priority_too() -> None:
    line = LineFormatter("json", journal=True).format(_record(Event("x", {}), logging.ERROR))
    assert line.startswith("<3>{")
    assert json.loads(line[3:])["level"] == "error"


def test_a_message_that_is_not_an_event_is_quoted_on_one_line() -> None:
    line = LineFormatter("text").format(_record("Task was destroyed\nbut it is pending!"))
    assert line.endswith('event=log message="Task was destroyed\\nbut it is pending!"')


def test_control_characters_in_values_cannot_start_a_new_line() -> None:
    line = str(Event("x", {"file": "evil\r\n2025-01-01 INFO forged event=y", "tab": "a\tb"}))
    assert not {"\n", "\r", "\t"} & set(line)


@pytest.fixture
def root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logger")
def test_the_daemon_and_the_service_write_the_same_line_for_the_same_event() -> None:
    lines = []
    for configure in (lambda: setup_logging("info", "text"), stub_logs.configure):
        configure()
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        stream = io.StringIO()
        handler.setStream(stream)
        log = logging.getLogger("shelfsync.test")
        if configure is stub_logs.configure:
            log.info(stub_logs.kv("book_imported", book_id="bk_1", frames=4))
        else:
            log_event(log, logging.INFO, "book_imported", book_id="bk_1", frames=4)
        lines.append(stream.getvalue().split(" ", 1)[1])  # the time differs
    assert lines[0] == lines[1] == "INFO shelfsync.test event=book_imported book_id=bk_1 frames=4\n"


def test_journald_is_recognised_only_when_stderr_is_its_stream() -> None:
    st = os.fstat(sys.stderr.fileno())
    assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not under_journald({})


def test_the_daemon_writes_sd_daemon_prefixes_when_its_stderr_is_the_journal_stream() -> None:
    """A real process whose stderr is a file named by $JOURNAL_STREAM, as systemd sets it."""
    script = (
        "import logging, os, sys\n"
        "st = os.fstat(2)\n"
        "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "from daemon.logs import setup_logging, log_event\n"
        "setup_logging('info')\n"
        "log_event(logging.getLogger('shelfsync.app'), logging.WARNING, 'disk_full', free=0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stderr == "<4>shelfsync.app event=disk_full free=0\n"


def test_log_format_json_gives_a_tool_one_object_per_line() -> None:
    script = (
        "import logging\n"
        "from daemon.logs import setup_logging, log_event\n"
        "setup_logging('info', 'json')\n"
        "log = logging.getLogger('shelfsync.app')\n"
        "log_event(log, logging.INFO, 'daemon_started', device='dev_1')\n"
        "log_event(log, logging.DEBUG, 'not_at_info')\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError as e:\n"
        "    log_event(log, logging.ERROR, 'worker_crashed', exc=e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(d["level"], d["event"]) for d in lines] == [
        ("info", "daemon_started"),
        ("error", "worker_crashed"),
    ]
    assert lines[0]["device"] == "dev_1"
    assert lines[1]["traceback"].endswith("ZeroDivisionError: division by zero")
