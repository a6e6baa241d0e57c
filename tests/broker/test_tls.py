"""HTTPS on the API listener: certificates from trustme, clients from boto3 and ssl."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path

import msgspec
import pytest
import trio
import trustme
from botocore.exceptions import SSLError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.cli import main
from broker.config import ApiSettings, BrokerConfig, TlsSettings
from broker.tls import TlsTerminator, server_context
from monitoring.configfile import ConfigError, decode
from monitoring.httpserver import Draining
from tests.support.broker import (
    BrokerThread,
    broker_config,
    https_client,
    tls_settings,
)


def trust(ca: trustme.CA, path: Path) -> str:
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def tls_config(directory: Path, tls: TlsSettings) -> BrokerConfig:
    config = broker_config(directory / "data")
    return BrokerConfig(
        api=ApiSettings(port=0, tls=tls),
        admin=config.admin,
        storage=config.storage,
    )


def presented_certificate(address: tuple[str, int], ca_file: str) -> bytes:
    """The DER certificate a fresh TLS connection is shown (verified against ``ca_file``)."""
    context = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection(address, timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        certificate = tls.getpeercert(binary_form=True)
        assert certificate is not None
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        return certificate


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


# ---------------------------------------------------------------------- configuration


def test_tls_needs_both_files():
    with pytest.raises(ConfigError, match="both cert_file and key_file"):
        decode(b'[api.tls]\ncert_file = "/x.pem"\n', BrokerConfig)
    assert not decode(b"", BrokerConfig).api.tls.enabled


def test_unusable_files_are_config_errors(tmp_path, ca):
    settings = tls_settings(ca, tmp_path)
    with pytest.raises(ConfigError, match="No such file or directory"):
        server_context(TlsSettings(cert_file=str(tmp_path / "none.pem"), key_file="k"))
    other = tls_settings(trustme.CA(), tmp_path, "other")
    mismatched = TlsSettings(cert_file=settings.cert_file, key_file=other.key_file)
    with pytest.raises(ConfigError, match="this key does not match the certificate") as error:
        server_context(mismatched)
    assert error.value.path == other.key_file  # the key is named, not the certificate
    # An encrypted key is refused, never a passphrase prompt (on a terminal that prompt
    # froze the whole event loop, SIGTERM included).
    encrypted = tmp_path / "encrypted.key"
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="the private key is encrypted"):
        server_context(TlsSettings(cert_file=settings.cert_file, key_file=str(encrypted)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="no PEM certificate in the file"):
        server_context(TlsSettings(cert_file=str(garbage), key_file=settings.key_file))


def test_the_context_refuses_old_protocols(tmp_path, ca):
    context = server_context(tls_settings(ca, tmp_path))
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    terminator = TlsTerminator(tls_settings(ca, tmp_path))
    with pytest.raises(ConfigError):
        terminator.reload(TlsSettings(cert_file="/nonexistent.pem", key_file="/nonexistent"))
    assert terminator.settings.cert_file.endswith("server.pem")  # still the old one


# ---------------------------------------------------------------------- a real listener


def test_boto3_talks_to_the_broker_over_https(tmp_path, ca):
    ca_file = trust(ca, tmp_path / "ca.pem")
    with BrokerThread(tls_config(tmp_path, tls_settings(ca, tmp_path))) as broker:
        host, port = broker.api
        sqs = https_client("sqs", f"https://{host}:{port}", verify=ca_file)
        url = sqs.create_queue(QueueName="secure")["QueueUrl"]
        assert url == f"https://{host}:{port}/000000000000/secure"
        assert sqs.list_queues()["QueueUrls"] == [url]
        sqs.send_message(QueueUrl=url, MessageBody="over tls")
        [message] = sqs.receive_message(QueueUrl=url)["Messages"]
        assert message["Body"] == "over tls"

        # A client that does not trust the CA refuses the connection.
        stranger = https_client(
            "sqs", f"https://{host}:{port}", verify=trust(trustme.CA(), tmp_path / "x")
        )
        with pytest.raises(SSLError):
            stranger.list_queues()


def test_plain_http_old_tls_and_silent_clients_are_turned_away(tmp_path, ca):
    ca_file = trust(ca, tmp_path / "ca.pem")
    with BrokerThread(tls_config(tmp_path, tls_settings(ca, tmp_path))) as broker:
        address = broker.api
        # Plain HTTP to the TLS port: the handshake fails and the connection closes.
        with socket.create_connection(address, timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not read_all(raw).startswith(b"HTTP/")
        # TLS 1.1 is refused by the server (the client here would accept it).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old = ssl.create_default_context(cafile=ca_file)
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(address, timeout=5) as raw, pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="127.0.0.1")
        # A client that never starts the handshake is cut off after the handshake timeout.
        started = time.monotonic()
        with socket.create_connection(address, timeout=10) as raw:
            assert raw.recv(1024) == b""
        assert time.monotonic() - started < 9
        # And the listener still serves.
        assert presented_certificate(address, ca_file)


def negotiation_errors(admin: tuple[str, int]) -> dict[str, float]:
    """wharf_broker_tls_negotiation_errors_total of the API listener, by reason."""
    with socket.create_connection(admin, timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = read_all(raw).decode()
    prefix = 'wharf_broker_tls_negotiation_errors_total{listener="api",reason="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(prefix)
    }


def test_failed_handshakes_are_counted_by_reason_but_probes_are_not(tmp_path, ca):
    ca_file = trust(ca, tmp_path / "ca.pem")
    with BrokerThread(tls_config(tmp_path, tls_settings(ca, tmp_path))) as broker:
        for _ in range(3):  # TCP health checks: connect, close
            socket.create_connection(broker.api, timeout=5).close()
        assert presented_certificate(broker.api, ca_file)
        assert negotiation_errors(broker.admin) == {}
        with socket.create_connection(broker.api, timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            read_all(raw)
        with socket.create_connection(broker.api, timeout=5) as raw:
            assert raw.recv(1024) == b""  # silent: cut off after the handshake timeout
        errors = negotiation_errors(broker.admin)
    assert errors == {"http_request": 1, "timeout": 1}


def test_reload_swaps_the_certificate(tmp_path, ca):
    first = tls_settings(ca, tmp_path)
    config = tls_config(tmp_path, first)
    with BrokerThread(config) as broker:
        address = broker.api
        before = presented_certificate(address, trust(ca, tmp_path / "ca.pem"))

        # Renewal: a certificate from a new CA written over the same files, then SIGHUP.
        renewed_ca = trustme.CA()
        tls_settings(renewed_ca, tmp_path)
        broker.call(broker.app.reload, config)
        after = presented_certificate(address, trust(renewed_ca, tmp_path / "renewed.pem"))
        assert after != before

        # A broken file refuses the reload; the renewed certificate keeps serving.
        Path(first.key_file).write_text("broken")
        with pytest.raises(ConfigError):
            broker.call(broker.app.reload, config)
        assert presented_certificate(address, str(tmp_path / "renewed.pem")) == after


def test_a_certificate_out_of_its_validity_is_served_with_a_warning_at_each_load(
    tmp_path, ca, capsys
):
    """Every client that verifies an expired certificate fails: the start, each reload and
    check-config say so (as the balancer's do), naming the file and the dates."""
    cert = ca.issue_cert(
        "127.0.0.1",
        not_before=datetime.datetime(2019, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
    )
    cert_file, key_file = tmp_path / "old.pem", tmp_path / "old.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    expired = TlsSettings(cert_file=str(cert_file), key_file=str(key_file))
    config = tls_config(tmp_path, expired)
    warning = (
        f"event=tls.certificate_not_valid daemon=broker listener=api file={cert_file}"
        " reason=expired not_before=2019-01-01T00:00:00Z not_after=2020-01-01T00:00:00Z"
    )
    with BrokerThread(config) as broker:
        host, port = broker.api
        sqs = https_client("sqs", f"https://{host}:{port}", verify=trust(ca, tmp_path / "ca.pem"))
        with pytest.raises(SSLError, match="expired"):
            sqs.list_queues()  # served all the same
        assert broker.daemon.log_output.getvalue().count(warning) == 1
        broker.call(broker.app.reload, config)
        assert broker.daemon.log_output.getvalue().count(warning) == 2
        # A renewed certificate: no warning.
        broker.call(broker.app.reload, tls_config(tmp_path, tls_settings(ca, tmp_path)))
        assert broker.daemon.log_output.getvalue().count("tls.certificate_not_valid") == 2

    toml = tmp_path / "broker.toml"
    toml.write_text(
        f'[api.tls]\ncert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    )
    assert main(["check-config", str(toml)]) == 0
    assert capsys.readouterr().err == (
        f"{cert_file}: warning: the certificate of api.tls has expired (notBefore"
        " 2019-01-01T00:00:00Z, notAfter 2020-01-01T00:00:00Z); it is served all the same\n"
    )


def expiry_samples(admin: tuple[str, int]) -> list[str]:
    with socket.create_connection(admin, timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = read_all(raw).decode()
    return [
        line for line in body.splitlines() if line.startswith("wharf_broker_certificate_expiry")
    ]


def test_the_certificate_expiry_metric_follows_a_renewal(tmp_path, ca):
    """Scraped as the balancer's is, so one alert (notAfter - time() < 14 days) covers both."""
    first = ca.issue_cert("127.0.0.1", not_after=datetime.datetime(2031, 7, 1, tzinfo=datetime.UTC))
    cert_file, key_file = tmp_path / "api.pem", tmp_path / "api.key"
    first.cert_chain_pems[0].write_to_path(str(cert_file))
    first.private_key_pem.write_to_path(str(key_file))
    config = tls_config(tmp_path, TlsSettings(cert_file=str(cert_file), key_file=str(key_file)))
    label = f'wharf_broker_certificate_expiry_seconds{{certificate="{cert_file}",listener="api"}} '
    renewal = datetime.datetime(2032, 1, 1, tzinfo=datetime.UTC)
    with BrokerThread(config) as broker:
        [before] = expiry_samples(broker.admin)
        renewed = ca.issue_cert("127.0.0.1", not_after=renewal)
        renewed.cert_chain_pems[0].write_to_path(str(cert_file))
        renewed.private_key_pem.write_to_path(str(key_file))
        broker.call(broker.app.reload, config)
        [after] = expiry_samples(broker.admin)
    july_2031 = datetime.datetime(2031, 7, 1, tzinfo=datetime.UTC).timestamp()
    assert before.startswith(label)
    assert float(before.rsplit(" ", 1)[1]) == july_2031
    assert after.startswith(label)
    assert float(after.rsplit(" ", 1)[1]) == renewal.timestamp()


def open_connections(admin: tuple[str, int]) -> float:
    with socket.create_connection(admin, timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = read_all(raw).decode()
    [line] = [
        line
        for line in body.splitlines()
        if line.startswith('wharf_connections_open{listener="api"}')
    ]
    return float(line.rsplit(" ", 1)[1])


def test_a_stop_closes_a_connection_that_has_not_said_hello_at_once(tmp_path, ca):
    """A client that connected but sent no ClientHello yet (a pool's spare connection) is idle,
    as a keep-alive connection between requests: a stop closes it at once instead of waiting
    out the handshake timeout, which delayed every restart by that much."""
    settings = msgspec.structs.replace(tls_settings(ca, tmp_path), handshake_timeout_seconds=40.0)
    broker = BrokerThread(tls_config(tmp_path, settings)).start()
    stopper = threading.Thread(target=broker.stop)
    try:
        with socket.create_connection(broker.api, timeout=5) as raw:
            for _ in range(100):  # until the broker has accepted it
                if open_connections(broker.admin) == 1:
                    break
                time.sleep(0.05)
            stopper.start()
            raw.settimeout(20)  # well before the handshake timeout
            assert raw.recv(1024) == b""
    finally:
        if stopper.ident is None:  # failed before the stop began
            broker.stop()
        else:
            stopper.join()


async def test_a_connection_reaching_the_handshake_after_the_stop_began_is_closed(tmp_path, ca):
    # Draining only cuts the idle waits already under way when it starts: a connection
    # accepted just before the stop, whose handler reached the handshake after it, waited the
    # whole handshake timeout.
    settings = msgspec.structs.replace(tls_settings(ca, tmp_path), handshake_timeout_seconds=40.0)
    terminator = TlsTerminator(settings)
    draining = Draining()
    draining.start()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        client = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
        async with client, await listeners[0].accept() as accepted:
            with trio.fail_after(5):
                assert await terminator.accept(accepted, draining) is None
