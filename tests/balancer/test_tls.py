"""TLS termination: SNI selection, policies, ALPN, handshake timeouts, expiry metric."""

from __future__ import annotations

import datetime
import io
import ssl
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
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
    certificate_warnings,
    choose_certificates,
    close_tls,
    log_certificate_warnings,
)
from monitoring import fastio
from monitoring.certificates import EXPIRED, NOT_YET_VALID, CertificateFiles
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
        ("api.example.com.", "api"),  # one trailing dot: the root
        (".example.com", "default"),  # an empty label matches nothing ...
        ("a.example.com..", "default"),  # ... nor does a second trailing dot
        ("api.example.com..", "default"),
    ],
)
def test_select_follows_albs_rules(server_tls, server_name, stem):
    chosen = server_tls.select(server_name)  # all ECDSA: one certificate each time
    assert [c.cert_file.rsplit("/", 1)[1] for c in chosen] == [f"{stem}.pem"]


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
        (".example.com", False),
        ("a.example.com..", False),
        ("a..example.com", False),
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


async def test_a_given_deadline_bounds_the_handshake_not_a_fresh_timeout(
    certificates, autojump_clock
):
    """The listener waits for the first byte before the handshake: the deadline it set at
    the accept ends the handshake, whatever of the timeout that wait used."""
    tls = build_server_tls(https_listener(certificates, handshake=3.0))
    _client, server_raw = stream_pair()
    start = trio.current_time()
    await trio.sleep(2.5)
    assert await accept_tls(server_raw, tls, deadline=start + 3.0) is None
    assert trio.current_time() - start == pytest.approx(3.0)


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


# --- An ECDSA and an RSA certificate for one name (ALB's certificate list can hold both) ---------

ECDSA, RSA = trustme.KeyType.ECDSA, trustme.KeyType.RSA


def write_keyed(
    ca: trustme.CA, directory: Path, stem: str, *names: str, key_type: trustme.KeyType
) -> Certificate:
    """``write_pair`` with the leaf's key type chosen (trustme's default is ECDSA)."""
    leaf = ca.issue_cert(*names, common_name=stem, key_type=key_type)
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    leaf.private_key_pem.write_to_path(str(key_file))
    return Certificate(cert_file=str(cert_file), key_file=str(key_file))


# TLS 1.2 clients restricted by their cipher suites: RSA only, ECDSA only, or both with RSA
# offered first (the server's order must still pick ECDSA).
RSA_ONLY = "ECDHE-RSA-AES128-GCM-SHA256"
ECDSA_ONLY = "ECDHE-ECDSA-AES128-GCM-SHA256"
BOTH_RSA_FIRST = f"{RSA_ONLY}:{ECDSA_ONLY}"


def tls12_client(ca: trustme.CA, ciphers: str, *, check_hostname: bool = True) -> ssl.SSLContext:
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    context.check_hostname = check_hostname
    return context


class Outcome(NamedTuple):
    """One handshake, as the client saw it and as the server reports it."""

    key: str | None  # "ECDSA" / "RSA": the key of the certificate the client got; None: failed
    subject: str | None  # its CN
    version: str | None
    chosen: str | None  # the server's TlsConnection.certificate (access log's chosen_cert)
    context: ssl.SSLContext | None  # the server context the handshake ended on


def key_kind(der: bytes) -> str:
    public = x509.load_der_x509_certificate(der).public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "ECDSA"
    assert isinstance(public, rsa.RSAPublicKey)
    return "RSA"


