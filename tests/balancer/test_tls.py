"""TLS termination: SNI selection, policies, ALPN, handshake timeouts, expiry metric."""

from __future__ import annotations

import datetime
import ssl

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import generate_latest

from balancer.config import (
    SSL_POLICIES,
    Certificate,
    FixedResponse,
    HttpListener,
    HttpsListener,
    ListenerTimeouts,
    SslPolicyName,
)
from balancer.tls import (
    ServerTls,
    TlsConnection,
    TlsMetrics,
    accept_tls,
    build_all,
    build_server_tls,
    close_tls,
)
from monitoring import fastio
from monitoring.configfile import ConfigError
from monitoring.logging import EventLog
from monitoring.metrics import Metrics
from tests.support.socket_pairs import stream_pair
from tests.support.tls import client_context, write_pair

NOT_AFTER = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def https_listener(certificates, *, policy: SslPolicyName | None = None, handshake=5.0):
    extra = {"ssl_policy": policy} if policy else {}
    return HttpsListener(
        name="web-tls",
        port=0,
        default_action=FixedResponse(status_code=200),
        certificates=tuple(certificates),
        timeouts=ListenerTimeouts(tls_handshake_seconds=handshake),
        **extra,
    )


@pytest.fixture
def certificates(ca, tmp_path):
    return [
        write_pair(ca, tmp_path, "default", "default.example.net", not_after=NOT_AFTER),
        write_pair(ca, tmp_path, "wild", "*.example.com"),
        write_pair(ca, tmp_path, "api", "api.example.com", "API2.example.com"),
        write_pair(ca, tmp_path, "api-again", "api.example.com"),
    ]


@pytest.fixture
def server_tls(certificates):
    return build_server_tls(https_listener(certificates))


def metrics_and_tls(tls: ServerTls) -> tuple[Metrics, TlsMetrics]:
    metrics = Metrics("balancer", version="test")
    return metrics, TlsMetrics(metrics, EventLog("balancer"), lambda: [tls])


@pytest.mark.parametrize(
    ("server_name", "stem"),
    [
        (None, "default"),
        ("default.example.net", "default"),
        ("unknown.example.org", "default"),
        ("a.example.com", "wild"),
        ("A.Example.COM.", "wild"),
        ("example.com", "default"),  # a wildcard never matches the bare parent
        ("a.b.example.com", "default"),  # ... nor more than one label
        ("api.example.com", "api"),  # exact beats wildcard; the first listed wins
        ("api2.example.com", "api"),
    ],
)
def test_select_follows_albs_rules(server_tls, server_name, stem):
    chosen = server_tls.certificates[server_tls.select(server_name)]
    assert chosen.cert_file.endswith(f"/{stem}.pem")


@pytest.mark.parametrize(
    ("server_name", "matched"),
    [
        ("default.example.net", True),
        ("A.Example.COM.", True),
        ("api2.example.com", True),
        ("unknown.example.org", False),
        ("example.com", False),
        ("a.b.example.com", False),
        ("net", False),
    ],
)
def test_matches_tells_a_certificate_name_from_the_default_standing_in(
    server_tls, server_name, matched
):
    assert server_tls.matches(server_name) is matched


async def handshake(
    tls: ServerTls,
    client: ssl.SSLContext,
    server_name: str | None,
    tls_metrics: TlsMetrics | None = None,
) -> tuple[TlsConnection | None, trio.SSLStream | BaseException]:
    """Run both sides over a socket pair; the client side result or its exception."""
    client_raw, server_raw = stream_pair()
    client_stream = trio.SSLStream(client_raw, client, server_hostname=server_name)
    result: dict[str, object] = {}

    async def client_side() -> None:
        try:
            await client_stream.do_handshake()
            result["client"] = client_stream
        except trio.BrokenResourceError as exc:
            result["client"] = exc
            await client_raw.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        server = await accept_tls(server_raw, tls, tls_metrics)
        if server is None:
            await server_raw.aclose()
    return server, result["client"]  # type: ignore[return-value]


def common_name(stream: trio.SSLStream) -> str:
    der = stream.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize(
    ("server_name", "stem"),
    [
        ("a.example.com", "wild"),
        ("api.example.com", "api"),
        ("default.example.net", "default"),
        ("other.example.org", "default"),
    ],
)
async def test_handshake_presents_the_sni_certificate_and_alpn(ca, server_tls, server_name, stem):
    client = client_context(ca)
    client.check_hostname = stem != "default"
    server, client_side = await handshake(server_tls, client, server_name)
    assert server is not None
    assert isinstance(client_side, trio.SSLStream)
    assert common_name(client_side) == stem
    assert client_side.selected_alpn_protocol() == "http/1.1"
    assert server.stream.socket.selected_alpn_protocol() == "http/1.1"
    assert server.certificate.endswith(f"/{stem}.pem")
    # ALB's domain_name: the SNI name only when a certificate carries it.
    assert server.server_name == (None if server_name == "other.example.org" else server_name)
    assert server.protocol == "TLSv1.3"
    assert server.cipher.startswith("TLS_")


async def test_no_sni_gets_the_default_certificate(ca, server_tls):
    client = client_context(ca)
    client.check_hostname = False
    server, client_side = await handshake(server_tls, client, None)
    assert server is not None
    assert isinstance(client_side, trio.SSLStream)
    assert common_name(client_side) == "default"
    assert server.server_name is None
    assert server.certificate.endswith("/default.pem")


