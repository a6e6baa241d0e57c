"""A load generator for SQS-compatible servers that is not the bottleneck.

Raw HTTP/1.1 over non-blocking sockets and one epoll loop in one process: keep-alive
connections, requests prebuilt as bytes (awsJson1_0: ``POST /``, ``X-Amz-Target:
AmazonSQS.<Op>``), at most one request in flight per connection (no pipelining), and
reconnects for servers that answer ``Connection: close`` (moto). Requests carry a
SigV4-shaped ``Authorization`` header (moto routes on its credential scope; an anonymous
broker accepts it unverified); with a secret key they are signed for real with botocore's
``SigV4Auth``: once at build time where the request is fixed, per request where it is not.

Workloads drive the engine through :class:`Workload`: closed-loop fixed requests (SendMessage,
SendMessageBatch), filling a queue to a count, draining a queue with ReceiveMessage(10) +
DeleteMessageBatch, and send-to-receive latency with long-polling receivers at a fixed send
rate (open loop: latency runs from each message's *scheduled* send time, so a server that
falls behind is not excused by coordinated omission).

The engine measures its own CPU time (getrusage) so every result says how busy the load
generator was. Everything is bounded by a deadline; all traffic goes to the given host,
which the runner keeps on 127.0.0.1.

Standalone use: ``python bench/loadgen.py --port 9324 --scenario send --seconds 5``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import select
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "application/x-amz-json-1.0"
BODY_1K = ("wharf-bench " * 86)[:1024]  # 1 KiB of ASCII, the message size
assert len(BODY_1K.encode()) == 1024

_HEADERS_PENDING = -1
_CHUNKED = -2
_UNTIL_CLOSE = -3
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLLHUP_ERR = select.EPOLLHUP | select.EPOLLERR
_MAX_RETRIES = 3


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens, and how requests are signed."""

    host: str
    port: int
    region: str = "us-east-1"
    access_key: str = "AKIDWHARFBENCH000000"
    secret_key: str | None = None  # None: SigV4-shaped header, not verifiable

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


