"""SQS benchmark: moto, LocalStack and wharf-broker side by side, in one run.

Every peer runs alone (one after the other, in the same order, on the same machine), pinned
to core 0 with taskset; this process, which is also the load generator (bench/loadgen.py),
pins itself to core 1. Each peer gets the same scenarios with the same load generator:

    send            SendMessage, 1 KiB bodies, closed loop over --connections connections
    send_batch      SendMessageBatch of 10 x 1 KiB
    receive_delete  ReceiveMessage(10) + DeleteMessageBatch draining a pre-filled queue
    latency@R       send-to-receive latency at R msg/s with WaitTimeSeconds=20 receivers
    depth (wharf)   receive+delete cost at 10 thousand (and with --million 1 million) queued
    fsync (wharf)   messages per commit from the store metrics; fsyncs per message via strace

It prints a Markdown table (absolute figures, wharf/LocalStack and wharf/moto ratios) and
writes bench/results/sqs-<date>.json. Everything binds and talks to 127.0.0.1 only; every
loop is bounded by time or count.

    .venv/bin/python bench/run_sqs.py [--quick] [--seconds 10] [--peers moto,localstack,wharf]
                                      [--million] [--install]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import core_probe
import fsync_rate  # bench/ is a directory of scripts, not a package
import loadgen as lg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_SH = BENCH / "peers.sh"
PEER_ORDER = ("moto", "localstack", "wharf")
LABELS = {"moto": "moto", "localstack": "LocalStack", "wharf": "wharf"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CORE = 0
LOADGEN_CORE = 1
SERVER_IDLE_LIMIT = 60.0  # s to wait, before a measured scenario, for the server to go idle
SERVER_IDLE_CORES = 0.05


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- /proc


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    total = 0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def tree_rss_mib(pid: int) -> float:
    return sum(status_kib(member, "VmRSS") for member in _tree(pid)) / 1024


def io_write_bytes(pid: int) -> int:
    total = 0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this VM wanted it (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return int(fields[7]) / CLK_TCK


def server_core_speed_ms() -> float | None:
    """:func:`core_probe.speed_ms` on the server core."""
    return core_probe.speed_ms(SERVER_CORE)


# --------------------------------------------------------------------------- peers


@dataclass
class Peer:
    name: str
    port: int
    workdir: Path
    admin_port: int = 0
    verify: bool = False
    process: subprocess.Popen[bytes] | None = None
    logfile: Path | None = None
    data_dir: Path | None = None
    started_seconds: float = 0.0

    @property
    def endpoint(self) -> lg.Endpoint:
        if self.verify:
            return lg.Endpoint("127.0.0.1", self.port, secret_key=BENCH_SECRET)
        return lg.Endpoint("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, pin: bool, *, fresh: bool = True, timeout: float = 180.0) -> None:
        args = [str(PEERS_SH), "start", self.name, str(self.port)]
        if self.name == "wharf":
            if fresh or self.data_dir is None:
                self.data_dir = Path(tempfile.mkdtemp(prefix="wharf-", dir=self.workdir))
            args += [str(self.admin_port), str(self.data_dir)]
            if self.verify:
                args.append("verify")
        if pin:
            args = ["taskset", "-c", str(SERVER_CORE), *args]
        self.logfile = self.workdir / f"{self.name}.log"
        env = dict(os.environ)
        env["LOCALSTACK_FS_ROOT"] = str(self.workdir / "localstack-data")
        started = time.monotonic()
        with self.logfile.open("ab") as out:
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        deadline = started + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                lg.create_queue(self.endpoint, "bench-ready")
                self.started_seconds = time.monotonic() - started
                return
            except (OSError, lg.SqsError, ValueError, KeyError) as error:
                last_error = str(error)
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer CreateQueue in {timeout:.0f} s: {last_error[:200]}"
            f" (log: {self.log_tail()})"
        )

    def log_tail(self, lines: int = 3) -> str:
        if self.logfile is None or not self.logfile.exists():
            return ""
        tail = self.logfile.read_text(errors="replace").strip().splitlines()[-lines:]
        return " / ".join(line.strip()[:300] for line in tail)

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.process = None

    def version(self) -> str:
        if self.name == "moto":
            return _pkg_version(BENCH / ".peers/moto/bin/python", "moto")
        if self.name == "localstack":
            return _pkg_version(BENCH / ".peers/localstack/bin/python", "localstack-core")
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"{head}{'+dirty' if dirty else ''}"


BENCH_ACCESS_KEY = "AKIDWHARFBENCH000000"
BENCH_SECRET = "wharf-bench-secret-key-not-a-secret"


def _pkg_version(python: Path, package: str) -> str:
    if not python.exists():
        return "not installed"
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


# --------------------------------------------------------------------------- wharf metrics


def scrape(admin_port: int) -> dict[str, float]:
    """Prometheus text from wharf's admin port, as {sample name with labels: value}."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def commit_counters(samples: dict[str, float]) -> dict[str, float]:
    """Commits and mutations from the store's metrics, whatever their exact names."""
    found: dict[str, float] = {}
    for name, value in samples.items():
        if "{" in name or "commit" not in name:
            continue
        if re.search(r"commits?(_total)?$", name):
            found.setdefault("commits", value)
        elif re.search(r"per_commit_sum$", name):
            found["mutations"] = value
        elif re.search(r"(per_commit|commit_(duration_)?seconds)_count$", name):
            found.setdefault("commits", value)
        elif re.search(r"commit_(duration_)?seconds_sum$", name):
            found["commit_seconds"] = value
    return found


