"""SNS benchmark: wharf-broker, LocalStack and moto side by side, in one run.

Same rig as bench/run_sqs.py (whose peer control, /proc meters and CPU pinning this reuses):
each peer runs alone, pinned to core 0; this process drives it from core 1 with the epoll load
generator of bench/loadgen.py, which here sends SNS Publish in the query protocol (form posts
with a SigV4-shaped ``Authorization`` scoped to ``sns``). Scenarios, per peer:

    fanout@N        Publish (1 KiB) closed loop to a topic with N = 1, 10, 100 SQS
                    subscriptions (envelope delivery, signed); publishes/s acknowledged, then
                    the time until every delivery is visible in every queue (LocalStack and
                    moto may acknowledge before delivering; wharf delivers before it answers)
    filtered@1000   Publish to a topic with 1,000 filtered SQS subscriptions of which 4 match
    latency@R       publish-to-receive latency at R msg/s through a raw SQS subscription,
                    long-polling receivers (open loop: latency counts from the scheduled time)

It prints a Markdown table with wharf/LocalStack and wharf/moto ratios and writes
bench/results/sns-<date>.json. Everything binds and talks to 127.0.0.1 only.

    .venv/bin/python bench/run_sns.py [--quick] [--seconds 10] [--peers moto,localstack,wharf]
        [--rounds 3]   # peers alternate A B B A ...; each scenario from its median round

A VM's core speed can drift by several times within one run (each scenario records a probe of
the server core, ``server_core_probe_ms``, and the hypervisor's steal): with ``--rounds`` the
peers take turns, so a drift weighs on every peer alike, and the median round is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import boto3  # setup calls only; the measured traffic is the load generator's
import botocore.config
import fsync_rate  # bench/ is a directory of scripts, not a package
import loadgen as lg
import run_sqs as rs

PEER_ORDER = rs.PEER_ORDER
LABELS = rs.LABELS
BENCH = rs.BENCH
ROOT = rs.ROOT
FORM = "application/x-www-form-urlencoded; charset=utf-8"
FILTERED_SUBSCRIPTIONS = 1000
FILTERED_MATCHES = 4  # 1 exact customer match + 3 "tier" subscriptions


def log(message: str) -> None:
    rs.log(message)


# --------------------------------------------------------------------------- peers


class Peer(rs.Peer):
    """run_sqs's peer, but wharf gets a config with room for 1,000 filter policies per topic
    (AWS's default quota is 200; raising it is a quota increase there, a config key here),
    and ``--signing-processes`` as ``sns.signing_processes``."""

    signing_processes = '"auto"'

    def start(self, pin: bool, *, fresh: bool = True, timeout: float = 180.0) -> None:
        if self.name != "wharf":
            super().start(pin, fresh=fresh, timeout=timeout)
            return
        self.data_dir = Path(tempfile.mkdtemp(prefix="wharf-", dir=self.workdir))
        config = self.data_dir / "broker.toml"
        config.write_text(
            f"""# Written by bench/run_sns.py: durability is the default (every write fsync'd).
[api]
host = "127.0.0.1"
port = {self.port}
[storage]
data_dir = "{self.data_dir / "store"}"
[sns]
max_filter_policies_per_topic = {FILTERED_SUBSCRIPTIONS * 2}
signing_processes = {self.signing_processes}
[admin]
host = "127.0.0.1"
port = {self.admin_port}
[logging]
level = "warning"
"""
        )
        args = [str(ROOT / ".venv/bin/wharf-broker"), "serve", "--config", str(config)]
        if pin:
            args = ["taskset", "-c", str(rs.SERVER_CORE), *args]
        self.logfile = self.workdir / "wharf.log"
        started = time.monotonic()
        with self.logfile.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        while time.monotonic() < started + timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"wharf exited: {self.log_tail()}")
            try:
                lg.create_queue(self.endpoint, "bench-ready")
                self.started_seconds = time.monotonic() - started
                return
            except (OSError, lg.SqsError, ValueError, KeyError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"wharf did not answer in {timeout:.0f} s: {self.log_tail()}")


def clients(peer: Peer) -> tuple[Any, Any]:
    """boto3 SNS and SQS clients for set-up and checks (not for the measured traffic)."""
    options = {
        "endpoint_url": f"http://127.0.0.1:{peer.port}",
        "region_name": "us-east-1",
        "aws_access_key_id": rs.BENCH_ACCESS_KEY,
        "aws_secret_access_key": rs.BENCH_SECRET,
        "config": botocore.config.Config(retries={"max_attempts": 3}, read_timeout=120),
    }
    return boto3.client("sns", **options), boto3.client("sqs", **options)


# --------------------------------------------------------------------------- requests


def publish_request(
    endpoint: lg.Endpoint, topic_arn: str, message: str, attributes: dict[str, str] | None = None
) -> bytes:
    """A Publish in the query protocol, SigV4-shaped (unverified by an anonymous wharf)."""
    fields = [
        ("Action", "Publish"),
        ("Version", "2010-03-31"),
        ("TopicArn", topic_arn),
        ("Message", message),
    ]
    for index, (name, value) in enumerate((attributes or {}).items(), 1):
        prefix = f"MessageAttributes.entry.{index}"
        fields += [
            (f"{prefix}.Name", name),
            (f"{prefix}.Value.DataType", "String"),
            (f"{prefix}.Value.StringValue", value),
        ]
    body = urlencode(fields).encode()
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = f"{amz_date[:8]}/{endpoint.region}/sns/aws4_request"
    head = (
        f"POST / HTTP/1.1\r\nHost: {endpoint.authority}\r\nContent-Type: {FORM}\r\n"
        f"Content-Length: {len(body)}\r\nX-Amz-Date: {amz_date}\r\n"
        f"Authorization: AWS4-HMAC-SHA256 Credential={endpoint.access_key}/{scope}, "
        f"SignedHeaders=content-type;host;x-amz-date, Signature={'0' * 64}\r\n\r\n"
    )
    return head.encode() + body


class Publishing(lg.Workload):
    """Closed loop: every connection publishes the same request back to back."""

    def __init__(self, request: bytes, seconds: float, warmup: float, result: lg.Result) -> None:
        self.request = request
        self.seconds = seconds
        self.warmup = warmup
        self.result = result
        self.latencies: list[int] = []
        self.acknowledged = 0  # warm-up included: every one must be delivered
        self.count_from = 0

    def start(self, engine: lg.Engine, now_ns: int) -> None:
        self.count_from = now_ns + int(self.warmup * 1e9)
        self.next_timer_ns = self.count_from + int(self.seconds * 1e9)
        for slot in range(len(engine.conns)):
            engine.submit(slot, self.request)

    def on_response(
        self, engine: lg.Engine, slot: int, status: int, body: bytes, latency_ns: int, tag: object
    ) -> None:
        if status == 200:
            self.acknowledged += 1
            if time.monotonic_ns() >= self.count_from:
                self.result.ok += 1
                self.result.messages += 1
                self.latencies.append(latency_ns)
        else:
            self.result.errors += 1
            if not self.result.error_sample:
                self.result.error_sample = f"HTTP {status}: {body[:200]!r}"
        engine.submit(slot, self.request)

    def on_timer(self, engine: lg.Engine, now_ns: int) -> None:
        self.finished = True


class PublishLatency(lg.LongPollLatency):
    """loadgen's send-to-receive latency, with SNS Publish as the send (raw delivery)."""

    def __init__(self, topic_arn: str, queue_url: str, **options: Any) -> None:
        super().__init__(queue_url, **options)
        self.topic_arn = topic_arn

    def _dispatch(self, engine: lg.Engine) -> None:
        while self.pending and self.idle:
            scheduled = self.pending.popleft()
            slot = self.idle.pop()
            body = f"{scheduled:020d} " + lg.BODY_1K[21:]
            request = publish_request(engine.endpoint, self.topic_arn, body)
            engine.submit(slot, request, scheduled)


# --------------------------------------------------------------------------- scenarios


def make_topic(
    sns: Any, sqs: Any, name: str, queues: int, **attributes: str
) -> tuple[str, list[str]]:
    topic = sns.create_topic(Name=name)["TopicArn"]
    urls = []
    for index in range(queues):
        url = sqs.create_queue(QueueName=f"{name}-{index}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes=dict(attributes))
        urls.append(url)
    return topic, urls


def drop_topic(sns: Any, sqs: Any, topic: str, urls: list[str]) -> None:
    for url in urls:
        try:
            sqs.delete_queue(QueueUrl=url)
        except Exception:
            pass
    try:
        sns.delete_topic(TopicArn=topic)
    except Exception:
        pass


def visible(sqs: Any, urls: list[str]) -> int:
    total = 0
    for url in urls:
        attributes = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        total += int(attributes["ApproximateNumberOfMessages"])
    return total


def wait_delivered(sqs: Any, urls: list[str], expected: int, limit: float) -> dict[str, Any]:
    """Poll the queues until ``expected`` messages are visible or ``limit`` s pass.

    A poll is one GetQueueAttributes per queue, which loads the server too (100 queues on a
    slow peer take a good share of its core): the pause after a poll is at least twice what
    the poll took, so polling takes at most a third of the wait.
    """
    started = time.monotonic()
    found = visible(sqs, urls)
    polled = time.monotonic() - started
    while found < expected and time.monotonic() - started < limit:
        time.sleep(max(0.5, 2 * polled))
        poll_started = time.monotonic()
        found = visible(sqs, urls)
        polled = time.monotonic() - poll_started
    return {
        "expected_deliveries": expected,
        "visible_deliveries": found,
        "delivered_fraction": round(found / expected, 4) if expected else None,
        "delivery_lag_seconds": round(time.monotonic() - started, 2),
    }


def run_publishing(
    peer: Peer, args: argparse.Namespace, scenario: str, request: bytes, per_publish: int,
    sqs: Any, urls: list[str],
) -> dict[str, Any]:  # fmt: skip
    connections = int(args.peer_connections.get(peer.name, args.connections))
    result = lg.Result(scenario, connections, args.seconds)
    engine = lg.Engine(peer.endpoint, connections)
    workload = Publishing(request, args.seconds, args.warmup, result)
    load_started = time.monotonic()
    with rs.Meter(peer) as meter:
        result.engine = engine.run(workload, args.warmup + args.seconds + 60)
        result.latency = lg.latency_summary(workload.latencies)
        measured = result.to_json() | meter.read(result)
    load_seconds = time.monotonic() - load_started
    expected = workload.acknowledged * per_publish
    delivery = wait_delivered(sqs, urls, expected, args.delivery_wait)
    total = load_seconds + delivery["delivery_lag_seconds"]
    delivery["deliveries_per_second"] = round(delivery["visible_deliveries"] / total, 1)
    delivery["publishes_acknowledged"] = workload.acknowledged
    return measured | {"fanout": per_publish} | delivery


def run_peer(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    sns, sqs = clients(peer)
    results: dict[str, Any] = {}
    stamp = time.strftime("%H%M%S")
    # Latency and the filtered topic first, the fan-outs last (by size): a peer that
    # acknowledges before it delivers carries its backlog into whatever runs next.
    for rate in args.rates:
        name = f"bench-lat{rate:g}-{stamp}"
        topic, urls = make_topic(sns, sqs, name, 1, RawMessageDelivery="true")
        log(f"  {peer.name}: publish->receive latency at {rate:g} msg/s, {args.seconds:g} s")
        senders = args.senders
        result = lg.Result(f"latency@{rate:g}", senders + args.receivers, args.seconds)
        engine = lg.Engine(peer.endpoint, senders + args.receivers)
        workload = PublishLatency(
            topic,
            urls[0],
            rate=rate,
            seconds=args.seconds,
            warmup=args.warmup,
            senders=senders,
            receivers=args.receivers,
            settle=args.settle,
            result=result,
        )
        with rs.Meter(peer) as meter:
            result.engine = engine.run(workload, 0.2 + args.warmup + args.seconds + args.settle + 5)
            result.ok = workload.sent_counted
            result.messages = workload.received_counted
            result.latency = lg.latency_summary(workload.latencies)
            results[f"latency@{rate:g}"] = result.to_json() | meter.read(result) | {
                "achieved_publish_rate": round(workload.sent_counted / args.seconds, 1),
                "saturated": workload.sent_counted < 0.95 * args.seconds * rate,
                "missing_after_settle": workload.sent_ok - len(workload.seen),
                "publish_ack_latency": lg.latency_summary(workload.send_latency),
            }  # fmt: skip
        drop_topic(sns, sqs, topic, urls)
    if not args.no_filtered:
        name = f"bench-filtered-{stamp}"
        log(f"  {peer.name}: {FILTERED_SUBSCRIPTIONS} filtered subscriptions (set-up)")
        set_up = time.monotonic()
        topic = sns.create_topic(Name=name)["TopicArn"]
        urls = []
        for index in range(FILTERED_SUBSCRIPTIONS):
            url = sqs.create_queue(QueueName=f"{name}-{index}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            tiered = index >= FILTERED_SUBSCRIPTIONS - (FILTERED_MATCHES - 1)
            policy = {"tier": ["gold"]} if tiered else {"customer": [f"c{index}"]}
            sns.subscribe(
                TopicArn=topic,
                Protocol="sqs",
                Endpoint=arn,
                Attributes={"FilterPolicy": json.dumps(policy), "RawMessageDelivery": "true"},
            )
            urls.append(url)
        set_up_seconds = round(time.monotonic() - set_up, 1)
        matching = [urls[7], *urls[FILTERED_SUBSCRIPTIONS - (FILTERED_MATCHES - 1) :]]
        request = publish_request(
            peer.endpoint, topic, lg.BODY_1K, {"customer": "c7", "tier": "gold"}
        )
        log(f"  {peer.name}: Publish, {FILTERED_MATCHES} of {FILTERED_SUBSCRIPTIONS} match")
        results["filtered@1000"] = run_publishing(
            peer, args, "filtered@1000", request, 1, sqs, matching[:1]
        ) | {"set_up_seconds": set_up_seconds, "matching_subscriptions": FILTERED_MATCHES}
        results["filtered@1000"]["all_matching_delivered"] = wait_delivered(
            sqs, matching, results["filtered@1000"]["publishes_acknowledged"] * FILTERED_MATCHES,
            args.delivery_wait,
        )  # fmt: skip
        drop_topic(sns, sqs, topic, urls)

    for fanout in args.fanouts:
        name = f"bench-fan{fanout}-{stamp}"
        log(f"  {peer.name}: Publish to {fanout} SQS subscriptions, {args.seconds:g} s")
        topic, urls = make_topic(sns, sqs, name, fanout)
        request = publish_request(peer.endpoint, topic, lg.BODY_1K)
        results[f"fanout@{fanout}"] = run_publishing(
            peer, args, f"fanout@{fanout}", request, fanout, sqs, urls
        )
        drop_topic(sns, sqs, topic, urls)

    return results


# --------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    peers = [name for name in PEER_ORDER if name in report["peers"]]
    scenarios = {name: report["peers"][name].get("scenarios", {}) for name in peers}
    rows: list[tuple[str, list[Any], int, bool]] = []

    def metric(label: str, path: tuple[str, ...], digits: int = 0, higher: bool = True) -> None:
        rows.append((label, [rs._get(scenarios[name], *path) for name in peers], digits, higher))

    for fanout in report["config"]["fanouts"]:
        key = f"fanout@{fanout}"
        metric(f"Publish, {fanout} SQS subs: publishes/s", (key, "messages_per_second"))
        metric("  deliveries/s (until all visible)", (key, "deliveries_per_second"))
        metric("  delivered within the wait (share)", (key, "delivered_fraction"), 3)
        metric("  publish p99 ms", (key, "latency", "p99_ms"), 1, higher=False)
        metric("  server CPU µs/publish", (key, "server_cpu_us_per_message"), 0, higher=False)
        metric("  server core probe ms before/after", (key, "server_core_probe_ms"), 1, False)
        metric("  steal (cores)", (key, "steal_cores"), 3, False)
        if report["config"].get("rounds", 1) > 1:
            metric("  publishes/s of each round", (key, "of_rounds"), 0)
    metric(
        "Publish, 1,000 filtered subs (4 match): publishes/s",
        ("filtered@1000", "messages_per_second"),
    )
    metric("  publish p99 ms", ("filtered@1000", "latency", "p99_ms"), 1, higher=False)
    metric("  server CPU µs/publish", ("filtered@1000", "server_cpu_us_per_message"), 0, False)
    for rate in report["config"]["rates"]:
        key = f"latency@{rate:g}"
        metric(f"publish->receive p50 ms @ {rate:g}/s", (key, "latency", "p50_ms"), 1, False)
        metric(f"publish->receive p99 ms @ {rate:g}/s", (key, "latency", "p99_ms"), 1, False)
    header = ["figure", *(LABELS[name] for name in peers)]
    ratio_columns = [name for name in ("localstack", "moto") if name in peers and "wharf" in peers]
    header += [f"wharf/{LABELS[name]}" for name in ratio_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values, digits, higher in rows:
        by_peer = dict(zip(peers, values, strict=True))
        cells = [label, *(rs._fmt(value, digits) for value in values)]
        for name in ratio_columns:
            ours, theirs = by_peer.get("wharf"), by_peer.get(name)
            cells.append(rs._ratio(ours, theirs) if higher else rs._ratio(theirs, ours))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ratios: higher is better for wharf (latencies and CPU are inverted).")
    lines.append(f"Machine: {report['machine']['cpu_model']}; {report['machine']['layout']}.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per scenario")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="3 s smoke run")
    parser.add_argument("--peers", default=",".join(PEER_ORDER))
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--peer-connections", default="moto=1", help="e.g. moto=1")
    parser.add_argument("--fanouts", default="1,10,100")
    parser.add_argument("--rates", default="100,400", help="latency: publish rates, msg/s")
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--receivers", type=int, default=8)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--delivery-wait", type=float, default=120.0, help="s to wait for queues")
    parser.add_argument(
        "--no-filtered", action="store_true", help="skip the 1,000-subscription run"
    )
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--signing-processes",
        default="auto",
        help="wharf's sns.signing_processes: auto (none when pinned to one core) or a count",
    )
    parser.add_argument("--wait-quiet", type=float, default=30.0)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every peer this many times, alternating (A B B A ...); each scenario is "
        "reported from the round with its median rate, every round is kept in the JSON",
    )
    parser.add_argument("--output", help="JSON path (default bench/results/sns-<date>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.settle = 3.0, 0.5, 3.0
    args.peer_connections = {
        name: int(count)
        for name, _, count in (item.partition("=") for item in args.peer_connections.split(","))
        if name
    }
    args.fanouts = [int(n) for n in args.fanouts.split(",") if n]
    args.rates = [float(rate) for rate in args.rates.split(",") if rate]
    args.peers = [peer for peer in args.peers.split(",") if peer]
    args.pin = (
        not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    )
    return args


def run_one(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    peer = Peer(name, rs.free_port(), workdir, admin_port=rs.free_port() if name == "wharf" else 0)
    entry: dict[str, Any] = {"version": peer.version()}
    if name == "wharf":
        processes = args.signing_processes
        peer.signing_processes = '"auto"' if processes == "auto" else str(int(processes))
        entry["signing_processes"] = processes
    if args.wait_quiet > 0:
        entry["other_cpu_cores_at_start"] = rs.wait_quiet(args.wait_quiet)
    log(f"{name} {entry['version']}: starting on 127.0.0.1:{peer.port}")
    try:
        peer.start(args.pin)
    except RuntimeError as error:
        entry["status"] = f"unavailable: {error}"
        log(f"  {entry['status']}")
        return entry
    entry["status"] = f"answered {peer.started_seconds:.1f} s after start"
    try:
        entry["scenarios"] = run_peer(peer, args)
    except Exception as error:
        entry["status"] += f"; failed: {error!r}"
        log(f"  {name} failed: {error!r}")
    finally:
        peer.stop()
    return entry


def _ranking(key: str, scenario: dict[str, Any]) -> float:
    if key.startswith("latency@"):
        return float(scenario.get("latency", {}).get("p50_ms") or 0.0)
    return float(scenario.get("messages_per_second") or 0.0)


def median_round(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One peer's entry over its rounds: each scenario from its median round (the lower
    middle of an even count), named in ``round``: by rate, or by p50 for the latency runs;
    ``of_rounds`` lists that figure round by round."""
    merged = dict(entries[0])
    keys = [key for entry in entries for key in entry.get("scenarios", {})]
    scenarios: dict[str, Any] = {}
    for key in dict.fromkeys(keys):
        runs = [
            (_ranking(key, entry["scenarios"][key]), number, entry)
            for number, entry in enumerate(entries, 1)
            if key in entry.get("scenarios", {})
        ]
        runs.sort(key=lambda run: run[0])
        _, number, entry = runs[(len(runs) - 1) // 2]
        scenarios[key] = entry["scenarios"][key] | {
            "round": number,
            "of_rounds": [figure for figure, _, _ in sorted(runs, key=lambda run: run[1])],
        }
    if scenarios:
        merged["scenarios"] = scenarios
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pin:
        os.sched_setaffinity(0, {rs.LOADGEN_CORE})
        layout = f"servers on core {rs.SERVER_CORE}, load generator on core {rs.LOADGEN_CORE}"
    else:
        layout = "no pinning"
    workdir = Path(tempfile.mkdtemp(prefix="wharf-bench-sns-"))
    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": rs._cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "layout": layout,
        },
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "peers": {},
    }
    try:
        report["fsync_rate_before"] = fsync_rate.measure(str(workdir), min(3.0, args.seconds))
        order = [name for name in PEER_ORDER if name in args.peers]
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
        for number in range(args.rounds):
            # Every other round in reverse: a drift of the VM's speed over the run then
            # weighs on every peer alike.
            for name in order if number % 2 == 0 else order[::-1]:
                if args.rounds > 1:
                    log(f"round {number + 1} of {args.rounds}")
                rounds[name].append(run_one(name, args, workdir))
        for name, entries in rounds.items():
            report["peers"][name] = median_round(entries)
            if args.rounds > 1:
                report.setdefault("rounds", {})[name] = entries
        report["fsync_rate_after"] = fsync_rate.measure(str(workdir), min(3.0, args.seconds))
    finally:
        output = Path(args.output) if args.output else (
            BENCH / "results" / f"sns-{started.strftime('%Y-%m-%dT%H%M%SZ')}.json"
        )  # fmt: skip
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"results: {output}")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
