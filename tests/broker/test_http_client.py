"""Outbound POSTs: statuses, timeouts, resets, garbage, TLS, keep-alive; never an exception."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable
from functools import partial

import pytest
import trio
import trio.testing
import trustme

from broker.http_client import IDLE_SECONDS, HttpClient, NameLookups, Outcome, parse_target
from tests.support.auth_guard import AuthGuard
from tests.support.descriptors import FD_SETSIZE, new_descriptors_past_fd_setsize
from tests.support.sns import Endpoint

CURL = shutil.which("curl")
HEADERS = [("x-amz-sns-message-type", "Notification"), ("User-Agent", "spoofed")]


MakeClient = Callable[..., HttpClient]


@pytest.fixture
async def client() -> AsyncIterator[MakeClient]:
    """Makes clients with short timeouts, closed after the test: their idle keep-alive
    sockets must not outlive it. (Not autouse: pytest-trio runs no autouse async fixture.)"""
    made: list[HttpClient] = []

    def make(**options: object) -> HttpClient:
        settings: dict[str, object] = {"connect_timeout": 1.0, "response_timeout": 1.0}
        settings.update(options)
        made.append(HttpClient(**settings))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for http in made:
        await http.aclose()


@pytest.mark.parametrize(
    ("behaviour", "status", "retryable"),
    [("ok", 200, False), ("500", 500, True), ("429", 429, True), ("404", 404, False)],
)
async def test_statuses(behaviour: str, status: int, retryable: bool, client: MakeClient) -> None:
    with Endpoint(behaviour=behaviour) as endpoint:
        outcome = await client().post(endpoint.url, HEADERS, b"body")
    assert outcome.status == status
    assert outcome.delivered is (status == 200)
    assert outcome.retryable is retryable
    (request,) = endpoint.requests
    assert (request.method, request.target, request.body) == ("POST", "/hook", b"body")
    assert request.headers["user-agent"] == "Amazon Simple Notification Service Agent"
    assert request.headers["x-amz-sns-message-type"] == "Notification"


@pytest.mark.parametrize(
    ("behaviour", "error"), [("hang", "timeout"), ("reset", "reset"), ("garbage", "protocol")]
)
async def test_misbehaving_endpoints_end_in_an_outcome(
    behaviour: str, error: str, client: MakeClient
) -> None:
    with Endpoint(behaviour=behaviour) as endpoint:
        started = trio.current_time()
        outcome = await client().post(endpoint.url, HEADERS, b"body")
        elapsed = trio.current_time() - started
    assert outcome.status is None
    assert outcome.error == error
    assert outcome.retryable
    assert elapsed < 3  # bounded by the response timeout


async def test_connection_refused_and_bad_urls(client: MakeClient) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    outcome = await client().post(f"http://127.0.0.1:{port}/", HEADERS, b"")
    assert (outcome.status, outcome.error) == (None, "connect")
    assert await client().post("ftp://x/", HEADERS, b"") == Outcome(
        None, "invalid-url", "not an http(s) URL with a host: ftp://x/"
    )
    assert not (await client().post("http:///nohost", HEADERS, b"")).retryable


async def test_a_stalled_tls_handshake_hits_the_connect_timeout(client: MakeClient) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def accept_and_stall(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()

        nursery.start_soon(trio.serve_listeners, accept_and_stall, listeners)
        started = trio.current_time()
        outcome = await client(connect_timeout=0.3).post(f"https://127.0.0.1:{port}/", HEADERS, b"")
        assert outcome.error == "timeout"
        assert trio.current_time() - started < 2
        nursery.cancel_scope.cancel()


async def test_keep_alive_reuses_connections_and_notices_closed_ones(client: MakeClient) -> None:
    http = client()
    with Endpoint() as endpoint:
        for _ in range(3):
            assert (await http.post(endpoint.url, HEADERS, b"x")).delivered
        assert endpoint.connections == 1
        endpoint.behaviour = "ok-close"
        assert (await http.post(endpoint.url, HEADERS, b"x")).delivered
        await trio.sleep(0.2)  # the server has closed the idle connection by now
        endpoint.behaviour = "ok"
        assert (await http.post(endpoint.url, HEADERS, b"x")).delivered
        assert endpoint.connections == 2
        assert len(endpoint.requests) == 5  # nothing sent twice
        endpoint.behaviour = "big"
        assert (await http.post(endpoint.url, HEADERS, b"x")).status == 200
        await http.aclose()


async def test_a_connection_numbered_past_fd_setsize_is_reused(client: MakeClient) -> None:
    # The check before reuse once used select(), which refuses descriptors from 1,024 on: a
    # broker with a thousand client connections would have failed every delivery.
    http = client()
    with Endpoint() as endpoint:
        with new_descriptors_past_fd_setsize():
            assert (await http.post(endpoint.url, HEADERS, b"x")).delivered
        ((idle,),) = http._idle.values()
        assert idle.stream.socket.fileno() >= FD_SETSIZE
        for _ in range(2):
            assert (await http.post(endpoint.url, HEADERS, b"x")).delivered
        assert endpoint.connections == 1
        await http.aclose()


async def test_a_response_followed_by_bytes_nobody_asked_for_ends_the_connection(
    client: MakeClient,
) -> None:
    # The unasked-for 200 must not become the answer to the next delivery, which fails.
    http = client()
    with Endpoint() as endpoint:
        endpoint.behaviour = "ok-extra"
        assert (await http.post(endpoint.url, HEADERS, b"x")).delivered
        endpoint.behaviour = "500"
        assert (await http.post(endpoint.url, HEADERS, b"x")).status == 500
        assert endpoint.connections == 2
        await http.aclose()


@pytest.mark.parametrize("response_body", [0, 200_000])
async def test_an_answer_before_the_body_is_read_is_the_outcome(
    client: MakeClient, response_body: int
) -> None:
    # An endpoint that answers after the head and reads no more (nginx's 413 for a body over
    # client_max_body_size, an auth proxy's 401) while the body is larger than the socket
    # buffers: the client, still sending, must read the answer instead of waiting out the
    # response timeout (found by a deep run of tests/broker/test_http_client_fuzz.py).
    answered = trio.Event()

    async def answer_early(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        await stream.send_all(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: %d\r\n\r\n" % response_body
            + b"z" * response_body
        )
        answered.set()
        await trio.sleep(5)  # reads nothing more, closes nothing

    http = client(response_timeout=3.0)
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, answer_early, 0, host="127.0.0.1")
        (listener,) = await nursery.start(serve)
        port = listener.socket.getsockname()[1]
        outcome = await http.post(f"http://127.0.0.1:{port}/", HEADERS, b"x" * (8 << 20))
        assert outcome == Outcome(413)
        assert answered.is_set()
        nursery.cancel_scope.cancel()
    await http.aclose()


async def test_basic_auth_answers_the_endpoints_401_then_goes_up_front(
    client: MakeClient,
) -> None:
    guard = AuthGuard("us@er", "p:ss", schemes=("Basic",))
    with Endpoint(auth=guard) as endpoint:
        url = endpoint.url.replace("http://", "http://us%40er:p%3Ass@")
        http = client()
        assert (await http.post(url, HEADERS, b"one")).delivered
        assert (await http.post(url, HEADERS, b"two")).delivered
    expected = "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    sent = [(r.headers.get("authorization"), r.answered, r.body) for r in endpoint.requests]
    # As AWS does: credentials only once the endpoint asks (a 401), then with every request.
    assert sent == [(None, "401", b"one"), (expected, "ok", b"one"), (expected, "ok", b"two")]
    assert endpoint.requests[0].headers["host"].startswith("127.0.0.1:")
    assert endpoint.connections == 1  # the 401's connection carried the answer


@pytest.mark.parametrize(
    ("algorithm", "qop", "userhash"),
    [
        (None, "auth", False),
        ("MD5", "auth,auth-int", False),
        ("MD5-sess", "auth", False),
        ("SHA-256", "auth", True),
        ("SHA-256-sess", "auth-int", False),
        ("SHA-512-256", "auth", False),
        (None, None, False),  # RFC 2069: no qop, no nonce count
    ],
)
async def test_digest_auth_is_answered_and_its_nonce_reused(
    algorithm: str | None, qop: str | None, userhash: bool, client: MakeClient
) -> None:
    guard = AuthGuard("alice", "s3cret", algorithm=algorithm, qop=qop, userhash=userhash)
    with Endpoint(auth=guard) as endpoint:
        http = client()
        url = endpoint.url.replace("http://", "http://alice:s3cret@")
        for body in (b"one", b"two", b"three"):
            assert (await http.post(url, HEADERS, body)).delivered
    answered = [r.answered for r in endpoint.requests]
    assert answered == ["401", "ok", "ok", "ok"]
    assert guard.accepted == ["Digest"] * 3
    assert "s3cret" not in str([r.headers for r in endpoint.requests])
    if qop is not None:
        counts = [r.headers["authorization"].split("nc=")[1][:8] for r in endpoint.requests[1:]]
        assert counts == ["00000001", "00000002", "00000003"]


async def test_a_stale_nonce_is_answered_again(client: MakeClient) -> None:
    guard = AuthGuard("alice", "s3cret", algorithm="SHA-256", stale_after=2)
    with Endpoint(auth=guard) as endpoint:
        http = client()
        url = endpoint.url.replace("http://", "http://alice:s3cret@")
        outcomes = [await http.post(url, HEADERS, b"x") for _ in range(4)]
    assert all(outcome.delivered for outcome in outcomes)
    # 401 (no credentials), nc 1, nc 2, nc 3 is stale, the new nonce's nc 1, its nc 2
    assert [r.answered for r in endpoint.requests] == ["401", "ok", "ok", "401", "ok", "ok"]


async def test_digest_is_preferred_to_basic(client: MakeClient) -> None:
    guard = AuthGuard("alice", "s3cret", schemes=("Basic", "Digest"))
    with Endpoint(auth=guard) as endpoint:
        url = endpoint.url.replace("http://", "http://alice:s3cret@")
        assert (await client().post(url, HEADERS, b"")).delivered
    assert guard.accepted == ["Digest"]


@pytest.mark.parametrize("schemes", [("Digest",), ("Basic",)])
async def test_refused_credentials_end_in_one_401(
    schemes: tuple[str, ...], client: MakeClient
) -> None:
    guard = AuthGuard("alice", "s3cret", schemes=schemes)
    with Endpoint(auth=guard) as endpoint:
        http = client()
        wrong = await http.post(endpoint.url.replace("http://", "http://alice:nope@"), HEADERS, b"")
        anonymous = await http.post(endpoint.url, HEADERS, b"")
        again = await http.post(endpoint.url.replace("http://", "http://alice:nope@"), HEADERS, b"")
    assert wrong == anonymous == again == Outcome(401)
    assert not wrong.retryable  # a 4xx: AWS does not retry it
    # the first try and the answer; the anonymous one; the same again (nothing remembered)
    assert [r.answered for r in endpoint.requests] == ["401"] * 5


@pytest.mark.parametrize(
    ("algorithm", "userhash"),
    # Not SHA-512-256: curl before 8.8 answers it with SHA-256 (against RFC 7616 §6.1).
    [("MD5", False), ("MD5-sess", False), ("SHA-256", True), ("SHA-256-sess", False)],
)
async def test_the_test_guard_lets_curl_in(algorithm: str, userhash: bool) -> None:
    """The guard the client is tested against accepts curl's Digest (and refuses a wrong
    password), so it is not only the client's own reading of RFC 7616."""
    assert CURL is not None, "curl is a test dependency (.ci/run installs it)"
    guard = AuthGuard("alice", "s3cret", algorithm=algorithm, userhash=userhash)
    with Endpoint(auth=guard) as endpoint:
        for password, expected in (("s3cret", b"200"), ("wrong", b"401")):
            command = [CURL, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
            command += ["--digest", "-u", f"alice:{password}", "-d", "body", endpoint.url]
            result = await trio.run_process(command, capture_stdout=True)
            assert result.stdout == expected
    assert guard.accepted == ["Digest"]


async def test_the_test_guard_lets_urllib_in() -> None:
    guard = AuthGuard("alice", "s3cret", algorithm="MD5")
    with Endpoint(auth=guard) as endpoint:
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, endpoint.url, "alice", "s3cret")
        opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(passwords))

        def post() -> int:
            with opener.open(endpoint.url, data=b"body", timeout=10) as response:
                status: int = response.status
                return status

        assert await trio.to_thread.run_sync(post) == 200
    assert guard.accepted == ["Digest"]


