from __future__ import annotations

import io
import json
import re

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