def strace_fsync_sample(
    peer: Peer, args: argparse.Namespace, queue_url: str, seconds: float
) -> dict[str, Any]:
    """Count fsync/fdatasync calls with strace -c during a short SendMessage run.

    ptrace stops the broker at every traced syscall of every thread, so the broker runs
    slower than untraced; the ratio of messages to fsyncs is what this is for.
    """
    if shutil.which("strace") is None:
        return {"skipped": "strace not installed"}
    out = peer.workdir / "strace.txt"
    tracer = subprocess.Popen(
        ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), "-p", str(peer.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    endpoint = peer.endpoint
    builder = lg.RequestBuilder(endpoint)
    before = commit_counters(scrape(peer.admin_port)) if peer.admin_port else {}
    result = lg.run_fixed(
        endpoint,
        "send_strace",
        lg.send_request(builder, queue_url),
        connections=connections_for(peer.name, args),
        seconds=seconds,
        warmup=0.0,
    )
    after = commit_counters(scrape(peer.admin_port)) if peer.admin_port else {}
    tracer.send_signal(signal.SIGINT)
    try:
        tracer.wait(timeout=15)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait()
    calls = 0
    text = out.read_text() if out.exists() else ""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync") and len(parts) >= 5:
            calls += int(parts[3])
    # messages sent while traced include the in-flight tail; close enough over seconds
    return {
        "method": "strace -f -c -e trace=fsync,fdatasync -p PID during a SendMessage run",
        "seconds": seconds,
        "messages": result.messages,
        "messages_per_second_traced": round(result.messages_per_second, 1),
        "fsync_calls": calls,
        "store_commits_meanwhile": after.get("commits", 0.0) - before.get("commits", 0.0),
        "messages_per_fsync": round(result.messages / calls, 2) if calls else None,
        "strace_summary": text.strip().splitlines()[-6:],
    }


def profile_run(
    peer: Peer, args: argparse.Namespace, scenario: str, request: bytes, per_request: int
) -> dict[str, Any]:
    """Where the server's CPU goes: py-spy samples it during an extra (unmeasured) run."""
    spy = BENCH / ".peers/tools/bin/py-spy"
    if not spy.exists():
        return {"skipped": "py-spy missing: bench/peers.sh install tools"}
    seconds = max(2, round(min(args.seconds, 5.0)))
    raw = peer.workdir / f"profile-{scenario}.txt"
    command = [str(spy), "record", "--nonblocking", "--threads", "-r", "250", "-d"]
    command += [str(seconds), "-f", "raw", "-o", str(raw), "-p", str(peer.pid)]
    spy_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    lg.run_fixed(
        peer.endpoint,
        f"profile_{scenario}",
        request,
        connections=connections_for(peer.name, args),
        seconds=seconds,
        warmup=0.0,
        per_request=per_request,
    )
    try:
        spy_process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy_process.kill()
        spy_process.wait()
    if not raw.exists():
        return {"skipped": "py-spy wrote nothing"}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if not frame.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def top(table: dict[str, int], n: int) -> list[list[Any]]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:n]
        return [
            [round(100 * count / total, 1), frame] for count, frame in ((c, f) for f, c in ranked)
        ]

    return {
        "method": "py-spy record --nonblocking --threads -r 250 during an extra run",
        "samples": total,
        "self_percent": top(own, 20),
        "inclusive_percent": top(inclusive, 30),
    }


# --------------------------------------------------------------------------- scenarios


