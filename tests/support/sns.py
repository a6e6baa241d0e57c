"""SNS test support: boto3 SNS clients, and a real subscriber HTTP endpoint that can misbehave.

:class:`Endpoint` is a small trio + h11 server on 127.0.0.1 (plain or TLS) in a thread of its
own, so blocking boto3 tests can use it. Each request is recorded; what the endpoint answers
is its current ``behaviour``:

- ``ok`` (200), ``500``, ``404``, ``429``: that status;
- ``ok-close``: 200 with keep-alive, then close the idle connection right after;
- ``big``: 200 with a 1 MiB body;
- ``hang``: never answer (the broker's response timeout must fire);
- ``gated``: answer 200 once ``gate`` is set (a slow endpoint that does succeed);
- ``reset``: close the connection with a TCP RST;
- ``close``: close the connection without answering (as a server closing an idle keep-alive
  connection just as the request arrives);
- ``garbage``: answer bytes that are not HTTP;
- ``ok-extra``: 200, with a second, unasked-for 200 right behind it in the same write.

With an ``auth`` guard (:class:`tests.support.auth_guard.AuthGuard`), a request without
acceptable credentials gets a 401 with the guard's challenges instead (recorded as ``401``).

Signatures are checked here with an implementation of AWS's documented algorithm written for
the tests (not :mod:`proto.aws.sns_signature`).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import h11
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.auth_guard import AuthGuard
from tests.support.broker import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    botocore_session,
)

_session_lock = threading.Lock()
_session: boto3.Session | None = None
_clients: dict[tuple[str, str, str, str], Any] = {}


def sns_client(
    endpoint: str,
    *,
    access_key_id: str = ACCESS_KEY_ID,
    secret_access_key: str = SECRET_ACCESS_KEY,
    region: str = REGION,
) -> Any:
    """A boto3 SNS client (query protocol, as shipped) for ``endpoint``; no retries.

    Cached per endpoint and key: a client dropped to the garbage collector leaves its pooled
    sockets to be reclaimed there, which warns (ResourceWarning) in whatever test runs then.
    """
    global _session
    key = (endpoint, access_key_id, secret_access_key, region)
    with _session_lock:
        if key in _clients:
            return _clients[key]
        if _session is None:
            _session = boto3.Session(botocore_session=botocore_session("json"))
        client = _clients[key] = _session.client(
            "sns",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=botocore.config.Config(
                retries={"total_max_attempts": 1}, read_timeout=60, connect_timeout=5
            ),
        )
        return client


@atexit.register
def _close_clients() -> None:
    # Their pools hold sockets to brokers long stopped; closing them here keeps the end of
    # the test session free of ResourceWarnings.
    with _session_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def queue_arn(sqs: Any, url: str) -> str:
    arn: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return arn


def receive_all(sqs: Any, url: str, expected: int, *, timeout: float = 10) -> list[dict[str, Any]]:
    """Receive (and delete) until ``expected`` messages arrived or ``timeout`` passed."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected and time.monotonic() < deadline:
        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            AttributeNames=["All"],
        ).get("Messages", [])
        for message in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        messages.extend(got)
    return messages


# ---------------------------------------------------------------------- signatures


def canonical_string(envelope: dict[str, Any]) -> bytes:
    """AWS's string to sign (sns-verify-signature-of-message), written out for the tests."""
    if envelope["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    text = "".join(f"{name}\n{envelope[name]}\n" for name in names if name in envelope)
    return text.encode()


def check_signature(envelope: dict[str, Any], certificate_pem: bytes) -> None:
    """Raise unless ``envelope`` is signed by the certificate's key (versions 1 and 2)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    key = certificate.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    algorithm = hashes.SHA1() if envelope["SignatureVersion"] == "1" else hashes.SHA256()
    key.verify(
        base64.b64decode(envelope["Signature"]),
        canonical_string(envelope),
        padding.PKCS1v15(),
        algorithm,
    )


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


# ---------------------------------------------------------------------- the endpoint


@dataclass
class Received:
    """One request the endpoint got."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: str

    def envelope(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


@dataclass
class Endpoint:
    """A subscriber endpoint; see the module docstring for ``behaviour``."""

    behaviour: str = "ok"
    ssl_context: Any = None  # an ssl.SSLContext for https
    requests: list[Received] = field(default_factory=list)
    behaviour_of: Callable[[Received], str] | None = None  # per request, overrides behaviour
    gate: threading.Event = field(default_factory=threading.Event)  # opens "gated" answers
    auth: AuthGuard | None = None  # credentials every request must carry

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self.connections = 0
        self._port = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sns-endpoint", daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = "localhost" if self.ssl_context is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self._port}/hook"

    def __enter__(self) -> Endpoint:
        self._thread.start()
        assert self._ready.wait(10), "the endpoint did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._stop is not None:
            # run_sync_soon works from any thread, a trio loop's included (tests in trio mode).
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._stop.set)
        self._thread.join(10)

    def wait_for(
        self, count: int, *, timeout: float = 15, match: Callable[[Received], bool] | None = None
    ) -> list[Received]:
        """Wait until ``count`` requests (matching ``match``) arrived; return them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = [r for r in self.requests if match is None or match(r)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(found)} of {count} requests in {timeout} s")
                self._lock.wait(left)

    def _run(self) -> None:
        trio.run(self._main)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        raw = stream.socket
        connection: trio.abc.Stream = stream
        try:
            if self.ssl_context is not None:
                secured = trio.SSLStream(stream, self.ssl_context, server_side=True)
                await secured.do_handshake()
                connection = secured
            await self._exchange(connection, raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            with trio.move_on_after(1):
                await trio.aclose_forcefully(connection)

    async def _exchange(self, stream: trio.abc.Stream, raw: trio.socket.SocketType) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            head: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert head is not None
            received = Received(
                method=head.method.decode(),
                target=head.target.decode(),
                headers={k.decode().lower(): v.decode() for k, v in head.headers},
                body=body,
                at=time.monotonic(),
                answered="",
            )
            behaviour = self.behaviour_of(received) if self.behaviour_of else self.behaviour
            challenges: list[tuple[str, str]] = []
            if self.auth is not None:
                verdict = self.auth.check(
                    received.method, received.target, received.headers.get("authorization"), body
                )
                if verdict != "ok":
                    behaviour = "401"
                    stale = verdict == "stale"
                    challenges = [self.auth.stale_challenge()] if stale else self.auth.challenges()
            received.answered = behaviour
            with self._lock:
                self.requests.append(received)
                self._lock.notify_all()
            if behaviour == "hang":
                await trio.sleep_forever()
            # The gate is a threading.Event the test sets from another thread (and trio run).
            while behaviour == "gated" and not self.gate.is_set():  # noqa: ASYNC110
                await trio.sleep(0.01)
            if behaviour == "close":
                return
            if behaviour == "reset":
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()
                return
            if behaviour == "garbage":
                await stream.send_all(b"this is not HTTP at all\r\n\r\n")
                return
            status = int(behaviour) if behaviour.isdigit() else 200
            content = b"x" * (1 << 20) if behaviour == "big" else b"ok"
            response_headers = [("content-length", str(len(content))), *challenges]
            data = conn.send(h11.Response(status_code=status, headers=response_headers))
            data += conn.send(h11.Data(data=content)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            if behaviour == "ok-extra":
                data += b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(data)
            if conn.our_state is h11.MUST_CLOSE or behaviour in ("ok-close", "big"):
                return
            conn.start_next_cycle()


@contextlib.contextmanager
def endpoint(**options: Any) -> Iterator[Endpoint]:
    with Endpoint(**options) as running:
        yield running
