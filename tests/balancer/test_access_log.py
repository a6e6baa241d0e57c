from __future__ import annotations

import dataclasses
import errno
import io
import os
import re
import shlex
import subprocess
import sys

from balancer.access_log import (
    WRITE_FAILED_WARNING_SECONDS,
    AccessEntry,
    AccessLogs,
    AccessLogWriter,
    format_entry,
    iso_time,
    quote,
)
from balancer.config import AccessLog
from monitoring.logging import EventLog

# AWS's Athena table for ALB access logs, input.regex (with the SerDe string's escapes
# undone): https://docs.aws.amazon.com/athena/latest/ug/create-alb-access-logs-table.html,
# "includes the recently added classification, classification_reason, and conn_trace_id
# ('traceability ID', or TID) columns". What ALB log parsers read: a line it does not match
# is a row of NULLs. Its 35 groups are the 34 columns (client and target split in two) and
# whatever follows conn_trace_id.
ATHENA_ALB_REGEX = re.compile(
    r"([^ ]*) ([^ ]*) ([^ ]*) ([^ ]*):([0-9]*) ([^ ]*)[:-]([0-9]*) ([-.0-9]*) ([-.0-9]*)"
    r' ([-.0-9]*) (|[-0-9]*) (-|[-0-9]*) ([-0-9]*) ([-0-9]*) "([^ ]*) (.*) (- |[^ ]*)"'
    r' "([^"]*)" ([A-Z0-9-_]+) ([A-Za-z0-9.-]*) ([^ ]*) "([^"]*)" "([^"]*)" "([^"]*)"'
    r' ([-.0-9]*) ([^ ]*) "([^"]*)" "([^"]*)" "([^ ]*)" "([^\s]+?)" "([^\s]+)" "([^ ]*)"'
    r' "([^ ]*)" ?([^ ]*)? ?( .*)?'
)
ATHENA_COLUMNS = (
    "type",
    "time",
    "elb",
    "client_ip",
    "client_port",
    "target_ip",
    "target_port",
    "request_processing_time",
    "target_processing_time",
    "response_processing_time",
    "elb_status_code",
    "target_status_code",
    "received_bytes",
    "sent_bytes",
    "request_verb",
    "request_url",
    "request_proto",
    "user_agent",
    "ssl_cipher",
    "ssl_protocol",
    "target_group_arn",
    "trace_id",
    "domain_name",
    "chosen_cert_arn",
    "matched_rule_priority",
    "request_creation_time",
    "actions_executed",
    "redirect_url",
    "lambda_error_reason",
    "target_port_list",
    "target_status_code_list",
    "classification",
    "classification_reason",
    "conn_trace_id",
    "rest",
)
TID = re.compile(r"TID_[0-9a-f]{32}")


def athena_row(line: str) -> dict[str, str | None]:
    """The columns Athena reads from an access-log line (AssertionError: no match)."""
    match = ATHENA_ALB_REGEX.fullmatch(line)
    assert match is not None, f"Athena's regex does not match: {line}"
    return dict(zip(ATHENA_COLUMNS, match.groups(), strict=True))


ENTRY = AccessEntry(
    time=1530570180.186641,
    elb="front",
    client_ip="192.168.131.39",
    client_port=2817,
    target="10.0.0.1:80",
    request_processing_time=0.0,
    target_processing_time=0.001,
    response_processing_time=0.0,
    elb_status_code=200,
    target_status_code=200,
    received_bytes=34,
    sent_bytes=366,
    request="GET http://www.example.com:80/ HTTP/1.1",
    user_agent="curl/7.46.0",
    target_group="web",
    trace_id="Root=1-58337262-36d228ad5d99923122bbe354",
    matched_rule_priority=0,
    request_creation_time=1530570168.364,
    actions_executed="forward",
)


def test_a_line_has_albs_30_fields_in_order():
    line = format_entry(ENTRY)
    fields = shlex.split(line)
    assert len(fields) == 30
    assert fields[:12] == [
        "http",
        "2018-07-02T22:23:00.186641Z",
        "app/front",
        "192.168.131.39:2817",
        "10.0.0.1:80",
        "0.000",
        "0.001",
        "0.000",
        "200",
        "200",
        "34",
        "366",
    ]
    assert fields[12] == "GET http://www.example.com:80/ HTTP/1.1"
    assert fields[16] == "web"
    assert fields[20:23] == ["0", "2018-07-02T22:22:48.364000Z", "forward"]
    assert fields[25:27] == ["10.0.0.1:80", "200"]
    assert fields[29] == "-"  # no connection traceability ID given