class RequestBuilder:
    """Serialises awsJson1_0 SQS requests to bytes, signed or SigV4-shaped."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.signatures = 0
        self.signing_seconds = 0.0
        self._auth: Any = None
        if endpoint.secret_key is not None:
            from botocore.auth import SigV4Auth  # only when signing
            from botocore.credentials import Credentials

            credentials = Credentials(endpoint.access_key, endpoint.secret_key)
            self._auth = SigV4Auth(credentials, "sqs", endpoint.region)
        self._shaped_date = ""
        self._shaped_tail = b""

    @property
    def signs(self) -> bool:
        return self._auth is not None

    def build(self, operation: str, payload: dict[str, Any]) -> bytes:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return self.build_raw(operation, body)

    def build_raw(self, operation: str, body: bytes) -> bytes:
        target = f"AmazonSQS.{operation}"
        if self._auth is not None:
            return self._signed(target, body)
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        if amz_date != self._shaped_date:
            self._shaped_date = amz_date
            scope = f"{amz_date[:8]}/{self.endpoint.region}/sqs/aws4_request"
            self._shaped_tail = (
                f"X-Amz-Date: {amz_date}\r\n"
                f"Authorization: AWS4-HMAC-SHA256 Credential={self.endpoint.access_key}/{scope}, "
                "SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
                f"Signature={'0' * 64}\r\n"
            ).encode()
        head = (
            f"POST / HTTP/1.1\r\nHost: {self.endpoint.authority}\r\n"
            f"X-Amz-Target: {target}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        return head + self._shaped_tail + b"\r\n" + body

    def _signed(self, target: str, body: bytes) -> bytes:
        from botocore.awsrequest import AWSRequest  # only when signing

        started = time.perf_counter()
        request = AWSRequest(
            method="POST",
            url=f"http://{self.endpoint.authority}/",
            data=body,
            headers={"X-Amz-Target": target, "Content-Type": CONTENT_TYPE},
        )
        self._auth.add_auth(request)
        self.signatures += 1
        self.signing_seconds += time.perf_counter() - started
        lines = [f"POST / HTTP/1.1\r\nHost: {self.endpoint.authority}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in request.headers.items())
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(lines).encode() + body


def signing_rate(seconds: float = 1.0) -> float:
    """SigV4 signatures per second through botocore on this core (a 1 KiB SendMessage)."""
    builder = RequestBuilder(Endpoint("127.0.0.1", 9, secret_key="bench-secret"))
    payload = {"QueueUrl": "http://127.0.0.1:9/000000000000/q", "MessageBody": BODY_1K}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        builder.build("SendMessage", payload)
    return builder.signatures / builder.signing_seconds


# --------------------------------------------------------------------------- setup calls


class SqsError(RuntimeError):
    """A setup call (CreateQueue, ...) failed."""


def call(endpoint: Endpoint, operation: str, payload: dict[str, Any], timeout: float = 30.0) -> Any:
    """One blocking request outside the measured loops (queue set-up and tear-down)."""
    raw = RequestBuilder(endpoint).build(operation, payload)
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.decode().split("\r\n")[1:]:
        name, _, value = line.partition(": ")
        headers[name] = value
    connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    try:
        connection.request("POST", "/", body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise SqsError(f"{operation}: HTTP {response.status}: {data[:300]!r}")
    return json.loads(data) if data else {}


def create_queue(endpoint: Endpoint, name: str, attributes: dict[str, str] | None = None) -> str:
    payload: dict[str, Any] = {"QueueName": name}
    if attributes:
        payload["Attributes"] = attributes
    url: str = call(endpoint, "CreateQueue", payload)["QueueUrl"]
    return url


def delete_queue(endpoint: Endpoint, url: str) -> None:
    call(endpoint, "DeleteQueue", {"QueueUrl": url})


def queue_depth(endpoint: Endpoint, url: str) -> dict[str, int]:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    reply = call(endpoint, "GetQueueAttributes", {"QueueUrl": url, "AttributeNames": names})
    return {name: int(value) for name, value in reply.get("Attributes", {}).items()}


# --------------------------------------------------------------------------- engine


class Workload:
    """What the engine runs: it submits requests and is told of every response."""

    finished = False
    next_timer_ns: int = 1 << 62  # monotonic ns of the next on_timer call

    def start(self, engine: Engine, now_ns: int) -> None:
        raise NotImplementedError

    def on_response(
        self, engine: Engine, slot: int, status: int, body: bytes, latency_ns: int, tag: object
    ) -> None:
        raise NotImplementedError

    def on_timer(self, engine: Engine, now_ns: int) -> None:
        pass


class _Conn:
    __slots__ = (
        "body_len",
        "buf",
        "close_after",
        "head_len",
        "out",
        "request",
        "retries",
        "slot",
        "sock",
        "started",
        "status",
        "tag",
    )

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.sock: socket.socket | None = None
        self.request: bytes | None = None
        self.tag: object = None
        self.started = 0
        self.retries = 0
        self.out: memoryview | None = None
        self.buf = b""
        self.body_len = _HEADERS_PENDING
        self.head_len = 0
        self.status = 0
        self.close_after = False


@dataclass
class EngineStats:
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    requests: int = 0
    connects: int = 0
    retries: int = 0
    connect_errors: int = 0

    @property
    def cpu_per_request(self) -> float:
        """CPU seconds the load generator spent per request sent."""
        return self.cpu_seconds / self.requests if self.requests else 0.0

    @property
    def cpu_share(self) -> float:
        """Load generator CPU over wall time: 1.0 means its core was saturated."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