async def tcp_handshake(tls: ServerTls, client: ssl.SSLContext, server_name: str | None) -> Outcome:
    """A real handshake over TCP on 127.0.0.1 (port 0), everything closed before returning."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got: dict[str, object] = {}
    try:
        with trio.fail_after(10):
            client_raw = await trio.open_tcp_stream("127.0.0.1", port)
            server_raw = await listeners[0].accept()
            client_stream = trio.SSLStream(client_raw, client, server_hostname=server_name)

            async def client_side() -> None:
                try:
                    await client_stream.do_handshake()
                except trio.BrokenResourceError:
                    await client_raw.aclose()  # the server then fails too
                    return
                der = client_stream.getpeercert(binary_form=True)
                assert der is not None
                got["der"], got["version"] = der, client_stream.version()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client_side)
                server = await accept_tls(server_raw, tls)
            if server is not None:
                got["chosen"], got["context"] = server.certificate, server.stream.socket.context
                close_tls(server)
            await server_raw.aclose()
            await client_raw.aclose()
    finally:
        for listener in listeners:
            await listener.aclose()
    if "der" not in got or server is None:
        return Outcome(None, None, None, None, None)
    der = got["der"]
    assert isinstance(der, bytes)
    cert = x509.load_der_x509_certificate(der)
    subject = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    return Outcome(
        key_kind(der),
        subject,
        str(got["version"]),
        str(got["chosen"]),
        got["context"],  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("listed", [(ECDSA, RSA), (RSA, ECDSA)], ids=["ecdsa-first", "rsa-first"])
async def test_an_ecdsa_rsa_pair_for_one_name_gives_each_client_the_one_it_supports(
    ca, tmp_path, listed
):
    default = write_keyed(ca, tmp_path, "default", "default.example.net", key_type=ECDSA)
    pair = {
        kind: write_keyed(ca, tmp_path, f"dual-{kind.name}", "dual.example.com", key_type=kind)
        for kind in listed
    }
    tls = build_server_tls(https_listener([default, *pair.values()]))
    cases = [
        ("TLS 1.2, RSA only", tls12_client(ca, RSA_ONLY), RSA),  # failed if ECDSA listed first
        ("TLS 1.2, ECDSA only", tls12_client(ca, ECDSA_ONLY), ECDSA),  # ... if RSA was
        ("TLS 1.2, both", tls12_client(ca, BOTH_RSA_FIRST), ECDSA),  # ALB's preference
        ("TLS 1.3", client_context(ca), ECDSA),  # the server's signature algorithm order
    ]
    for label, client, expected in cases:
        outcome = await tcp_handshake(tls, client, "dual.example.com")
        assert outcome.key == expected.name, (label, outcome)
        assert outcome.subject == f"dual-{expected.name}"
        # The access log names the certificate presented (up to TLS 1.2 from the suite; in
        # TLS 1.3 the ECDSA one, which every client offering ECDSA signatures gets).
        assert outcome.chosen == pair[expected].cert_file
    # One context holds the pair: built with the listener, not per handshake.
    assert [c.cert_file for c in tls.select("dual.example.com")] == [
        pair[ECDSA].cert_file,
        pair[RSA].cert_file,
    ]
    assert len(tls.contexts) == 2  # the default's, the pair's


async def test_pairs_for_wildcards_and_the_default_and_an_rsa_wildcard_backs_an_exact_ecdsa(
    ca, tmp_path
):
    def keyed(stem: str, name: str, key_type: trustme.KeyType) -> Certificate:
        return write_keyed(ca, tmp_path, stem, name, key_type=key_type)

    certificates = [
        keyed("default-ecdsa", "default.example.net", ECDSA),
        keyed("wild-rsa", "*.example.com", RSA),  # RSA listed first: ECDSA still wins
        keyed("api-ecdsa", "api.example.com", ECDSA),
        keyed("wild-ecdsa", "*.example.com", ECDSA),
        keyed("default-rsa", "default.example.net", RSA),  # the default's RSA twin
        keyed("other-rsa", "other.example.org", RSA),  # RSA, but not for the default's name
    ]
    tls = build_server_tls(https_listener(certificates))
    # SNI name -> the certificate of an RSA-only client, of one supporting both.
    expected = {
        None: ("default-rsa", "default-ecdsa"),
        "unknown.example.org": ("default-rsa", "default-ecdsa"),
        "default.example.net": ("default-rsa", "default-ecdsa"),
        "a.example.com": ("wild-rsa", "wild-ecdsa"),
        # The exact ECDSA certificate still wins; an RSA-only client gets the RSA wildcard
        # instead of a failed handshake.
        "api.example.com": ("wild-rsa", "api-ecdsa"),
        "other.example.org": ("other-rsa", "other-rsa"),  # a lone RSA certificate: as before
    }
    for server_name, (rsa_only, both) in expected.items():
        verify = server_name not in (None, "unknown.example.org")
        got = [
            await tcp_handshake(tls, tls12_client(ca, ciphers, check_hostname=verify), server_name)
            for ciphers in (RSA_ONLY, BOTH_RSA_FIRST)
        ]
        assert [o.subject for o in got] == [rsa_only, both], server_name
        assert [o.chosen for o in got] == [
            str(tmp_path / f"{rsa_only}.pem"),
            str(tmp_path / f"{both}.pem"),
        ]


async def test_each_certificate_of_a_pair_is_sent_with_its_own_chain(ca, tmp_path):
    # Each leaf is issued by its own intermediate, and the client trusts the root only: it
    # verifies only if the server sends the intermediate of the leaf it presents.
    pair = {
        kind: write_keyed(
            ca.create_child_ca(key_type=kind),
            tmp_path,
            f"chained-{kind.name}",
            "dual.example.com",
            key_type=kind,
        )
        for kind in (ECDSA, RSA)
    }
    default = write_keyed(ca, tmp_path, "default", "default.example.net", key_type=ECDSA)
    tls = build_server_tls(https_listener([default, pair[ECDSA], pair[RSA]]))
    for ciphers, kind in ((RSA_ONLY, RSA), (ECDSA_ONLY, ECDSA)):
        outcome = await tcp_handshake(tls, tls12_client(ca, ciphers), "dual.example.com")
        assert outcome.subject == f"chained-{kind.name}"


async def test_same_key_type_keeps_the_first_listed_and_contexts_are_built_once(ca, tmp_path):
    certificates = [
        write_keyed(ca, tmp_path, "default", "default.example.net", key_type=ECDSA),
        write_keyed(ca, tmp_path, "rsa-1", "dual.example.com", key_type=RSA),
        write_keyed(ca, tmp_path, "ecdsa-1", "dual.example.com", key_type=ECDSA),
        write_keyed(ca, tmp_path, "ecdsa-2", "dual.example.com", key_type=ECDSA),
        write_keyed(ca, tmp_path, "rsa-2", "dual.example.com", key_type=RSA),
    ]
    tls = build_server_tls(https_listener(certificates))
    seen = set()
    for _ in range(3):
        for ciphers, subject in ((RSA_ONLY, "rsa-1"), (BOTH_RSA_FIRST, "ecdsa-1")):
            outcome = await tcp_handshake(tls, tls12_client(ca, ciphers), "dual.example.com")
            assert outcome.subject == subject
            assert any(outcome.context is context for context in tls.contexts)
            seen.add(id(outcome.context))
    assert len(seen) == 1  # the pair's one context served all six
    assert [c.cert_file for c in tls.select("dual.example.com")] == [
        certificates[2].cert_file,
        certificates[1].cert_file,
    ]
    # The default's context, the pair's, and one each for the two never served (so that
    # OpenSSL checks them at load, as before): four, all built with the listener.
    assert len(tls.contexts) == 4


async def test_an_exact_rsa_certificate_does_not_hide_an_ecdsa_wildcard(ca, tmp_path):
    # ALB: of the certificates matching a name, the best the client supports, ECDSA first.
    certificates = [
        write_keyed(ca, tmp_path, "default", "default.example.net", key_type=RSA),
        write_keyed(ca, tmp_path, "api-rsa", "api.example.com", key_type=RSA),
        write_keyed(ca, tmp_path, "wild-ecdsa", "*.example.com", key_type=ECDSA),
        write_keyed(ca, tmp_path, "api-rsa-again", "api.example.com", key_type=RSA),
        write_keyed(ca, tmp_path, "wild-rsa", "*.example.com", key_type=RSA),
    ]
    tls = build_server_tls(https_listener(certificates))
    cases = [
        ("TLS 1.3", client_context(ca), "wild-ecdsa"),
        ("TLS 1.2, both", tls12_client(ca, BOTH_RSA_FIRST), "wild-ecdsa"),
        ("TLS 1.2, ECDSA only", tls12_client(ca, ECDSA_ONLY), "wild-ecdsa"),
        # Within RSA the exact name still wins over the RSA wildcard, the first listed first.
        ("TLS 1.2, RSA only", tls12_client(ca, RSA_ONLY), "api-rsa"),
    ]
    for label, client, subject in cases:
        outcome = await tcp_handshake(tls, client, "api.example.com")
        assert outcome.subject == subject, label
        assert outcome.chosen == str(tmp_path / f"{subject}.pem"), label
    # Names only the wildcards carry keep their pair.
    assert [c.cert_file for c in tls.select("www.example.com")] == [
        certificates[2].cert_file,
        certificates[4].cert_file,
    ]


def test_a_certificate_listed_twice_counts_once(certificates):
    listed = [certificates[0], certificates[1], certificates[0], certificates[1]]
    tls = build_server_tls(https_listener(listed))
    assert [c.cert_file for c in tls.certificates] == [c.cert_file for c in certificates[:2]]
    metrics, _ = metrics_and_tls(tls)
    exposition = generate_latest(metrics.registry).decode()
    series = [
        line
        for line in exposition.splitlines()
        if line.startswith("wharf_balancer_certificate_expiry_seconds{")
    ]
    assert len(series) == 2
    assert len(set(series)) == 2


def test_expiry_metric_has_one_series_per_file_of_a_listener(certificates):
    # Two entries may name one certificate file with two (equal) key files.
    tls = build_server_tls(https_listener(certificates[:2]))
    repeated = ServerTls(
        listener=tls.listener,
        certificates=(*tls.certificates, tls.certificates[1]),
        choice=tls.choice,
        contexts=tls.contexts,
        handshake_timeout=tls.handshake_timeout,
    )
    metrics, _ = metrics_and_tls(repeated)
    exposition = generate_latest(metrics.registry).decode()
    assert exposition.count("wharf_balancer_certificate_expiry_seconds{") == 2


def test_certificates_outside_their_validity_are_served_and_warned_about(ca, tmp_path):
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    day = datetime.timedelta(days=1)
    certificates = [
        write_pair(ca, tmp_path, "current", "current.example.com"),
        write_pair(ca, tmp_path, "expired", "expired.example.com", not_after=now - day),
        write_pair(ca, tmp_path, "future", "future.example.com"),
    ]
    future = ca.issue_cert("future.example.com", not_before=now + day, not_after=now + 9 * day)
    future.cert_chain_pems[0].write_to_path(certificates[2].cert_file)
    future.private_key_pem.write_to_path(certificates[2].key_file)
    tls = build_server_tls(https_listener(certificates))  # nothing refused
    warnings = certificate_warnings([tls], now.timestamp())
    assert [(w.certificate.cert_file, w.reason) for w in warnings] == [
        (certificates[1].cert_file, EXPIRED),
        (certificates[2].cert_file, NOT_YET_VALID),
    ]
    assert str(warnings[1]) == (
        f"{certificates[2].cert_file}: warning: the certificate of listener 'web-tls' is not"
        f" valid yet (notBefore {(now + day):%Y-%m-%dT%H:%M:%SZ}, notAfter"
        f" {(now + 9 * day):%Y-%m-%dT%H:%M:%SZ}); it is served all the same"
    )
    output = io.StringIO()
    log_certificate_warnings([tls], EventLog("balancer", stream=output), now.timestamp())
    lines = output.getvalue().splitlines()
    assert len(lines) == 2
    assert "level=warning event=tls.certificate_not_valid" in lines[0]
    assert f"listener=web-tls file={certificates[1].cert_file} reason=expired" in lines[0]
    assert f"not_after={(now - day):%Y-%m-%dT%H:%M:%SZ}" in lines[0]
    assert f"not_before={(now + day):%Y-%m-%dT%H:%M:%SZ}" in lines[1]


# Certificate names and SNI names over a few labels, so that lists share names often.
CERT_NAMES = ["a.example.com", "b.example.com", "example.com", "*.example.com"]
CERT_NAMES += ["*.a.example.com", "x.a.example.com"]
SNI_NAMES = [*CERT_NAMES[:3], "x.a.example.com", "c.example.com", "other.org", "A.Example.COM."]
SNI_NAMES += [".example.com", "a.example.com..", "y.x.a.example.com"]
KEY_TYPES = ["ECDSA", "RSA", "Ed25519"]

listed_certificates = st.lists(
    st.tuples(st.lists(st.sampled_from(CERT_NAMES), unique=True), st.sampled_from(KEY_TYPES)),
    min_size=1,
    max_size=6,
).map(
    lambda drawn: [
        CertificateFiles(f"c{i}.pem", f"c{i}.key", tuple(names), f"CN=c{i}", 0.0, key_type)
        for i, (names, key_type) in enumerate(drawn)
    ]
)


def served(certificates: list[CertificateFiles], candidates: list[int]) -> list[int]:
    """The first candidate alone when ALB could not pair it, else the first ECDSA candidate
    and the first RSA one, ECDSA first."""
    if certificates[candidates[0]].key_type not in ("ECDSA", "RSA"):
        return candidates[:1]
    return [
        next(i for i in candidates if certificates[i].key_type == kind)
        for kind in ("ECDSA", "RSA")
        if any(certificates[i].key_type == kind for i in candidates)
    ]


def matching(certificates: list[CertificateFiles], sni: str | None) -> list[int]:
    """The certificates carrying ``sni``: the exact ones, then the wildcards, listed order."""
    name = (sni or "").lower()
    name = name.removesuffix(".")
    if not name or not all(name.split(".")):
        return []
    parent = name.split(".", 1)[1] if "." in name else None
    exact = [i for i, c in enumerate(certificates) if name in c.names]
    wild = [i for i, c in enumerate(certificates) if parent and f"*.{parent}" in c.names]
    return exact + wild


def expected_selection(certificates: list[CertificateFiles], sni: str | None) -> list[int]:
    found = matching(certificates, sni)
    if found:
        return served(certificates, found)  # so exact before wildcard within a key type
    default = set(certificates[0].names)
    twins = [i for i, c in enumerate(certificates) if i and default and default <= set(c.names)]
    return served(certificates, [0, *twins])


@given(listed_certificates, st.sampled_from([None, *SNI_NAMES]))
def test_selection_gives_the_best_matching_certificate_of_each_key_type(certificates, sni):
    choice = choose_certificates(certificates)
    assert list(choice.sets[choice.index(sni)]) == expected_selection(certificates, sni)
    if sni is not None:
        assert choice.matches(sni) is bool(matching(certificates, sni))
    assert sorted({i for chosen in choice.sets for i in chosen}) == list(range(len(certificates)))


def test_a_pair_openssl_refuses_under_the_policy_is_named_with_its_place(
    ca, certificates, tmp_path
):
    """A 1024-bit RSA key passes the file checks, and loads under ELBSecurityPolicy-2016-08,
    but OpenSSL's security level refuses it under a TLS 1.3 policy: the error names the
    listener entry and the policy, as every other refusal names its key."""
    cert_file, key_file = tmp_path / "weak.pem", tmp_path / "weak.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-days", "30",
            "-subj", "/CN=weak.example.org", "-addext", "subjectAltName=DNS:weak.example.org",
            "-keyout", str(key_file), "-out", str(cert_file),
        ],
        capture_output=True,
        check=True,
    )  # fmt: skip
    listed = [certificates[0], Certificate(cert_file=str(cert_file), key_file=str(key_file))]
    build_server_tls(https_listener(listed, policy="ELBSecurityPolicy-2016-08"))
    with pytest.raises(ConfigError) as refused:
        build_server_tls(
            https_listener(listed, policy="ELBSecurityPolicy-TLS13-1-2-2021-06"), "$.listeners[3]"
        )
    assert refused.value.path == str(cert_file)
    assert refused.value.reason.endswith(
        ", under ssl_policy ELBSecurityPolicy-TLS13-1-2-2021-06"
        " - at `$.listeners[3].certificates[1]`"
    )