async def test_https_is_verified_against_the_ca_file(tmp_path, client: MakeClient) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    with Endpoint(ssl_context=server) as endpoint:
        trusted = await client(ca_file=str(ca_file)).post(endpoint.url, HEADERS, b"")
        untrusted = await client().post(endpoint.url, HEADERS, b"")
    assert trusted.delivered
    assert (untrusted.error, untrusted.retryable) == ("tls", True)
    assert "certificate verify failed" in untrusted.detail


async def test_targets() -> None:
    target = parse_target("https://h.example:8443/a/b?c=d")
    assert target is not None
    assert (target.host, target.port, target.target) == ("h.example", 8443, "/a/b?c=d")
    assert target.host_header == "h.example:8443"
    plain = parse_target("http://h.example")
    assert plain is not None
    assert (plain.port, plain.target) == (80, "/")
    assert parse_target("http://h:99999/") is None
    assert parse_target("http://h:0/") is None  # not the default port: no port at all
    assert parse_target("http://" + "a" * 64 + ".example/") is None  # a DNS label over 63
    idn = parse_target("http://café.example:8080/p")
    assert idn is not None
    assert (idn.host, idn.host_header) == ("xn--caf-dma.example", "xn--caf-dma.example:8080")
    # No resolver could look these up (found by a report-only hunt: Subscribe took them).
    for host in ("a b", "exa<mple.com", 'exa"mple', "host%00name"):
        assert parse_target(f"http://{host}/") is None, host
    for host in ("[::1]", "127.0.0.1", "my_host.example", "h.example.", "[fe80::1%25eth0]"):
        assert parse_target(f"http://{host}:8080/") is not None, host
    # urlsplit checks only what is inside the brackets: these went to [::1]:8080 (or to DNS,
    # for "v1.x") with a Host header that is no authority (found by the IPv6 hunt).
    for authority in ("[::1]junk:8080", "[::1]junk", "[v1.x]", "[::1]:8080:80"):
        assert parse_target(f"http://{authority}/") is None, authority
    # RFC 6874: "%25" in the URL, "%" to the resolver (which read "%25eth0" as interface
    # "25eth0": found by the IPv6 hunt), "%25" in the Host header. A bare "%" as before.
    for url in ("http://[fe80::1%25eth0]:8080/", "http://[fe80::1%eth0]:8080/"):
        zoned = parse_target(url)
        assert zoned is not None, url
        assert (zoned.host, zoned.host_header) == ("fe80::1%eth0", "[fe80::1%25eth0]:8080")
    v6 = parse_target("http://[0:0::1]:8080/x")
    assert v6 is not None
    assert (v6.host, v6.port, v6.host_header) == ("0:0::1", 8080, "[0:0::1]:8080")


