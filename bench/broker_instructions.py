"""wharf-broker's user-space instructions per request under callgrind: a deterministic A/B.

The timed runs (run_sqs.py, run_sns.py) compare wharf with its peers, but on a shared VM their
CPU figures move by 10-25% from run to run, more than most single changes are worth. This
counts instructions instead: the broker (durable defaults, every thread) runs under valgrind's
callgrind, pinned to core 0; for each scenario this script warms it up, zeroes the counters,
sends ``--count`` requests one at a time over one keep-alive connection, dumps the counters
and divides. One request at a time means one store commit (and fsync) per request, where the
timed runs' concurrency shares commits: these figures are the work of a request at
concurrency 1, for comparing two versions of wharf, not for comparing with a peer. The kernel's
work (syscalls, fsync) is not counted.

Scenarios: ``send`` (SendMessage, 1 KiB), ``batch`` (SendMessageBatch of 10), ``drain``
(ReceiveMessage of 10 plus DeleteMessageBatch of what it got, on a queue filled beforehand),
``publish@N`` (SNS Publish, 1 KiB, to a topic with N enveloped SQS subscriptions).

    .venv/bin/python bench/broker_instructions.py [--count 200] [--only send,batch,publish@100]
        [--keep-dumps DIR]   # each scenario's callgrind dump, for callgrind_annotate

Needs valgrind (``apt-get install valgrind``). Binds and talks to 127.0.0.1 only; every loop is
bounded by ``--count`` and every wait by a timeout.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import boto3  # set-up only: the counted requests are prebuilt bytes
import loadgen as lg  # bench/ is a directory of scripts, not a package
import run_sns

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = "send,batch,drain,publish@1,publish@10,publish@100"
READ_TIMEOUT = 120.0  # a request under callgrind is slow, never this slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Connection:
    """One keep-alive connection that sends a request and reads its whole response."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)

    def exchange(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        data = b""
        while True:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError(f"the broker closed the connection: {data[:200]!r}")
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if not sep:
                continue
            length = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
            if length is None:
                raise RuntimeError(f"no Content-Length: {head[:200]!r}")
            if len(body) >= int(length.group(1)):
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"the broker answered {data[:300]!r}")
                return body

    def close(self) -> None:
        self.sock.close()


