"""TLS to targets on real sockets: the unverified client context, SNI and ALPN, ALB's
back-end policies (chosen by the listeners' policies) against ``openssl s_server``, and a
handshake against a server that does not speak TLS (TlsSocket itself: test_tls_socket.py)."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st

from balancer import target_tls
from balancer.target_tls import (
    BACKEND_FIPS_POLICY,
    BACKEND_POLICY,
    BACKEND_TLS13_POLICY,
    SuiteNotInPolicy,
    backend_policy,
    client_context,
    server_name,
)
from balancer.tls_policies import SSL_POLICIES, TLS13_FIPS_SUITES, TLS13_SUITES
from balancer.tls_socket import TlsSocket
from tests.support.tls_targets import server_context


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.0.0.1", None),
        ("::1", None),
        ("fe80::1%eth0", None),
        ("app.internal", "app.internal"),
        ("localhost", "localhost"),
    ],
)
def test_sni_is_the_name_and_never_an_address(host, expected):
    assert server_name(host) == expected


BACKEND_POLICIES = (BACKEND_POLICY, BACKEND_TLS13_POLICY, BACKEND_FIPS_POLICY)


@pytest.mark.parametrize("policy", BACKEND_POLICIES)
def test_the_context_verifies_nothing_and_offers_http_1_1(policy):
    context = client_context(policy)
    assert context.verify_mode is ssl.CERT_NONE
    assert not context.check_hostname
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert client_context(policy) is not context  # built per generation by the runtime


@given(st.lists(st.sampled_from(sorted(SSL_POLICIES)), max_size=6))
def test_the_backend_policy_follows_the_https_listeners_policies(listener_policies):
    """ALB user guide: a FIPS policy on an HTTPS listener -> TLS13-1-0-FIPS-2023-04; a TLS
    1.3 policy -> TLS13-1-0-2021-06; otherwise (none, or no HTTPS listener) 2016-08."""
    chosen = backend_policy(listener_policies)
    if any("-FIPS-" in name for name in listener_policies):
        assert chosen == BACKEND_FIPS_POLICY
    elif any(name.startswith("ELBSecurityPolicy-TLS13-") for name in listener_policies):
        assert chosen == BACKEND_TLS13_POLICY
    else:
        assert chosen == BACKEND_POLICY
    # Every back-end policy reaches what 2016-08 reaches: TLS 1.0 up, the same ciphers.
    settings = SSL_POLICIES[chosen]
    assert settings.minimum_version == "TLSv1"
    assert settings.ciphers == SSL_POLICIES[BACKEND_POLICY].ciphers


@pytest.mark.parametrize(
    ("policy", "maximum", "suites"),
    [
        (BACKEND_POLICY, ssl.TLSVersion.TLSv1_2, ()),
        (BACKEND_TLS13_POLICY, ssl.TLSVersion.TLSv1_3, TLS13_SUITES),
        (BACKEND_FIPS_POLICY, ssl.TLSVersion.TLSv1_3, TLS13_FIPS_SUITES),
    ],
)
def test_each_context_follows_its_backend_policy(policy, maximum, suites):
    context = client_context(policy)
    assert context.policy == policy
    assert context.minimum_version is ssl.TLSVersion.TLSv1
    assert context.maximum_version is maximum
    assert context.tls13_suites == frozenset(suites)
    offered = {cipher["name"] for cipher in context.get_ciphers()}
    listed = set(SSL_POLICIES[BACKEND_POLICY].ciphers.split(":")) - {"@SECLEVEL=0"}
    assert listed <= offered


class Server:
    """One TLS server connection at a time, driven by the test through ``accepted``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.names: list[str | None] = []
        context.sni_callback = lambda _obj, name, _ctx: self.names.append(name)
        self.port = 0
        self.send, self.accepted = trio.open_memory_channel[trio.SSLStream[trio.SocketStream]](1)

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, self.context, server_side=True)
        await tls.do_handshake()
        await self.send.send(tls)
        await trio.sleep_forever()  # the test owns the stream now


async def connect(port: int, hostname: str | None) -> TlsSocket:
    tcp = trio.socket.socket()
    await tcp.connect(("127.0.0.1", port))
    tls = TlsSocket(tcp, client_context(BACKEND_TLS13_POLICY), hostname)
    with trio.fail_after(5):
        await tls.handshake()
    return tls


@pytest.fixture
async def server(nursery):
    found = Server(server_context(trustme.CA()))  # a CA nobody on the client side trusts
    await nursery.start(found.serve)
    return found