async def test_urls_a_request_line_cannot_carry_are_encoded_or_refused(client: MakeClient) -> None:
    # Subscribe takes such URLs; a delivery must then either go out or end in an outcome
    # that is not retried, never in an exception retried forever.
    with Endpoint() as endpoint:
        http = client()
        odd = endpoint.url + "/café and more?q=a b&r=%41"
        assert (await http.post(odd, HEADERS, b"")).delivered
        (request,) = endpoint.requests
        assert request.target == "/hook/caf%C3%A9%20and%20more?q=a%20b&r=%41"
        unresolvable = await http.post("http://" + "a" * 64 + ".example/", HEADERS, b"")
        assert (unresolvable.error, unresolvable.retryable) == ("invalid-url", False)


async def test_name_lookups_run_one_thread_per_name_on_their_own_limiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[bytes] = []
    answer = threading.Event()

    def lookup(host: bytes, port: int, *args: int) -> list[object]:
        started.append(host)
        answer.wait(10)  # as a DNS server that does not answer (yet)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    lookups = NameLookups(threads=2)
    answers = []

    async def ask(name: bytes) -> None:
        answers.append(await lookups.getaddrinfo(name, 80))

    async with trio.open_nursery() as nursery:
        for name in (b"a.test",) * 5 + (b"b.test",):
            nursery.start_soon(ask, name)
        await trio.testing.wait_all_tasks_blocked()
        assert lookups.limiter.borrowed_tokens == 2  # both slots: one lookup per name
        with trio.move_on_after(0.2) as waited:  # no slot left: waits, until its timeout
            await ask(b"c.test")
        assert waited.cancelled_caught
        assert trio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
        answer.set()
    assert sorted(set(started)) == [b"a.test", b"b.test"]
    assert len(started) == 2
    assert len(answers) == 6
    assert lookups.limiter.borrowed_tokens == 0
    assert await lookups.getaddrinfo(b"c.test", 81) == [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 81))
    ]