class Broker:
    """wharf-broker under callgrind, with a config of durable defaults in a temp dir."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        store = work / "store"
        store.mkdir()
        config = work / "broker.toml"
        config.write_text(
            f'[api]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[storage]\ndata_dir = "{store}"\n'
            f'[admin]\nhost = "127.0.0.1"\nport = {free_port()}\n'
            '[logging]\nlevel = "warning"\n'
        )
        self.out = work / "callgrind.out"
        command = [
            "taskset", "-c", "0", "valgrind", "--tool=callgrind",
            f"--callgrind-out-file={self.out}",
            sys.executable, str(ROOT / ".venv/bin/wharf-broker"), "serve", "--config", str(config),
        ]  # fmt: skip
        self.log = (work / "broker.log").open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = lg.Endpoint("127.0.0.1", self.port)
        deadline = time.monotonic() + 300
        while True:
            try:
                lg.create_queue(self.endpoint, "bench-ready")
                return
            except (OSError, lg.SqsError, ValueError, KeyError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the broker did not start: {self.log_tail()}") from None
                time.sleep(0.5)

    def log_tail(self) -> str:
        return (self.work / "broker.log").read_text(errors="replace")[-2000:]

    def count(self, run: Callable[[], int], keep: Path | None = None) -> float:
        """Instructions per request of ``run`` (which returns how many it sent); ``keep``:
        copy the callgrind dump there."""
        control = ["callgrind_control"]
        subprocess.run([*control, "-z", str(self.process.pid)], capture_output=True, check=True)
        requests = run()
        subprocess.run([*control, "-d", str(self.process.pid)], capture_output=True, check=True)
        dumps = [p for p in self.work.glob("callgrind.out.*") if not p.name.endswith(".done")]
        dump = max(dumps, key=lambda p: p.stat().st_mtime)
        totals = subprocess.run(
            ["callgrind_annotate", str(dump)], capture_output=True, text=True, check=True
        ).stdout
        kept = dump.with_name(dump.name + ".done")
        dump.rename(kept)
        if keep is not None:  # for callgrind_annotate: where the instructions go
            shutil.copy(kept, keep)
        match = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", totals) or re.search(
            r"([\d,]+)\s+PROGRAM TOTALS", totals
        )
        if match is None:
            raise RuntimeError(f"no totals in {dump}")
        return int(match.group(1).replace(",", "")) / requests

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def repeat(conn: Connection, request: bytes, count: int) -> Callable[[], int]:
    def run() -> int:
        for _ in range(count):
            conn.exchange(request)
        return count

    return run


def drain(conn: Connection, builder: lg.RequestBuilder, url: str, count: int) -> Callable[[], int]:
    receive = builder.build(
        "ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 60}
    )

    def run() -> int:
        for _ in range(count):
            messages = json.loads(conn.exchange(receive)).get("Messages", [])
            if len(messages) != 10:
                raise RuntimeError(f"the queue ran dry: {len(messages)} received")
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ]
            conn.exchange(
                builder.build("DeleteMessageBatch", {"QueueUrl": url, "Entries": entries})
            )
        return count

    return run


def sns_topic(endpoint: lg.Endpoint, name: str, subscriptions: int) -> str:
    options: dict[str, Any] = {
        "endpoint_url": f"http://127.0.0.1:{endpoint.port}",
        "region_name": "us-east-1",
        "aws_access_key_id": endpoint.access_key,
        "aws_secret_access_key": "bench",
    }
    sns, sqs = boto3.client("sns", **options), boto3.client("sqs", **options)
    topic, _ = run_sns.make_topic(sns, sqs, name, subscriptions)
    return topic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="requests counted per scenario")
    parser.add_argument("--only", default=SCENARIOS, help=f"comma-separated, of {SCENARIOS}")
    parser.add_argument("--keep-dumps", type=Path, help="directory for each scenario's dump")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "taskset"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (apt-get install valgrind util-linux)", file=sys.stderr)
            return 2
    warm = max(10, args.count // 5)
    work = Path(tempfile.mkdtemp(prefix="wharf-instructions-"))
    broker = Broker(work)
    results: dict[str, tuple[float, int]] = {}
    if args.keep_dumps is not None:
        args.keep_dumps.mkdir(parents=True, exist_ok=True)

    def keep(scenario: str) -> Path | None:
        if args.keep_dumps is None:
            return None
        return args.keep_dumps / f"callgrind.{scenario.replace('@', '-')}"

    try:
        conn = Connection(broker.port)
        builder = lg.RequestBuilder(broker.endpoint)
        for scenario in only:
            if scenario in ("send", "batch"):
                url = lg.create_queue(broker.endpoint, f"bench-{scenario}")
                per = 1 if scenario == "send" else 10
                request = (
                    lg.send_request(builder, url) if per == 1 else lg.batch_request(builder, url)
                )
                repeat(conn, request, warm)()
                counted = broker.count(repeat(conn, request, args.count), keep(scenario))
                results[scenario] = (counted, per)
            elif scenario == "drain":
                url = lg.create_queue(broker.endpoint, "bench-drain")
                fill = lg.batch_request(builder, url)
                repeat(conn, fill, warm + args.count)()
                drain(conn, builder, url, warm)()
                counted = broker.count(drain(conn, builder, url, args.count), keep(scenario))
                results[scenario] = (counted, 10)
            elif scenario.startswith("publish@"):
                fanout = int(scenario.partition("@")[2])
                topic = sns_topic(broker.endpoint, f"bench-fan{fanout}", fanout)
                request = run_sns.publish_request(broker.endpoint, topic, lg.BODY_1K)
                repeat(conn, request, warm)()
                counted = broker.count(repeat(conn, request, args.count), keep(scenario))
                results[scenario] = (counted, fanout)
            else:
                raise SystemExit(f"unknown scenario {scenario!r}; known: {SCENARIOS}")
        conn.close()
    finally:
        broker.stop()
    print(f"user-space instructions per request, {args.count} requests each, one at a time:")
    for scenario, (per_request, per) in results.items():
        each = per_request / per
        print(f"  {scenario:12s} {per_request:14,.0f} per request  {each:12,.0f} per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