async def test_an_untrusted_certificate_is_accepted_with_sni_and_alpn(server):
    named = await connect(server.port, "target.example")
    bare = await connect(server.port, None)
    assert named.selected_alpn_protocol() == "http/1.1"
    assert server.names == ["target.example", None]
    named.close()
    bare.close()


async def test_a_plain_http_server_fails_the_handshake(nursery):
    async def http(stream: trio.SocketStream) -> None:
        await stream.receive_some(1000)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, http, listeners)
    tcp = trio.socket.socket()
    await tcp.connect(("127.0.0.1", port))
    with pytest.raises(ssl.SSLError), trio.fail_after(5):
        await target_tls.wrap(tcp, client_context(BACKEND_POLICY), "127.0.0.1")
    tcp.close()


OPENSSL_SECONDS = 10


@contextlib.asynccontextmanager
async def openssl_target(
    tmp_path: Path, *options: str, accepts: int | None = 1
) -> AsyncIterator[int]:
    """``openssl s_server -www`` on 127.0.0.1 with an RSA certificate and ``options``, for
    ``accepts`` connections (None: any number); its port. Skips when this OpenSSL refuses the
    options (a build without TLS 1.0, say)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    leaf = trustme.CA().issue_cert("target.example", key_type=trustme.KeyType.RSA)
    cert_file, key_file = tmp_path / "target.pem", tmp_path / "target.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    command = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-www"]
    command += [] if accepts is None else ["-naccept", str(accepts)]
    command += ["-cert", str(cert_file), "-key", str(key_file), *options]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    try:
        output = b""
        with trio.fail_after(OPENSSL_SECONDS):
            while b"ACCEPT " not in output or not output.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    pytest.skip(f"this openssl refuses {options}: {output.decode()[-300:]}")
                output += chunk
        yield int(output.split(b"ACCEPT ", 1)[1].split(b"\n", 1)[0].rsplit(b":", 1)[1])
    finally:
        process.kill()
        with trio.move_on_after(OPENSSL_SECONDS):
            await process.wait()
        await process.stdout.aclose()


@pytest.mark.parametrize("policy", BACKEND_POLICIES)
@pytest.mark.parametrize(
    ("options", "version", "cipher"),
    [
        (("-tls1", "-cipher", "ALL:@SECLEVEL=0"), "TLSv1", None),
        (("-tls1_1", "-cipher", "ALL:@SECLEVEL=0"), "TLSv1.1", None),
        (("-tls1_2", "-cipher", "AES128-GCM-SHA256"), "TLSv1.2", "AES128-GCM-SHA256"),
        (("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA"), "TLSv1.2", "ECDHE-RSA-AES128-SHA"),
        ((), None, None),  # the newest the policy has
        (("-tls1_3",), "TLSv1.3", None),
        (("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"), "TLSv1.3", "CHACHA"),
    ],
)
async def test_targets_are_reached_as_the_backend_policy_allows(
    tmp_path, policy, options, version, cipher
):
    # ALB talks to targets with its back-end policy: old protocols, plain RSA key exchange and
    # CBC-SHA1 suites included, whatever Python's defaults say; TLS 1.3 only when a listener
    # has a TLS 1.3 policy, and then without ChaCha20 when one has a FIPS policy.
    if version in ("TLSv1", "TLSv1.1") and not getattr(ssl, f"HAS_{version.replace('.', '_')}"):
        pytest.skip(f"this Python's OpenSSL has no {version}")
    newest = "TLSv1.2" if policy == BACKEND_POLICY else "TLSv1.3"
    version = version or newest
    not_in_policy = cipher == "CHACHA" and policy == BACKEND_FIPS_POLICY  # after the handshake
    refused = (version == "TLSv1.3" and policy == BACKEND_POLICY) or not_in_policy
    async with openssl_target(tmp_path, *options) as port:
        with trio.socket.socket() as tcp:
            await tcp.connect(("127.0.0.1", port))
            with trio.fail_after(OPENSSL_SECONDS):
                if refused:
                    with pytest.raises(ssl.SSLError) as failed:
                        await target_tls.wrap(tcp, client_context(policy), "target.example")
                    assert isinstance(failed.value, SuiteNotInPolicy) is not_in_policy
                    return
                stream = await target_tls.wrap(tcp, client_context(policy), "target.example")
                tls = stream.socket
                assert isinstance(tls, TlsSocket)
                assert tls.version() == version
                if cipher is not None:
                    assert cipher in tls.cipher()[0]
                await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
                answer = await stream.receive_some(4096)
            assert answer.startswith(b"HTTP/1.0 200 ")
            tls.close()