async def test_a_reused_connection_closed_before_any_answer_is_retried_on_a_fresh_one(
    client: MakeClient,
) -> None:
    # The endpoint closes an idle keep-alive connection just as the next request arrives
    # (without having said Connection: close): no byte of an answer. RFC 9112 9.3.1: the
    # request was not processed; sent again on a fresh connection, it is delivered now
    # instead of counting as a failed attempt retried 20 s later.
    answers = iter(["ok", "close", "ok"])
    with Endpoint() as endpoint:
        endpoint.behaviour_of = lambda request: next(answers)
        http = client()
        assert (await http.post(endpoint.url, HEADERS, b"first")).status == 200
        outcome = await http.post(endpoint.url, HEADERS, b"second")
        assert outcome.status == 200, outcome
        assert [r.body for r in endpoint.requests] == [b"first", b"second", b"second"]
        assert endpoint.connections == 2


async def test_a_fresh_connection_closed_before_any_answer_is_a_failed_attempt(
    client: MakeClient,
) -> None:
    with Endpoint(behaviour="close") as endpoint:
        outcome = await client().post(endpoint.url, HEADERS, b"body")
    assert (outcome.status, outcome.error, outcome.retryable) == (None, "reset", True)
    assert len(endpoint.requests) == 1  # not sent again: the server may have processed it