@dataclass
class Meter:
    """Server CPU, machine CPU, RSS and disk writes around one scenario."""

    peer: Peer
    server_cpu: float = 0.0
    busy: float = 0.0
    loadgen_cpu: float = 0.0
    started: float = 0.0
    io: int = 0
    samples: dict[str, float] = field(default_factory=dict)
    idle_wait: dict[str, float] = field(default_factory=dict)
    steal: float = 0.0
    speed_before: float | None = None

    def __enter__(self) -> Meter:
        self.idle_wait = wait_server_idle(self.peer.pid)
        self.speed_before = server_core_speed_ms()
        self.steal = steal_seconds()
        self.server_cpu = tree_cpu_seconds(self.peer.pid)
        self.busy = machine_busy_seconds()
        usage = os.times()
        self.loadgen_cpu = usage.user + usage.system
        self.io = io_write_bytes(self.peer.pid)
        if self.peer.admin_port:
            self.samples = commit_counters(scrape(self.peer.admin_port))
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, result: lg.Result) -> dict[str, Any]:
        """Rates over the whole metered time (warm-up included) divided by the message rate
        of the counted window: per-message figures that do not mix the two spans."""
        wall = time.monotonic() - self.started
        server = tree_cpu_seconds(self.peer.pid) - self.server_cpu
        usage = os.times()
        loadgen = usage.user + usage.system - self.loadgen_cpu
        other = machine_busy_seconds() - self.busy - server - loadgen
        written = io_write_bytes(self.peer.pid) - self.io
        steal = steal_seconds() - self.steal
        rate = result.messages_per_second

        def per_message(total: float, scale: float = 1.0) -> float | None:
            return round(scale * total / wall / rate, 2) if rate else None

        measured: dict[str, Any] = {
            "server_cpu_cores": round(server / wall, 3),
            "server_cpu_us_per_message": per_message(server, 1e6),
            "other_cpu_cores": round(max(0.0, other) / wall, 3),
            "server_rss_mib": round(tree_rss_mib(self.peer.pid), 1),
            "disk_write_bytes": written,
            "disk_bytes_per_message": per_message(written),
            "server_idle_wait": self.idle_wait,
            "steal_cores": round(steal / wall, 3),
            "server_core_probe_ms": [self.speed_before, server_core_speed_ms()],
        }
        if self.peer.admin_port:
            after = commit_counters(scrape(self.peer.admin_port))
            delta = {key: after[key] - self.samples.get(key, 0.0) for key in after}
            commits = delta.get("commits", 0.0)
            if commits:
                measured["store"] = {
                    "commits": commits,
                    "mutations": delta.get("mutations"),
                    "messages_per_commit": round(rate / (commits / wall), 2),
                    "commits_per_second": round(commits / wall, 1),
                    "mean_commit_ms": round(1e3 * delta["commit_seconds"] / commits, 3)
                    if "commit_seconds" in delta
                    else None,
                }
        return measured


def _cleanup(endpoint: lg.Endpoint, url: str) -> None:
    try:
        lg.delete_queue(endpoint, url)
    except (OSError, lg.SqsError, ValueError):
        pass