def test_conn_trace_id_is_the_last_field_unquoted_as_athena_reads_it():
    tid = "TID_" + "0123456789abcdef" * 2
    line = format_entry(dataclasses.replace(ENTRY, conn_trace_id=tid))
    assert line.endswith(f'"-" "-" {tid}')  # after classification and its reason
    row = athena_row(line)
    assert row["conn_trace_id"] == tid
    assert row["rest"] is None  # nothing after it: ALB's field count
    assert (row["request_verb"], row["request_url"], row["request_proto"]) == (
        "GET",
        "http://www.example.com:80/",
        "HTTP/1.1",
    )


def test_a_request_never_dispatched_has_minus_ones_and_dashes():
    entry = AccessEntry(
        time=0.0, elb="f", client_ip="2001:db8::1", client_port=5, elb_status_code=400
    )
    fields = shlex.split(format_entry(entry))
    assert fields[3] == "[2001:db8::1]:5"
    assert fields[4:10] == ["-", "-1", "-1", "-1", "400", "-"]


def test_quoted_fields_cannot_break_the_line():
    assert quote(None) == '"-"'
    assert quote('a"b\\c\nd\x00') == '"a\\"b\\\\c\\x0ad\\x00"'
    assert "\n" not in format_entry(
        AccessEntry(time=0, elb="f", client_ip="1.2.3.4", client_port=1, user_agent="x\ny")
    )


def test_iso_time_has_microseconds():
    assert iso_time(0.5) == "1970-01-01T00:00:00.500000Z"


def test_writers_append_lines_and_are_shared_per_destination(tmp_path):
    path = tmp_path / "a.log"
    logs = AccessLogs()
    settings = AccessLog(enabled=True, destination=str(path))
    writer = logs.get(settings)
    assert writer is logs.get(settings)
    assert logs.get(AccessLog()) is None  # off by default
    assert writer is not None
    writer.write(ENTRY)
    writer.write(ENTRY)
    logs.flush()
    assert path.read_text().count("\n") == 2
    logs.retain(set())
    logs.close()
    stderr = AccessLogWriter("stderr")
    stderr.close()  # never closes the process's stderr


def test_failed_writes_are_counted_and_warned_about_once_a_minute(tmp_path):
    """A full disk (ENOSPC: /dev/full) lost lines without a word or a number anywhere."""
    now = [1000.0]
    output = io.StringIO()
    logs = AccessLogs(EventLog("balancer", stream=output), clock=lambda: now[0])
    good = tmp_path / "a.log"
    assert logs.get(AccessLog(enabled=True, destination=str(good))) is not None
    full = logs.get(AccessLog(enabled=True, destination="/dev/full"))
    assert full is not None
    assert logs.statistics() == {"/dev/full": 0, str(good): 0}  # every series from 0

    def warnings() -> list[str]:
        return [line for line in output.getvalue().splitlines() if "write_failed" in line]

    full.write(ENTRY)
    logs.flush()  # the buffered line meets the full disk
    assert logs.statistics() == {"/dev/full": 1, str(good): 0}
    (warning,) = warnings()
    assert "level=warning event=access_log.write_failed" in warning
    assert 'destination=/dev/full error="No space left on device" errors=1' in warning
    for _ in range(3):
        full.write(ENTRY)
        logs.flush()
    assert logs.statistics()["/dev/full"] == 4
    assert len(warnings()) == 1  # within the minute: counted, not logged
    now[0] += WRITE_FAILED_WARNING_SECONDS
    logs.flush()  # the lines kept from the last failure fail again
    assert logs.statistics()["/dev/full"] == 5
    assert len(warnings()) == 2
    assert "errors=5" in warnings()[-1]
    logs.retain({str(good)})  # its close fails too: counted, never raised
    assert logs.statistics()["/dev/full"] == 6  # kept when the destination goes
    logs.close()
    assert good.read_text() == ""


def test_a_reopen_on_a_full_disk_is_no_open_failure():
    """The old file's last flush failing is a lost write, not a file that cannot be opened
    (which refuses a reload)."""
    logs = AccessLogs()
    full = logs.get(AccessLog(enabled=True, destination="/dev/full"))
    assert full is not None
    full.write(ENTRY)
    assert logs.reopen_all() == {}
    assert logs.statistics() == {"/dev/full": 1}
    logs.close()


def test_a_fifo_no_process_reads_is_refused_without_waiting(tmp_path):
    # A blocking open of a FIFO for writing waits for a reader, and the event loop with it:
    # the open must fail at once, so the start or the reload is refused naming the file.
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    script = (
        "import sys\n"
        "from balancer.access_log import AccessLogWriter\n"
        "try:\n"
        "    AccessLogWriter(sys.argv[1])\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(fifo)], capture_output=True, text=True, timeout=20
    )
    assert result.stdout.strip() == str(errno.ENXIO), result


def test_a_fifo_with_a_reader_takes_the_lines(tmp_path):
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        writer = AccessLogWriter(str(fifo))
        writer.write(ENTRY)
        writer.flush()
        assert os.read(reader, 65536).decode() == format_entry(ENTRY) + "\n"
        writer.close()
    finally:
        os.close(reader)