async def test_idle_connections_of_an_origin_posted_to_no_more_are_closed(
    client: MakeClient, mock_clock: trio.testing.MockClock
) -> None:
    # A checkout looks only at its own origin: an endpoint that got no further delivery (its
    # subscription gone) kept its sockets for as long as the broker ran, in CLOSE_WAIT once
    # the endpoint hung up, one descriptor each for every endpoint that ever came and went.
    http = client()
    with Endpoint() as first, Endpoint() as second:
        for endpoint in (first, second):
            assert (await http.post(endpoint.url, HEADERS, b"x")).delivered
        assert sum(len(idle) for idle in http._idle.values()) == 2
        assert await http.close_idle() == 0  # not idle long enough yet: kept for reuse
        mock_clock.jump(IDLE_SECONDS)
        assert await http.close_idle() == 2
        assert http._idle == {}  # and the origins are forgotten


async def test_the_idle_connections_are_closed_without_another_post(
    client: MakeClient, mock_clock: trio.testing.MockClock
) -> None:
    http = client()
    with Endpoint() as endpoint:
        assert (await http.post(endpoint.url, HEADERS, b"x")).delivered
        ((connection,),) = http._idle.values()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(http.keep_closing_idle)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(IDLE_SECONDS)
            await trio.testing.wait_all_tasks_blocked()
            assert http._idle == {}
            assert connection.stream.socket.fileno() == -1
            nursery.cancel_scope.cancel()