def run_peer(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    endpoint = peer.endpoint
    builder = lg.RequestBuilder(endpoint)
    stamp = time.strftime("%H%M%S")
    conns = connections_for(peer.name, args)

    # 0. memory: RSS of the fresh server, idle and with a queue of 1 KiB messages
    rss_idle = tree_rss_mib(peer.pid)
    url = lg.create_queue(endpoint, f"bench-memory-{stamp}")
    log(f"  {peer.name}: RSS with up to {args.memory_fill:,} messages queued")
    filled = lg.fill_queue(
        endpoint,
        url,
        args.memory_fill,
        connections=min(16, conns),
        max_seconds=args.memory_seconds,
    )
    time.sleep(0.5)
    rss_full = tree_rss_mib(peer.pid)
    results["memory"] = {
        "server_rss_mib_idle": round(rss_idle, 1),
        "messages": filled["acked"],
        "server_rss_mib": round(rss_full, 1),
        "rss_mib_per_10k_messages": round(
            (rss_full - rss_idle) * 10_000 / max(1, filled["acked"]), 2
        ),
        "fill": filled,
    }
    _cleanup(endpoint, url)

    # 1. SendMessage
    url = lg.create_queue(endpoint, f"bench-send-{stamp}")
    log(f"  {peer.name}: SendMessage, {conns} connections, {args.seconds:g} s")
    with Meter(peer) as meter:
        result = lg.run_fixed(
            endpoint,
            "send",
            lg.send_request(builder, url),
            connections=conns,
            seconds=args.seconds,
            warmup=args.warmup,
        )
        results["send"] = result.to_json() | meter.read(result)
    if peer.name == "wharf" and not args.no_strace:
        log(f"  {peer.name}: fsync sample under strace")
        results["fsync_strace"] = strace_fsync_sample(peer, args, url, min(3.0, args.seconds))
    _cleanup(endpoint, url)

    # 2. SendMessageBatch of 10
    url = lg.create_queue(endpoint, f"bench-batch-{stamp}")
    log(f"  {peer.name}: SendMessageBatch(10), {conns} connections, {args.seconds:g} s")
    with Meter(peer) as meter:
        result = lg.run_fixed(
            endpoint,
            "send_batch",
            lg.batch_request(builder, url),
            connections=conns,
            seconds=args.seconds,
            warmup=args.warmup,
            per_request=10,
        )
        results["send_batch"] = result.to_json() | meter.read(result)
    batch_rate = result.messages_per_second
    if args.profile and peer.name in args.profile:
        log(f"  {peer.name}: profiling SendMessage and SendMessageBatch with py-spy")
        results["profile_send"] = profile_run(peer, args, "send", lg.send_request(builder, url), 1)
        results["profile_send_batch"] = profile_run(
            peer, args, "send_batch", lg.batch_request(builder, url), 10
        )
    _cleanup(endpoint, url)

    # 3. ReceiveMessage(10) + DeleteMessageBatch draining a full queue
    fill = int(min(args.drain_max, max(args.drain_min, batch_rate * args.seconds)))
    url = lg.create_queue(endpoint, f"bench-drain-{stamp}")
    rss_empty = tree_rss_mib(peer.pid)
    log(f"  {peer.name}: filling {fill:,} messages for receive+delete")
    filled = lg.fill_queue(
        endpoint,
        url,
        fill,
        connections=min(16, conns),
        max_seconds=args.fill_timeout,
        progress_every=15,
    )
    rss_full = tree_rss_mib(peer.pid)
    log(f"  {peer.name}: receive(10)+DeleteMessageBatch, {conns} connections")
    with Meter(peer) as meter:
        result = lg.run_drain(
            endpoint, url, target=filled["acked"], connections=conns, seconds=args.seconds
        )
        results["receive_delete"] = (
            result.to_json()
            | meter.read(result)
            | {
                "fill": filled,
                "server_rss_mib_empty": round(rss_empty, 1),
                "server_rss_mib_full": round(rss_full, 1),
                "rss_mib_per_10k_messages": round(
                    (rss_full - rss_empty) * 10_000 / max(1, filled["acked"]), 2
                ),
            }
        )
    _cleanup(endpoint, url)

    # 4. send-to-receive latency with long polling at fixed rates
    for rate in args.rates:
        url = lg.create_queue(endpoint, f"bench-lat{rate:g}-{stamp}")
        log(f"  {peer.name}: send->receive latency at {rate:g} msg/s, {args.seconds:g} s")
        with Meter(peer) as meter:
            result = lg.run_latency(
                endpoint,
                url,
                rate=rate,
                seconds=args.seconds,
                warmup=args.warmup,
                senders=args.senders,
                receivers=args.receivers,
                settle=args.settle,
            )
            results[f"latency@{rate:g}"] = result.to_json() | meter.read(result)
        _cleanup(endpoint, url)
    return results


def connections_for(peer: str, args: argparse.Namespace) -> int:
    """Connections for a peer's closed-loop scenarios: --connections unless overridden."""
    return int(args.peer_connections.get(peer, args.connections))


def run_depth(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    """wharf only: receive+delete cost at 10 thousand and (optionally) 1 million queued."""
    results: dict[str, Any] = {}
    endpoint = peer.endpoint
    drain = args.depth_drain
    depths = [10_000] + ([1_000_000] if args.million else [])
    results["rss_idle_mib"] = round(tree_rss_mib(peer.pid), 1)
    for depth in depths:
        url = lg.create_queue(endpoint, f"bench-depth{depth}-{time.strftime('%H%M%S')}")
        log(f"  {peer.name}: filling {depth + drain:,} messages (depth {depth:,})")
        filled = lg.fill_queue(
            endpoint,
            url,
            depth + drain,
            connections=16,
            max_seconds=args.fill_timeout,
            progress_every=15,
        )
        log(f"  {peer.name}: receive+delete {drain:,} messages at depth {depth:,}")
        with Meter(peer) as meter:
            result = lg.run_drain(
                endpoint, url, target=drain, connections=args.connections, seconds=args.seconds
            )
            entry = result.to_json() | meter.read(result) | {"fill": filled}
        entry["stored_after"] = max(0, filled["acked"] - result.messages)
        entry["server_rss_mib_stored"] = round(tree_rss_mib(peer.pid), 1)
        entry["server_vmhwm_mib"] = round(status_kib(peer.pid, "VmHWM") / 1024, 1)
        results[f"depth_{depth}"] = entry
        if depth == depths[-1] and depth >= 1_000_000 and not args.no_restart:
            log(f"  {peer.name}: restart on the same data directory with {depth:,} stored")
            peer.stop()
            peer.start(args.pin, fresh=False, timeout=args.fill_timeout)
            time.sleep(1.0)
            results["restart_with_1m"] = {
                "seconds_to_answer": round(peer.started_seconds, 2),
                "server_rss_mib": round(tree_rss_mib(peer.pid), 1),
                "depth": lg.queue_depth(endpoint, url),
            }
        elif depth != depths[-1]:
            _cleanup(endpoint, url)
    return results


# --------------------------------------------------------------------------- ceiling


def loadgen_ceiling(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """SendMessage against a canned-reply server: what the load generator itself can drive."""
    port = free_port()
    command = [sys.executable, str(BENCH / "canned_server.py"), "--port", str(port)]
    command += ["--seconds", str(args.seconds * 3 + 30)]
    if args.pin:
        command = ["taskset", "-c", str(SERVER_CORE), *command]
    with (workdir / "canned.log").open("ab") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        endpoint = lg.Endpoint("127.0.0.1", port)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        builder = lg.RequestBuilder(endpoint)
        request = lg.send_request(builder, f"http://127.0.0.1:{port}/000000000000/q")
        figures: dict[str, Any] = {}
        for connections in sorted({args.connections, 64}):
            server_cpu = tree_cpu_seconds(server.pid)
            started = time.monotonic()
            result = lg.run_fixed(
                endpoint,
                "canned",
                request,
                connections=connections,
                seconds=args.seconds,
                warmup=args.warmup,
            )
            wall = time.monotonic() - started
            figures[f"c{connections}"] = result.to_json() | {
                "server_cpu_cores": round((tree_cpu_seconds(server.pid) - server_cpu) / wall, 3)
            }
        return figures
    finally:
        server.terminate()
        server.wait(timeout=10)


# --------------------------------------------------------------------------- report


def _get(data: dict[str, Any], *path: str) -> Any:
    current: Any = data
    for key in path:
        if not isinstance(current, dict) or key not in current:
            return None
        current = current[key]
    return current


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    if isinstance(value, list):  # a before/after pair
        return " / ".join(_fmt(item, digits) for item in value)
    return str(value)


def _ratio(numerator: Any, denominator: Any) -> str:
    numbers = (float, int)
    if not isinstance(numerator, numbers) or not isinstance(denominator, numbers):
        return "—"
    if not numerator or not denominator:
        return "—"
    return f"{numerator / denominator:.2f}x"


def markdown(report: dict[str, Any]) -> str:
    peers = [name for name in PEER_ORDER if name in report["peers"]]
    scen = {name: report["peers"][name].get("scenarios", {}) for name in peers}
    rows: list[tuple[str, list[Any], int, bool]] = []  # label, values, digits, higher_is_better

    def metric(label: str, path: tuple[str, ...], digits: int = 0, higher: bool = True) -> None:
        rows.append((label, [_get(scen[name], *path) for name in peers], digits, higher))

    metric("SendMessage, 1 KiB (msg/s)", ("send", "messages_per_second"))
    metric("SendMessageBatch of 10 (msg/s)", ("send_batch", "messages_per_second"))
    metric(
        "ReceiveMessage(10)+DeleteMessageBatch, full queue (msg/s)",
        ("receive_delete", "messages_per_second"),
    )
    for rate in report["config"]["rates"]:
        key = f"latency@{rate:g}"
        metric(f"send→receive p50 at {rate:g} msg/s (ms)", (key, "latency", "p50_ms"), 1, False)
        metric(f"send→receive p99 at {rate:g} msg/s (ms)", (key, "latency", "p99_ms"), 1, False)
    metric("SendMessage p99 request latency (ms)", ("send", "latency", "p99_ms"), 1, False)
    metric("server CPU per SendMessage (µs)", ("send", "server_cpu_us_per_message"), 0, False)
    metric(
        "server CPU per message, SendMessageBatch (µs)",
        ("send_batch", "server_cpu_us_per_message"),
        0,
        False,
    )
    metric("server CPU during SendMessage (cores)", ("send", "server_cpu_cores"), 2)
    metric("load generator CPU during SendMessage (cores)", ("send", "loadgen", "cpu_share"), 2)
    metric("other processes' CPU during SendMessage (cores)", ("send", "other_cpu_cores"), 2)
    metric("  of it, steal (cores)", ("send", "steal_cores"), 3)
    metric("server core probe, SendMessage (ms before/after)", ("send", "server_core_probe_ms"), 1)
    metric("server RSS, fresh and idle (MiB)", ("memory", "server_rss_mib_idle"), 0, False)
    metric("server RSS, fresh, N messages queued (MiB)", ("memory", "server_rss_mib"), 0, False)
    metric("  … N (1 KiB messages stored)", ("memory", "messages"))
    metric(
        "  … RSS growth per 10,000 messages (MiB)",
        ("memory", "rss_mib_per_10k_messages"),
        1,
        False,
    )

    header = ["scenario", *[LABELS[name] for name in peers]]
    ratios = [p for p in ("localstack", "moto") if p in peers and "wharf" in peers]
    header += [f"wharf/{LABELS[p]}" for p in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, values, digits, higher in rows:
        cells = [label, *[_fmt(v, digits) for v in values]]
        wharf_value = values[peers.index("wharf")] if "wharf" in peers else None
        for other in ratios:
            other_value = values[peers.index(other)]
            if label.startswith(
                ("load generator", "other processes", "  … N", "server CPU during")
            ):
                cells.append("")
            else:  # wharf/peer; where lower is better (latency, CPU, RSS) < 1 favours wharf
                cells.append(_ratio(wharf_value, other_value) + ("" if higher else " ↓"))
        lines.append("| " + " | ".join(cells) + " |")

    status = [
        f"- {LABELS[name]} {report['peers'][name].get('version', '')}: "
        f"{report['peers'][name].get('status', '')}"
        for name in peers
    ]
    notes = []
    for name in peers:
        for key, value in scen[name].items():
            if isinstance(value, dict) and value.get("saturated"):
                notes.append(
                    f"- {LABELS[name]} could not keep up at {key}: "
                    f"{value['achieved_send_rate']:,.0f} msg/s sent"
                )
            if isinstance(value, dict) and value.get("errors"):
                notes.append(
                    f"- {LABELS[name]} {key}: {value['errors']} errors ({value['error_sample']})"
                )
    out = ["## SQS: side by side", "", *status, "", *lines, ""]
    if notes:
        out += ["Notes:", *notes, ""]

    wharf = scen.get("wharf", {})
    extra: list[str] = []
    for depth_key, label in (("depth_10000", "10 thousand"), ("depth_1000000", "1 million")):
        entry = _get(report["peers"], "wharf", "depth", depth_key)
        if entry:
            extra.append(
                f"| receive+delete at {label} queued | {_fmt(entry['messages_per_second'])} msg/s"
                f", receive p50/p99 {_fmt(entry['receive_latency']['p50_ms'], 2)}/"
                f"{_fmt(entry['receive_latency']['p99_ms'], 2)} ms, delete p50/p99 "
                f"{_fmt(entry['delete_latency']['p50_ms'], 2)}/"
                f"{_fmt(entry['delete_latency']['p99_ms'], 2)} ms; RSS "
                f"{_fmt(entry['server_rss_mib_stored'])} MiB with "
                f"{_fmt(entry['stored_after'])} stored |"
            )
    restart = _get(report["peers"], "wharf", "depth", "restart_with_1m")
    if restart:
        extra.append(
            f"| restart with 1 million stored | answers after {restart['seconds_to_answer']} s, "
            f"RSS {_fmt(restart['server_rss_mib'])} MiB |"
        )
    for key, label in (("send", "SendMessage"), ("send_batch", "SendMessageBatch")):
        store = _get(wharf, key, "store")
        if store:
            extra.append(
                f"| messages per commit, {label} (store metrics) | "
                f"{_fmt(store['messages_per_commit'], 1)} ({_fmt(store['commits_per_second'])}"
                f" commits/s, mean commit {_fmt(store['mean_commit_ms'], 2)} ms) |"
            )
        per_message = _get(wharf, key, "disk_bytes_per_message")
        if per_message:
            extra.append(f"| disk bytes written per message, {label} | {_fmt(per_message)} |")
    traced = wharf.get("fsync_strace")
    if traced and traced.get("messages_per_fsync"):
        extra.append(
            f"| messages per fsync, SendMessage under strace | {traced['messages_per_fsync']} "
            f"({traced['fsync_calls']} fsyncs, {_fmt(traced['messages_per_second_traced'])} "
            "msg/s while traced) |"
        )
    for key, when in (("fsync_rate_before", "before"), ("fsync_rate", "after")):
        disk = report.get(key)
        if disk:
            extra.append(
                f"| disk, {when} the peers: 4 KiB write+fsync / +fdatasync loop | "
                f"{_fmt(disk['fsync']['per_second'])} / {_fmt(disk['fdatasync']['per_second'])}"
                f" per s (fsync p50 {disk['fsync']['p50_ms']} ms, "
                f"p99 {disk['fsync']['p99_ms']} ms) |"
            )
    for key, value in report.get("loadgen_ceiling", {}).items():
        extra.append(
            f"| load generator ceiling, canned server, {key[1:]} conns | "
            f"{_fmt(value['requests_per_second'])} req/s (load generator "
            f"{value['loadgen']['cpu_share']:.2f} cores at "
            f"{value['loadgen']['cpu_us_per_request']} µs CPU/request, i.e. "
            f"{_fmt(value['loadgen']['requests_per_cpu_second'])} req/s per core; canned server "
            f"{value['server_cpu_cores']:.2f} cores) |"
        )
    if report.get("signing_per_second"):
        extra.append(
            f"| botocore SigV4 signing, one core | {_fmt(report['signing_per_second'])}"
            " signatures/s |"
        )
    if extra:
        out += ["| wharf and machine | figure |", "| --- | --- |", *extra, ""]
    out.append(f"CPU layout: {report['machine']['layout']}")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per scenario")
    parser.add_argument("--quick", action="store_true", help="3 s smoke run")
    parser.add_argument("--peers", default=",".join(PEER_ORDER))
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--peer-connections",
        default="moto=1",
        help="per-peer override of --connections, e.g. moto=1 (moto serialises requests: "
        "more connections only queue inside it and slow it down)",
    )
    parser.add_argument("--rates", default="100,400", help="latency scenario send rates, msg/s")
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--receivers", type=int, default=8)
    parser.add_argument("--settle", type=float, default=5.0, help="latency: wait for stragglers")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--memory-fill", type=int, default=10_000, help="messages for RSS")
    parser.add_argument("--memory-seconds", type=float, default=60.0, help="bound of that fill")
    parser.add_argument("--drain-min", type=int, default=1_000)
    parser.add_argument("--drain-max", type=int, default=300_000)
    parser.add_argument("--depth-drain", type=int, default=20_000)
    parser.add_argument("--million", action="store_true", help="wharf: 1M-deep queue and RSS")
    parser.add_argument("--fill-timeout", type=float, default=900.0)
    parser.add_argument("--no-depth", action="store_true", help="skip wharf's depth runs")
    parser.add_argument("--no-restart", action="store_true", help="skip the 1M restart")
    parser.add_argument("--no-strace", action="store_true", help="skip the strace fsync sample")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the canned-server run")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument(
        "--wharf-verify",
        action="store_true",
        help="wharf verifies SigV4 (credentials file); the load generator signs with botocore",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=30.0,
        help="before each peer, wait up to this many s for other processes to go quiet",
    )
    parser.add_argument(
        "--profile",
        default="",
        help="peers to profile with py-spy (extra runs after the measured ones), e.g. wharf",
    )
    parser.add_argument("--install", action="store_true", help="run peers.sh install first")
    parser.add_argument("--wait-wharf", type=float, default=30.0, help="s to wait for its API")
    parser.add_argument("--output", help="JSON path (default bench/results/sqs-<date>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 3.0
        args.warmup = 0.5
        args.settle = 3.0
        args.depth_drain = min(args.depth_drain, 5_000)
        args.drain_max = min(args.drain_max, 50_000)
        args.memory_seconds = min(args.memory_seconds, 20.0)
    args.peer_connections = {
        name: int(count)
        for name, _, count in (item.partition("=") for item in args.peer_connections.split(","))
        if name
    }
    args.profile = [peer for peer in args.profile.split(",") if peer]
    args.rates = [float(rate) for rate in args.rates.split(",") if rate]
    args.peers = [peer for peer in args.peers.split(",") if peer]
    unknown = set(args.peers) - set(PEER_ORDER)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    args.pin = (
        not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install:
        subprocess.run([str(PEERS_SH), "install"], check=True)
    if args.pin:
        os.sched_setaffinity(0, {LOADGEN_CORE})
        layout = (
            f"servers pinned to core {SERVER_CORE} (taskset -c {SERVER_CORE}); load generator "
            f"and this runner pinned to core {LOADGEN_CORE} (sched_setaffinity)"
        )
    else:
        layout = "no pinning (taskset missing, fewer than 2 cores, or --no-pin)"
    log(f"CPU layout: {layout}")
    workdir = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    started = dt.datetime.now(dt.UTC)
    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "layout": layout,
            "loadavg_at_start": os.getloadavg(),
        },
        "config": {
            key: value
            for key, value in vars(args).items()
            if key not in ("install", "output", "quick")
        }
        | {"quick": args.quick},
        "peers": {},
    }
    try:
        if not args.no_ceiling:
            log("load generator ceiling against the canned-reply server")
            report["loadgen_ceiling"] = loadgen_ceiling(args, workdir)
        report["signing_per_second"] = round(lg.signing_rate(0.5), 0)
        log("disk fsync rate (before)")
        report["fsync_rate_before"] = fsync_rate.measure(str(workdir), min(3.0, args.seconds))
        for name in PEER_ORDER:
            if name not in args.peers:
                continue
            report["peers"][name] = run_one(name, args, workdir)
        log("disk fsync rate (after)")
        report["fsync_rate"] = fsync_rate.measure(str(workdir), min(3.0, args.seconds))
    finally:
        report["machine"]["loadavg_at_end"] = os.getloadavg()
        report["machine"]["workdir"] = str(workdir)
        output = (
            Path(args.output)
            if args.output
            else BENCH / "results" / (f"sqs-{started.strftime('%Y-%m-%dT%H%M%SZ')}.json")
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        shutil.rmtree(workdir, ignore_errors=True)
        log(f"results: {output}")
    print(markdown(report))
    return 0


def wait_server_idle(
    pid: int, limit: float = SERVER_IDLE_LIMIT, threshold: float = SERVER_IDLE_CORES
) -> dict[str, float]:
    """Wait up to ``limit`` s until the server uses < ``threshold`` cores (0.5 s windows).

    Before every measured scenario, for every peer alike: housekeeping the previous scenario
    left behind (wharf reclaims a deleted queue's rows in the background) is then not billed
    to the next one. Returns how long it waited and the server's use in the last window.
    """
    started = time.monotonic()
    while True:
        before, window = tree_cpu_seconds(pid), time.monotonic()
        time.sleep(0.5)
        cores = (tree_cpu_seconds(pid) - before) / (time.monotonic() - window)
        waited = time.monotonic() - started
        if cores < threshold or waited >= limit:
            return {"seconds": round(waited, 1), "server_cores": round(cores, 3)}


def wait_quiet(limit: float, threshold: float = 0.25) -> float:
    """Wait up to ``limit`` s for other processes to use < ``threshold`` cores; return usage."""
    deadline = time.monotonic() + limit
    while True:
        busy, mine, started = machine_busy_seconds(), sum(os.times()[:2]), time.monotonic()
        time.sleep(2.0)
        wall = time.monotonic() - started
        other = (machine_busy_seconds() - busy - (sum(os.times()[:2]) - mine)) / wall
        if other < threshold or time.monotonic() >= deadline:
            return round(other, 2)
        log(f"  machine busy ({other:.2f} cores used by other processes); waiting")


def run_one(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    peer = Peer(
        name,
        free_port(),
        workdir,
        admin_port=free_port() if name == "wharf" else 0,
        verify=args.wharf_verify and name == "wharf",
    )
    entry: dict[str, Any] = {"version": peer.version()}
    if args.wait_quiet > 0:
        entry["other_cpu_cores_at_start"] = wait_quiet(args.wait_quiet)
    log(f"{name} {entry['version']}: starting on 127.0.0.1:{peer.port}")
    timeout = args.wait_wharf if name == "wharf" else 180.0
    try:
        peer.start(args.pin, timeout=timeout)
    except RuntimeError as error:
        entry["status"] = f"unavailable: {error}"
        log(f"  {entry['status']}")
        return entry
    entry["status"] = f"answered CreateQueue {peer.started_seconds:.1f} s after start"
    entry["signed_requests"] = peer.verify
    try:
        entry["scenarios"] = run_peer(peer, args)
        if name == "wharf" and not args.no_depth:
            peer.stop()
            peer.start(args.pin, fresh=True, timeout=timeout)
            entry["depth"] = run_depth(peer, args)
    except (OSError, lg.SqsError, RuntimeError) as error:
        entry["status"] += f"; failed: {error}"
        log(f"  {name} failed: {error}")
    finally:
        peer.stop()
    return entry


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
