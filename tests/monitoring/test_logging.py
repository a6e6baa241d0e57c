from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import IO

from hypothesis import given
from hypothesis import strategies as st

from monitoring.logging import EventLog, format_event, format_value

# logfmt as its readers parse it: bare tokens, or JSON-style quoted strings.
PAIR = re.compile(r'([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|[^ ]*)')


def parse(line: str) -> dict[str, str]:
    out = {}
    for key, raw in PAIR.findall(line):
        out[key] = json.loads(raw) if raw.startswith('"') else raw
    return out


def test_event_line_shape():
    line = format_event("info", "listener.bound", {"addr": "127.0.0.1:1"}, timestamp=0.25)
    assert line == "ts=1970-01-01T00:00:00.250Z level=info event=listener.bound addr=127.0.0.1:1"


@given(st.text())
def test_any_value_stays_on_one_line_and_parses_back(value):
    line = format_event("info", "x", {"value": value, "after": "ok"}, timestamp=0)
    assert "\n" not in line
    assert "\r" not in line
    parsed = parse(line)
    assert parsed["value"] == (value or "")
    assert parsed["after"] == "ok"


def test_levels_and_bound_fields():
    out = io.StringIO()
    log = EventLog("broker", level="warning", stream=out)
    child = log.bind(conn=7)
    child.info("hidden")
    child.warning("shown", n=1)
    log.set_level("debug")
    child.debug("now shown")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert parse(lines[0]) | {"ts": ""} == {
        "ts": "",
        "level": "warning",
        "event": "shown",
        "daemon": "broker",
        "conn": "7",
        "n": "1",
    }
    assert parse(lines[1])["event"] == "now shown"


def test_exception_names_type_and_place():
    out = io.StringIO()
    log = EventLog("balancer", stream=out)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        log.exception("handler.failed", exc)
    fields = parse(out.getvalue())
    assert fields["error"] == "ValueError"
    assert fields["message"] == "boom"
    assert fields["where"].endswith("test_logging.py:" + fields["where"].rsplit(":", 1)[1])


def test_value_rendering():
    assert format_value(None) == "null"
    assert format_value(True) == "true"
    assert format_value(0.5) == "0.5"
    assert format_value("") == '""'
    assert format_value("a=b") == '"a=b"'


@contextlib.contextmanager
def journal_pipe(monkeypatch) -> Iterator[tuple[IO[str], IO[str]]]:
    """A pipe standing in for journald's stream: $JOURNAL_STREAM names its write end, as
    systemd sets it for the stream it connects to stderr (systemd.exec(5))."""
    read_fd, write_fd = os.pipe()
    status = os.fstat(write_fd)
    monkeypatch.setenv("JOURNAL_STREAM", f"{status.st_dev}:{status.st_ino}")
    with os.fdopen(read_fd) as reader, os.fdopen(write_fd, "w") as writer:
        yield reader, writer


def test_lines_to_journald_carry_their_priority(monkeypatch):
    """journald stored every line at info: ``journalctl -p warning`` showed nothing."""
    with journal_pipe(monkeypatch) as (reader, writer):
        log = EventLog("broker", level="debug", stream=writer)
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        try:
            raise ValueError("boom")
        except ValueError as exc:
            log.exception("x", exc)
        writer.close()
        lines = reader.read().splitlines()
    assert [line[: line.index("ts=")] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<3>"]
    assert [parse(line)["event"] for line in lines] == ["d", "i", "w", "e", "x"]


def test_lines_elsewhere_have_no_priority_prefix(monkeypatch):
    with journal_pipe(monkeypatch) as (reader, writer):
        other = io.StringIO()  # not the journal's stream: a terminal, a file, a test
        EventLog("broker", stream=other).warning("w")
        assert other.getvalue().startswith("ts=")
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # the journal is connected elsewhere
        EventLog("broker", stream=writer).warning("w")
        monkeypatch.delenv("JOURNAL_STREAM")
        EventLog("broker", stream=writer).warning("w")
        writer.close()
        assert [line[:3] for line in reader.read().splitlines()] == ["ts=", "ts="]


def test_a_daemon_under_journald_logs_its_start_failure_at_error_priority(tmp_path):
    """The real process, with stderr on a pipe that $JOURNAL_STREAM names."""
    config = tmp_path / "broker.toml"
    config.write_text("[admin]\nport = 70000\n")
    read_fd, write_fd = os.pipe()
    status = os.fstat(write_fd)
    env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
    with os.fdopen(read_fd) as reader:
        with os.fdopen(write_fd, "w") as writer:
            process = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "serve", "--config", str(config)],
                stderr=writer,
                env=env,
            )
        assert process.wait(timeout=60) == 1
        logged, said = reader.read().splitlines()
    assert logged.startswith("<3>ts=")
    assert "event=daemon.start_failed" in logged
    assert said.startswith("<3>wharf-broker: cannot start: ")