async def test_tls13_only_policy_refuses_tls12(ca, certificates):
    tls = build_server_tls(
        https_listener(certificates, policy="ELBSecurityPolicy-TLS13-1-3-2021-06")
    )
    metrics, tls_metrics = metrics_and_tls(tls)
    old = client_context(ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    server, client_side = await handshake(tls, old, "a.example.com", tls_metrics)
    assert server is None
    assert isinstance(client_side, BaseException)
    exposition = generate_latest(metrics.registry).decode()
    assert 'wharf_balancer_tls_negotiation_errors_total{listener="web-tls",reason=' in exposition

    modern = client_context(ca)
    server, client_side = await handshake(tls, modern, "a.example.com")
    assert server is not None
    assert isinstance(client_side, trio.SSLStream)
    assert client_side.version() == "TLSv1.3"


async def test_tls12_only_policy_refuses_tls13_and_serves_tls12(ca, certificates):
    tls = build_server_tls(https_listener(certificates, policy="ELBSecurityPolicy-TLS-1-2-2017-01"))
    new = client_context(ca)
    new.minimum_version = ssl.TLSVersion.TLSv1_3
    server, _ = await handshake(tls, new, "a.example.com")
    assert server is None
    server, client_side = await handshake(tls, client_context(ca), "a.example.com")
    assert server is not None
    assert isinstance(client_side, trio.SSLStream)
    assert client_side.version() == "TLSv1.2"
    cipher = client_side.cipher()
    assert cipher is not None
    assert "SHA" not in cipher[0] or cipher[0].endswith(("SHA256", "SHA384"))


async def test_a_silent_client_times_out(certificates, autojump_clock):
    tls = build_server_tls(https_listener(certificates, handshake=3.0))
    metrics, tls_metrics = metrics_and_tls(tls)
    _client, server_raw = stream_pair()
    start = trio.current_time()
    assert await accept_tls(server_raw, tls, tls_metrics) is None
    assert trio.current_time() - start == pytest.approx(3.0)
    value = metrics.registry.get_sample_value(
        "wharf_balancer_tls_negotiation_errors_total",
        {"listener": "web-tls", "reason": "timeout"},
    )
    assert value == 1


async def test_plain_http_on_the_tls_port_is_a_counted_failure(server_tls):
    metrics, tls_metrics = metrics_and_tls(server_tls)
    client_raw, server_raw = stream_pair()
    await client_raw.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await accept_tls(server_raw, server_tls, tls_metrics) is None
    samples = [
        s
        for family in metrics.registry.collect()
        if family.name == "wharf_balancer_tls_negotiation_errors"
        for s in family.samples
        if s.name.endswith("_total")
    ]
    assert [s.labels["listener"] for s in samples] == ["web-tls"]
    assert samples[0].labels["reason"] not in ("timeout", "closed")


def test_expiry_metric_is_the_certificates_not_after(server_tls):
    metrics, _ = metrics_and_tls(server_tls)
    default = server_tls.certificates[0]
    value = metrics.registry.get_sample_value(
        "wharf_balancer_certificate_expiry_seconds",
        {"listener": "web-tls", "certificate": default.cert_file},
    )
    assert value == NOT_AFTER.timestamp()


def test_build_all_skips_http_listeners_and_names_bad_files(certificates, tmp_path):
    plain = HttpListener(name="web", port=0, default_action=FixedResponse(status_code=200))
    built = build_all([plain, https_listener(certificates)])
    assert list(built) == ["web-tls"]
    gone = Certificate(cert_file=certificates[1].cert_file, key_file=str(tmp_path / "gone.key"))
    broken = https_listener([certificates[0], gone])
    with pytest.raises(ConfigError) as error:
        build_all([broken])
    assert error.value.path == str(tmp_path / "gone.key")


def test_every_policy_builds(certificates):
    for name in SSL_POLICIES:
        tls = build_server_tls(https_listener(certificates[:1], policy=name))  # type: ignore[arg-type]
        assert tls.context.minimum_version.name == SSL_POLICIES[name].minimum_version


async def test_close_sends_close_notify(ca, server_tls):
    client = client_context(ca)
    server, client_side = await handshake(server_tls, client, "a.example.com")
    assert server is not None
    assert isinstance(client_side, trio.SSLStream)
    close_tls(server)
    # A clean TLS close reads as end of stream, not as a truncation.
    assert await client_side.receive_some(10) == b""
    with pytest.raises(trio.ClosedResourceError):  # and the socket is closed
        await server.stream.send_all(b"x")


async def test_close_never_waits_for_a_client_that_reads_nothing(ca, server_tls, autojump_clock):
    server, client_side = await handshake(server_tls, client_context(ca), "a.example.com")
    assert server is not None
    assert isinstance(client_side, trio.SSLStream)
    tcp = server.stream.socket.tcp
    raw = fastio.raw_socket(tcp)
    assert raw is not None
    while True:  # fill the client's receive buffer and our send buffer: nothing more goes out
        try:
            raw.send(b"x" * 65536)
        except BlockingIOError:
            break
    start = trio.current_time()
    close_tls(server)
    assert trio.current_time() == start  # the close_notify that did not fit is dropped
    assert tcp.fileno() == -1
    await client_side.transport_stream.aclose()