class Engine:
    """One epoll loop over ``slots`` logical connections to one endpoint."""

    def __init__(self, endpoint: Endpoint, slots: int) -> None:
        self.endpoint = endpoint
        self.builder = RequestBuilder(endpoint)
        self.conns = [_Conn(slot) for slot in range(slots)]
        self.stats = EngineStats()
        self._epoll = select.epoll()
        self._by_fd: dict[int, _Conn] = {}
        self._retry: deque[tuple[int, _Conn]] = deque()
        self._workload: Workload | None = None

    # -- connections

    def _connect(self, conn: _Conn) -> bool:
        try:
            sock = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=5)
        except OSError:
            self.stats.connect_errors += 1
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn.sock = sock
        self._by_fd[sock.fileno()] = conn
        self._epoll.register(sock.fileno(), _EPOLLIN)
        self.stats.connects += 1
        return True

    def _close(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is not None:
            fd = sock.fileno()
            self._by_fd.pop(fd, None)
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass
            sock.close()
            conn.sock = None
        conn.buf = b""
        conn.out = None
        conn.body_len = _HEADERS_PENDING

    def close(self) -> None:
        for conn in self.conns:
            self._close(conn)
        self._epoll.close()

    # -- requests

    def submit(self, slot: int, request: bytes, tag: object = None) -> None:
        """Send ``request`` on ``slot``, which must be idle."""
        conn = self.conns[slot]
        conn.request = request
        conn.tag = tag
        conn.retries = 0
        conn.started = time.monotonic_ns()
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        request = conn.request
        assert request is not None
        if conn.sock is None and not self._connect(conn):
            self._schedule_retry(conn)
            return
        sock = conn.sock
        assert sock is not None
        try:
            sent = sock.send(request)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            self._schedule_retry(conn)
            return
        self.stats.requests += 1
        if sent < len(request):
            conn.out = memoryview(request)[sent:]
            self._epoll.modify(sock.fileno(), _EPOLLIN | _EPOLLOUT)

    def _flush(self, conn: _Conn) -> None:
        sock, out = conn.sock, conn.out
        assert sock is not None
        assert out is not None
        try:
            sent = sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            self._on_eof(conn)
            return
        if sent < len(out):
            conn.out = out[sent:]
        else:
            conn.out = None
            self._epoll.modify(sock.fileno(), _EPOLLIN)

    def _schedule_retry(self, conn: _Conn) -> None:
        conn.retries += 1
        self.stats.retries += 1
        if conn.retries > _MAX_RETRIES:
            self._fail(conn)
            return
        self._retry.append((time.monotonic_ns() + 10_000_000 * conn.retries, conn))

    def _fail(self, conn: _Conn) -> None:
        latency = time.monotonic_ns() - conn.started
        tag = conn.tag
        conn.request = None
        assert self._workload is not None
        self._workload.on_response(self, conn.slot, 0, b"", latency, tag)

    # -- responses

    def _on_readable(self, conn: _Conn) -> None:
        sock = conn.sock
        assert sock is not None
        try:
            data = sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._on_eof(conn)
            return
        buf = conn.buf + data if conn.buf else data
        if conn.body_len == _HEADERS_PENDING:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                conn.buf = buf
                return
            head = buf[:end].lower()
            conn.status = int(buf[9:12])
            conn.head_len = end + 4
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                conn.body_len = int(head[at + 17 : stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding: chunked" in head:
                conn.body_len = _CHUNKED
            elif conn.status in (204, 304) or conn.status < 200:
                conn.body_len = 0
            else:
                conn.body_len = _UNTIL_CLOSE
            conn.close_after = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
        if conn.body_len >= 0:
            end = conn.head_len + conn.body_len
            if len(buf) < end:
                conn.buf = buf
                return
            self._complete(conn, buf[conn.head_len : end])
        elif conn.body_len == _CHUNKED:
            body = _dechunk(buf, conn.head_len)
            if body is None:
                conn.buf = buf
                return
            self._complete(conn, body)
        else:
            conn.buf = buf

    def _on_eof(self, conn: _Conn) -> None:
        if conn.request is None:  # idle connection closed by the server
            self._close(conn)
            return
        if conn.body_len == _UNTIL_CLOSE:
            body = conn.buf[conn.head_len :]
            conn.close_after = True
            self._complete(conn, body)
            return
        self._close(conn)  # closed under a request in flight: resend on a new connection
        self._schedule_retry(conn)

    def _complete(self, conn: _Conn, body: bytes) -> None:
        latency = time.monotonic_ns() - conn.started
        tag, status = conn.tag, conn.status
        conn.request = None
        conn.buf = b""
        conn.body_len = _HEADERS_PENDING
        if conn.close_after:
            self._close(conn)
        assert self._workload is not None
        self._workload.on_response(self, conn.slot, status, body, latency, tag)

    # -- loop

    def run(self, workload: Workload, max_seconds: float) -> EngineStats:
        """Run ``workload`` until it says it is finished or ``max_seconds`` pass."""
        self._workload = workload
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic_ns()
        hard_deadline = start + int(max_seconds * 1e9)
        workload.start(self, start)
        poll = self._epoll.poll
        # epoll_wait counts its timeout in whole milliseconds (Python rounds up): a timer due in
        # 0.3 ms fired ~0.6 ms late on average, which the open-loop latency scenarios added to
        # every sample. select() on the epoll descriptor itself waits in microseconds; the
        # events are then read with a zero timeout.
        epoll_fd = [self._epoll.fileno()]
        _tighten_timer_slack()
        select_fds = select.select  # noqa: TID251 -- the epoll descriptor, opened first: low
        by_fd = self._by_fd
        retry = self._retry
        monotonic_ns = time.monotonic_ns
        while not workload.finished:
            now = monotonic_ns()
            if now >= hard_deadline:
                break
            wake = min(workload.next_timer_ns, hard_deadline)
            if retry:
                wake = min(wake, retry[0][0])
            timeout = max(0.0, min(0.1, (wake - now) / 1e9))
            if timeout:
                select_fds(epoll_fd, (), (), timeout)
            for fd, events in poll(0):
                conn = by_fd.get(fd)
                if conn is None:
                    continue
                if events & _EPOLLOUT and conn.out is not None:
                    self._flush(conn)
                if events & (_EPOLLIN | _EPOLLHUP_ERR) and conn.sock is not None:
                    self._on_readable(conn)
            now = monotonic_ns()
            while retry and retry[0][0] <= now:
                _, conn = retry.popleft()
                if conn.request is not None:
                    self._send(conn)
            if workload.next_timer_ns <= now:
                workload.on_timer(self, now)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        self.stats.wall_seconds = (monotonic_ns() - start) / 1e9
        self.stats.cpu_seconds = (usage1.ru_utime - usage0.ru_utime) + (
            usage1.ru_stime - usage0.ru_stime
        )
        self.close()
        return self.stats


def _tighten_timer_slack() -> None:
    """Let this thread's timed waits end within ~1 µs of their due time (Linux; best effort).

    The kernel may otherwise end them up to 50 µs late to batch wake-ups (the default timer
    slack), which the open-loop latency scenarios would count against the server.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_PR_SET_TIMERSLACK = 29


def _dechunk(buf: bytes, pos: int) -> bytes | None:
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(parts) if buf.find(b"\r\n\r\n", eol) >= 0 else None
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        parts.append(buf[start : start + size])
        pos = start + size + 2


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[int], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (ns in, ms out)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[index] / 1e6


def latency_summary(values_ns: list[int]) -> dict[str, float]:
    ordered = sorted(values_ns)
    return {
        "count": len(ordered),
        "p50_ms": percentile(ordered, 0.50),
        "p90_ms": percentile(ordered, 0.90),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] / 1e6 if ordered else float("nan"),
    }


@dataclass
class Result:
    """What one scenario run measured."""

    scenario: str
    connections: int
    seconds: float  # measured window
    ok: int = 0  # successful requests in the window
    messages: int = 0  # messages moved in the window (sent, or received and deleted)
    errors: int = 0
    error_sample: str = ""
    latency: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    engine: EngineStats = field(default_factory=EngineStats)

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "connections": self.connections,
            "seconds": round(self.seconds, 3),
            "ok_requests": self.ok,
            "messages": self.messages,
            "requests_per_second": round(self.requests_per_second, 1),
            "messages_per_second": round(self.messages_per_second, 1),
            "errors": self.errors,
            "error_sample": self.error_sample,
            "latency": self.latency,
            "loadgen": {
                "cpu_seconds": round(self.engine.cpu_seconds, 3),
                "wall_seconds": round(self.engine.wall_seconds, 3),
                "cpu_share": round(self.engine.cpu_share, 3),
                "requests_sent": self.engine.requests,
                "connects": self.engine.connects,
                "retries": self.engine.retries,
                "connect_errors": self.engine.connect_errors,
                "cpu_us_per_request": round(1e6 * self.engine.cpu_per_request, 2),
                "requests_per_cpu_second": round(1 / self.engine.cpu_per_request)
                if self.engine.cpu_per_request
                else None,
            },
            **self.extra,
        }


def _note_error(result: Result, status: int, body: bytes) -> None:
    result.errors += 1
    if not result.error_sample:
        result.error_sample = f"HTTP {status}: {body[:200].decode(errors='replace')}"


# --------------------------------------------------------------------------- workloads


class FixedLoop(Workload):
    """Every connection sends the same prebuilt request back to back, for a duration.

    ``per_request`` messages count per 200 response; a batch reply's ``Failed`` entries are
    subtracted (parsed only when present, so the SendMessage path parses nothing).
    """

    def __init__(
        self, request: bytes, seconds: float, warmup: float, result: Result, per_request: int
    ) -> None:
        self.request = request
        self.seconds = seconds
        self.warmup = warmup
        self.result = result
        self.per_request = per_request
        self.latencies: list[int] = []
        self.count_from = 0
        self.stop_at = 0

    def start(self, engine: Engine, now_ns: int) -> None:
        self.count_from = now_ns + int(self.warmup * 1e9)
        self.stop_at = self.count_from + int(self.seconds * 1e9)
        self.next_timer_ns = self.stop_at
        for slot in range(len(engine.conns)):
            engine.submit(slot, self.request)

    def on_response(
        self, engine: Engine, slot: int, status: int, body: bytes, latency_ns: int, tag: object
    ) -> None:
        now = time.monotonic_ns()
        if now >= self.count_from:
            if status == 200:
                moved = self.per_request
                if self.per_request > 1 and b'"Failed":[{' in body.replace(b" ", b""):
                    failed = json.loads(body).get("Failed", [])
                    moved -= len(failed)
                    if failed:
                        _note_error(self.result, status, json.dumps(failed[0]).encode())
                self.result.ok += 1
                self.result.messages += moved
                self.latencies.append(latency_ns)
            else:
                _note_error(self.result, status, body)
        engine.submit(slot, self.request)

    def on_timer(self, engine: Engine, now_ns: int) -> None:
        self.finished = True


def run_fixed(
    endpoint: Endpoint,
    scenario: str,
    request: bytes,
    *,
    connections: int,
    seconds: float,
    warmup: float,
    per_request: int = 1,
) -> Result:
    result = Result(scenario, connections, seconds)
    engine = Engine(endpoint, connections)
    workload = FixedLoop(request, seconds, warmup, result, per_request)
    result.engine = engine.run(workload, warmup + seconds + 30)
    result.latency = latency_summary(workload.latencies)
    return result


def send_request(builder: RequestBuilder, queue_url: str) -> bytes:
    return builder.build("SendMessage", {"QueueUrl": queue_url, "MessageBody": BODY_1K})


def batch_request(builder: RequestBuilder, queue_url: str, size: int = 10) -> bytes:
    entries = [{"Id": str(i), "MessageBody": BODY_1K} for i in range(size)]
    return builder.build("SendMessageBatch", {"QueueUrl": queue_url, "Entries": entries})


class Fill(Workload):
    """SendMessageBatch of 10 until ``count`` messages are acknowledged (or the deadline)."""

    def __init__(self, request: bytes, count: int, progress_every: float = 0.0) -> None:
        self.request = request
        self.count = count
        self.batches = (count + 9) // 10
        self.issued = 0
        self.acked = 0
        self.errors = 0
        self.progress_every = progress_every
        self.started = 0

    def start(self, engine: Engine, now_ns: int) -> None:
        self.started = now_ns
        if self.progress_every:
            self.next_timer_ns = now_ns + int(self.progress_every * 1e9)
        for slot in range(len(engine.conns)):
            self._next(engine, slot)

    def _next(self, engine: Engine, slot: int) -> None:
        if self.issued < self.batches:
            self.issued += 1
            engine.submit(slot, self.request)

    def on_response(
        self, engine: Engine, slot: int, status: int, body: bytes, latency_ns: int, tag: object
    ) -> None:
        if status == 200:
            reply = json.loads(body)
            self.acked += len(reply.get("Successful", []))
            if reply.get("Failed"):
                self.errors += 1
        else:
            self.errors += 1
            self.issued -= 1  # try that batch again
            if self.errors > 1000:
                self.finished = True
                return
        if self.acked >= self.count:
            self.finished = True
            return
        self._next(engine, slot)

    def on_timer(self, engine: Engine, now_ns: int) -> None:
        rate = self.acked / max(1e-9, (now_ns - self.started) / 1e9)
        print(f"    fill: {self.acked:,}/{self.count:,} ({rate:,.0f} msg/s)", file=sys.stderr)
        self.next_timer_ns = now_ns + int(self.progress_every * 1e9)


def fill_queue(
    endpoint: Endpoint,
    queue_url: str,
    count: int,
    *,
    connections: int,
    max_seconds: float,
    progress_every: float = 0.0,
) -> dict[str, Any]:
    """Pre-fill a queue with ``count`` 1 KiB messages through batches of 10."""
    engine = Engine(endpoint, connections)
    workload = Fill(batch_request(engine.builder, queue_url), count, progress_every)
    stats = engine.run(workload, max_seconds)
    return {
        "requested": count,
        "acked": workload.acked,
        "seconds": round(stats.wall_seconds, 3),
        "messages_per_second": round(workload.acked / max(stats.wall_seconds, 1e-9), 1),
        "errors": workload.errors,
        "complete": workload.acked >= count,
    }


class Drain(Workload):
    """Each connection: ReceiveMessage(10), then DeleteMessageBatch of what came, repeat.

    Stops at ``target`` deletes, at the deadline, or when every connection has seen the queue
    empty twice in a row.
    """

    def __init__(self, queue_url: str, target: int, seconds: float, result: Result) -> None:
        self.queue_url = queue_url
        self.target = target
        self.seconds = seconds
        self.result = result
        self.receive = b""
        self.receive_latency: list[int] = []
        self.delete_latency: list[int] = []
        self.empty_streak: dict[int, int] = {}
        self.started = 0
        self.last_delete = 0
        self.received = 0
        self.emptied = False

    def start(self, engine: Engine, now_ns: int) -> None:
        self.receive = engine.builder.build(
            "ReceiveMessage",
            {"QueueUrl": self.queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 0},
        )
        self.started = now_ns
        self.last_delete = now_ns
        self.next_timer_ns = now_ns + int(self.seconds * 1e9)
        for slot in range(len(engine.conns)):
            engine.submit(slot, self.receive, "receive")

    def on_response(
        self, engine: Engine, slot: int, status: int, body: bytes, latency_ns: int, tag: object
    ) -> None:
        if status != 200:
            _note_error(self.result, status, body)
            engine.submit(slot, self.receive, "receive")
            return
        if tag == "receive":
            self.receive_latency.append(latency_ns)
            messages = json.loads(body).get("Messages", [])
            if not messages:
                streak = self.empty_streak.get(slot, 0) + 1
                self.empty_streak[slot] = streak
                if streak >= 2 and all(
                    self.empty_streak.get(s, 0) >= 2 for s in range(len(engine.conns))
                ):
                    self.emptied = True
                    self.finished = True
                elif streak < 2:
                    engine.submit(slot, self.receive, "receive")
                return
            self.empty_streak[slot] = 0
            self.received += len(messages)
            entries = [
                {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]}
                for i, message in enumerate(messages)
            ]
            request = engine.builder.build(
                "DeleteMessageBatch", {"QueueUrl": self.queue_url, "Entries": entries}
            )
            engine.submit(slot, request, "delete")
            return
        self.delete_latency.append(latency_ns)
        reply = json.loads(body)
        self.result.ok += 1
        self.result.messages += len(reply.get("Successful", []))
        if reply.get("Failed"):
            _note_error(self.result, status, json.dumps(reply["Failed"][0]).encode())
        self.last_delete = time.monotonic_ns()
        if self.result.messages >= self.target:
            self.finished = True
            return
        engine.submit(slot, self.receive, "receive")

    def on_timer(self, engine: Engine, now_ns: int) -> None:
        self.finished = True


def run_drain(
    endpoint: Endpoint, queue_url: str, *, target: int, connections: int, seconds: float
) -> Result:
    """Receive(10) + DeleteMessageBatch until ``target`` messages are deleted or time is up."""
    result = Result("receive_delete", connections, seconds)
    engine = Engine(endpoint, connections)
    workload = Drain(queue_url, target, seconds, result)
    result.engine = engine.run(workload, seconds + 30)
    result.seconds = max(1e-9, (workload.last_delete - workload.started) / 1e9)
    result.latency = latency_summary(workload.delete_latency)
    result.extra = {
        "target": target,
        "received": workload.received,
        "emptied": workload.emptied,
        "receive_latency": latency_summary(workload.receive_latency),
        "delete_latency": result.latency,
        "receive_delete_ms_per_message": round(1e3 * result.seconds / max(1, result.messages), 4),
    }
    return result


class LongPollLatency(Workload):
    """Open-loop sends at a fixed rate; long-polling receivers; send-to-receive latency.

    Slots ``[0, senders)`` send SendMessage whose body starts with the message's scheduled send
    time (monotonic ns); slots ``[senders, senders + receivers)`` loop ReceiveMessage
    (WaitTimeSeconds=20, MaxNumberOfMessages=10) and DeleteMessageBatch. Latency = receive
    completion - scheduled send time. Samples scheduled in the warm-up are not counted.
    """

    def __init__(
        self,
        queue_url: str,
        *,
        rate: float,
        seconds: float,
        warmup: float,
        senders: int,
        receivers: int,
        settle: float,
        result: Result,
    ) -> None:
        self.queue_url = queue_url
        self.interval = int(1e9 / rate)
        self.seconds = seconds
        self.warmup = warmup
        self.senders = senders
        self.receivers = receivers
        self.settle = settle
        self.result = result
        self.receive = b""
        self.pending: deque[int] = deque()
        self.idle: list[int] = []
        self.next_send = 0
        self.count_from = 0
        self.send_end = 0
        self.sending = True
        self.scheduled = 0
        self.sent_ok = 0
        self.sent_counted = 0
        self.send_errors = 0
        self.seen: set[int] = set()
        self.duplicates = 0
        self.latencies: list[int] = []
        self.send_latency: list[int] = []
        self.received_counted = 0

    def start(self, engine: Engine, now_ns: int) -> None:
        self.receive = engine.builder.build(
            "ReceiveMessage",
            {"QueueUrl": self.queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 20},
        )
        for slot in range(self.senders, self.senders + self.receivers):
            engine.submit(slot, self.receive, "receive")
        self.idle = list(range(self.senders))
        # give the long polls a moment to be parked before the first send
        self.next_send = now_ns + 200_000_000
        self.count_from = self.next_send + int(self.warmup * 1e9)
        self.send_end = self.count_from + int(self.seconds * 1e9)
        self.next_timer_ns = self.next_send

    def _dispatch(self, engine: Engine) -> None:
        while self.pending and self.idle:
            scheduled = self.pending.popleft()
            slot = self.idle.pop()
            body = f"{scheduled:020d} " + BODY_1K[21:]
            request = engine.builder.build(
                "SendMessage", {"QueueUrl": self.queue_url, "MessageBody": body}
            )
            engine.submit(slot, request, scheduled)

    def on_timer(self, engine: Engine, now_ns: int) -> None:
        if self.sending:
            while self.next_send <= now_ns:
                if self.next_send >= self.send_end:
                    self.sending = False
                    break
                self.pending.append(self.next_send)
                self.scheduled += 1
                self.next_send += self.interval
            self._dispatch(engine)
            self.next_timer_ns = (
                self.next_send if self.sending else self.send_end + int(self.settle * 1e9)
            )
        else:
            self.finished = True  # settle time over: whatever is missing is reported

    def on_response(
        self, engine: Engine, slot: int, status: int, body: bytes, latency_ns: int, tag: object
    ) -> None:
        if slot < self.senders:
            assert isinstance(tag, int)
            if status == 200:
                self.sent_ok += 1
                if tag >= self.count_from:
                    self.sent_counted += 1
                    self.send_latency.append(latency_ns)
            else:
                self.send_errors += 1
                _note_error(self.result, status, body)
            self.idle.append(slot)
            self._dispatch(engine)
            return
        if status != 200:
            _note_error(self.result, status, body)
            engine.submit(slot, self.receive, "receive")
            return
        if tag == "receive":
            now = time.monotonic_ns()
            messages = json.loads(body).get("Messages", [])
            for message in messages:
                scheduled = int(message["Body"][:20])
                if scheduled in self.seen:
                    self.duplicates += 1
                    continue
                self.seen.add(scheduled)
                if scheduled >= self.count_from:
                    self.latencies.append(now - scheduled)
                    self.received_counted += 1
            if messages:
                entries = [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ]
                request = engine.builder.build(
                    "DeleteMessageBatch", {"QueueUrl": self.queue_url, "Entries": entries}
                )
                engine.submit(slot, request, "delete")
                return
        if not self.sending and len(self.seen) >= self.sent_ok and not self.pending:
            self.finished = True
            return
        engine.submit(slot, self.receive, "receive")


def run_latency(
    endpoint: Endpoint,
    queue_url: str,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    senders: int,
    receivers: int,
    settle: float = 5.0,
) -> Result:
    result = Result(f"latency@{rate:g}", senders + receivers, seconds)
    engine = Engine(endpoint, senders + receivers)
    workload = LongPollLatency(
        queue_url,
        rate=rate,
        seconds=seconds,
        warmup=warmup,
        senders=senders,
        receivers=receivers,
        settle=settle,
        result=result,
    )
    result.engine = engine.run(workload, 0.2 + warmup + seconds + settle + 5)
    result.ok = workload.sent_counted
    result.messages = workload.received_counted
    result.latency = latency_summary(workload.latencies)
    scheduled_counted = int(seconds * rate)
    result.extra = {
        "target_rate": rate,
        "achieved_send_rate": round(workload.sent_counted / seconds, 1),
        "saturated": workload.sent_counted < 0.95 * scheduled_counted,
        "scheduled": workload.scheduled,
        "sent_ok": workload.sent_ok,
        "never_sent": len(workload.pending),
        "received": len(workload.seen),
        "missing_after_settle": workload.sent_ok - len(workload.seen),
        "duplicates": workload.duplicates,
        "send_errors": workload.send_errors,
        "send_ack_latency": latency_summary(workload.send_latency),
        "senders": senders,
        "receivers": receivers,
    }
    return result


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--scenario", choices=["send", "send_batch", "drain", "latency"], default="send"
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--fill", type=int, default=10_000)
    parser.add_argument("--queue-url", help="use this queue instead of creating one")
    parser.add_argument("--secret-key", help="sign requests for real with this secret")
    parser.add_argument("--access-key", default="AKIDWHARFBENCH000000")
    args = parser.parse_args(argv)
    if not args.host.startswith("127."):
        parser.error("the load generator only targets loopback addresses")
    endpoint = Endpoint(
        args.host, args.port, access_key=args.access_key, secret_key=args.secret_key
    )
    url = args.queue_url or create_queue(endpoint, f"loadgen-{args.scenario}-{time.time_ns()}")
    builder = RequestBuilder(endpoint)
    if args.scenario == "send":
        result = run_fixed(
            endpoint,
            "send",
            send_request(builder, url),
            connections=args.connections,
            seconds=args.seconds,
            warmup=0.5,
        )
    elif args.scenario == "send_batch":
        result = run_fixed(
            endpoint,
            "send_batch",
            batch_request(builder, url),
            connections=args.connections,
            seconds=args.seconds,
            warmup=0.5,
            per_request=10,
        )
    elif args.scenario == "drain":
        filled = fill_queue(endpoint, url, args.fill, connections=8, max_seconds=600)
        print(json.dumps({"fill": filled}), file=sys.stderr)
        result = run_drain(
            endpoint, url, target=args.fill, connections=args.connections, seconds=args.seconds
        )
    else:
        result = run_latency(
            endpoint,
            url,
            rate=args.rate,
            seconds=args.seconds,
            warmup=0.5,
            senders=16,
            receivers=8,
        )
    print(json.dumps(result.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
