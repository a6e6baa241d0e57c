"""wharf-balancer's HTTP data path next to HAProxy, in one run, on loopback.

It needs ``haproxy``, ``nginx``, ``wrk`` and ``taskset`` (and ``valgrind`` for
``--instructions``); when one is missing and this runs as root on a Debian-like system it
installs them (``apt-get update``, then ``apt-get install -y haproxy nginx wrk``), otherwise
(or with ``--no-install``) it exits 2 naming the packages.

Layout (a 2-core machine): the proxy under test on core 0; nginx (one worker, serving a
small response and a 64 KiB response) and the load generator on core 1. HAProxy gets one
thread and wharf-balancer one worker, with equivalent configurations: keep-alive to the
backends, X-Forwarded-For/-Proto/-Port added, no health checks, no logs.

Scenarios, each run against both proxies (and directly against nginx for reference):

- ``keepalive``: ``wrk -t1 -c64``, small response, keep-alive.
- ``newconn``: the same with ``Connection: close`` (a new connection per request).
- ``64k``: ``wrk -t1 -c64``, 64 KiB response, keep-alive.
- ``https-keepalive``: ``keepalive`` over TLS, both proxies terminating it with the same
  self-signed ECDSA P-256 certificate (made here with ``cryptography``).
- ``https-handshake``: ``newconn`` over TLS: a full handshake per request, once with the
  ECDSA P-256 certificate and once with an RSA-2048 one. wrk keeps its client session
  across reconnects and offers it, so resumption is off on both proxies: HAProxy with
  ``no-tls-tickets`` and ``tune.ssl.cachesize 0``, wharf (through a launcher that changes
  only this) with ``num_tickets = 0`` and ``OP_NO_TICKET`` on its contexts. Before the runs
  a Python client checks each TLS port: protocol, cipher, and that a second connection
  offering the first one's session is not resumed.
  Both proxies use wharf's default policy (ELBSecurityPolicy-TLS13-1-2-2021-06): HAProxy's
  ``ssl-default-bind-ciphers`` is the policy's OpenSSL cipher list, its ciphersuites are the
  TLS 1.3 suites of wharf's context, TLS 1.2 to 1.3, server cipher order, ALPN http/1.1.
- ``latency``: a fixed request rate (default 5,000/s) from wrk: 50 connections, each paced
  by wrk's Lua ``delay()`` hook to ``50 / rate`` seconds between requests (a closed-loop
  pacing, not wrk2's open-loop schedule: a slow response delays that connection's next
  request). wrk's ``--latency`` distribution gives p50/p99.
- ``idle``: 10,000 keep-alive connections, each after one request, held open; RSS of the
  proxy before and after, per connection.
- ``workers``: keep-alive small responses with wharf ``workers = 1`` and ``workers = 2``
  (and HAProxy ``nbthread 1`` and ``2`` for reference), everything unpinned: proxies,
  nginx and wrk share both cores. The CPU per request counts the whole process tree
  (supervisor and workers).

Every throughput run also reports the proxy's CPU time per request (from ``/proc``), the
steadier comparison on a shared machine, and the CPU that other processes (not this
benchmark's) used meanwhile, in cores. ``--instructions N`` adds a deterministic one: each
proxy under valgrind's callgrind, user-space instructions per request over N requests, for
plain keep-alive (small and 64 KiB responses), a new plain connection per request, TLS
keep-alive and a TLS handshake per request (ECDSA and RSA-2048).

Usage: ``python bench/balancer_http.py [--seconds 10] [--only keepalive,64k] [--rate 5000]
[--instructions 1000] [--profile wharf.svg] [--no-install]``.
Bounded: every run has a duration, every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # bench/ is a directory of scripts, not a package

import core_probe  # noqa: E402

from balancer.config import DEFAULT_SSL_POLICY, SSL_POLICIES  # noqa: E402
from balancer.tls import policy_context  # noqa: E402
from monitoring.certificates import load_certificate_files  # noqa: E402

PROXY_CORE = "0"
LOAD_CORE = "1"
BOTH_CORES = "0,1"
IDLE_CONNECTIONS = 10_000
LATENCY_CONNECTIONS = 50
SMALL_BODY = b"hello from nginx\n"
BIG_BODY_BYTES = 64 * 1024
SERVER_NAME = "bench.wharf.test"
KEY_KINDS = ("ecdsa", "rsa")  # ECDSA P-256 and RSA-2048
# Debian packages providing each tool.
PACKAGES = {
    "haproxy": "haproxy",
    "nginx": "nginx",
    "wrk": "wrk",
    "taskset": "util-linux",
    "valgrind": "valgrind",
    "callgrind_control": "valgrind",
    "callgrind_annotate": "valgrind",
}
# wharf as the benchmark runs it: the daemon unchanged except that its TLS contexts issue no
# session tickets (TLS 1.3: num_tickets = 0; TLS 1.2: OP_NO_TICKET), as HAProxy is
# configured here, so that wrk's reconnections (which offer the previous session) make a
# full handshake on both proxies. Plain HTTP listeners are unaffected.
WHARF_LAUNCHER = """
import ssl, sys
import balancer.tls
_policy_context = balancer.tls.policy_context
def _no_resumption(policy, certificate):
    context = _policy_context(policy, certificate)
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    return context
balancer.tls.policy_context = _no_resumption
from balancer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need(*tools: str, install: bool = True) -> None:
    """Exit 2 unless every tool is on PATH; as root with apt-get, install what is missing."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    packages = sorted({PACKAGES.get(tool, tool) for tool in missing})
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(packages)} (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, timeout=900)
        subprocess.run(["apt-get", "install", "-y", *packages], check=True, env=env, timeout=1800)
        missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y {' '.join(packages)})")
        sys.exit(2)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def wait_port(port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


@contextlib.contextmanager
def process(
    args: list[str], *, core: str, log: Path, stop: int = signal.SIGTERM
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` on ``core`` (a taskset list) until the block ends, then send it ``stop``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(["taskset", "-c", core, *args], stdout=out, stderr=out)
    try:
        yield proc
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nginx_conf(work: Path, small_port: int, big_port: int) -> Path:
    (work / "www").mkdir()
    (work / "www" / "small").write_bytes(SMALL_BODY)
    (work / "www" / "big").write_bytes(os.urandom(BIG_BODY_BYTES))
    conf = work / "nginx.conf"
    conf.write_text(
        textwrap.dedent(f"""
        worker_processes 1;
        user root;
        pid {work}/nginx.pid;
        error_log {work}/nginx-error.log warn;
        worker_rlimit_nofile 65536;
        events {{ worker_connections 40000; }}
        http {{
            access_log off;
            keepalive_requests 1000000;
            keepalive_timeout 300s;
            client_body_temp_path {work}/tmp;
            proxy_temp_path {work}/tmp;
            fastcgi_temp_path {work}/tmp;
            uwsgi_temp_path {work}/tmp;
            scgi_temp_path {work}/tmp;
            default_type application/octet-stream;
            server {{ listen 127.0.0.1:{small_port}; root {work}/www;
                      location / {{ try_files /small =404; }} }}
            server {{ listen 127.0.0.1:{big_port}; root {work}/www;
                      location / {{ try_files /big =404; }} }}
        }}
        """)
    )
    (work / "tmp").mkdir()
    return conf


def make_certificate(work: Path, kind: str) -> tuple[Path, Path]:
    """A self-signed certificate for :data:`SERVER_NAME` and its key (``kind``: ecdsa = P-256,
    rsa = RSA-2048), as PEM files; HAProxy's ``crt`` file (both in one) is ``kind.pem``."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_file, key_file = work / f"{kind}.crt", work / f"{kind}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(key_pem)
    (work / f"{kind}.pem").write_bytes(cert_pem + key_pem)
    return cert_file, key_file


def haproxy_tls_globals(work: Path) -> str:
    """HAProxy's bind defaults matching wharf's default policy (and no session resumption)."""
    policy = SSL_POLICIES[DEFAULT_SSL_POLICY]
    # The TLS 1.3 suites (and their order) of wharf's own context for this policy.
    files = load_certificate_files(str(work / "ecdsa.crt"), str(work / "ecdsa.key"))
    suites = [
        c["name"] for c in policy_context(policy, files).get_ciphers() if c["protocol"] == "TLSv1.3"
    ]
    versions = {
        "TLSv1": "TLSv1.0",
        "TLSv1_1": "TLSv1.1",
        "TLSv1_2": "TLSv1.2",
        "TLSv1_3": "TLSv1.3",
    }
    low, high = versions[policy.minimum_version], versions[policy.maximum_version]
    return textwrap.indent(
        textwrap.dedent(f"""
        ssl-default-bind-ciphers {policy.ciphers}
        ssl-default-bind-ciphersuites {":".join(suites)}
        ssl-default-bind-options ssl-min-ver {low} ssl-max-ver {high} no-tls-tickets
        tune.ssl.cachesize 0
        """),
        "    ",
    )


def haproxy_conf(work: Path, ports: dict[str, int]) -> Path:
    conf = work / "haproxy.cfg"
    tls_frontends = "".join(
        textwrap.dedent(f"""
        frontend tls_{kind}
            bind 127.0.0.1:{ports["haproxy_tls_" + kind]} ssl crt {work / kind}.pem alpn http/1.1
            http-request set-header X-Forwarded-Proto https
            http-request set-header X-Forwarded-Port %[dst_port]
            default_backend small
        """)
        for kind in KEY_KINDS
    )
    conf.write_text(
        textwrap.dedent(f"""
        global
            nbthread 1
            # This machine's hard descriptor limit is 20,000; 10,000 idle clients plus a
            # backend connection fit, though HAProxy's maxconn * 2 estimate would not.
            no strict-limits
            ulimit-n {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}
            maxconn {IDLE_CONNECTIONS + 100}
        """)
        + haproxy_tls_globals(work)
        + textwrap.dedent(f"""
        defaults
            mode http
            timeout connect 10s
            timeout client 60s
            timeout server 60s
            timeout http-keep-alive 60s
            option http-keep-alive
            option forwardfor
            http-reuse always
        frontend small
            bind 127.0.0.1:{ports["haproxy_small"]}
            http-request set-header X-Forwarded-Proto http
            http-request set-header X-Forwarded-Port %[dst_port]
            default_backend small
        frontend big
            bind 127.0.0.1:{ports["haproxy_big"]}
            http-request set-header X-Forwarded-Proto http
            http-request set-header X-Forwarded-Port %[dst_port]
            default_backend big
        backend small
            server s1 127.0.0.1:{ports["nginx_small"]}
        backend big
            server b1 127.0.0.1:{ports["nginx_big"]}
        """)
        + tls_frontends
    )
    return conf


def wharf_conf(work: Path, ports: dict[str, int]) -> Path:
    conf = work / "balancer.toml"
    listeners = []
    groups = []
    for name, listen, backend in (
        ("small", ports["wharf_small"], ports["nginx_small"]),
        ("big", ports["wharf_big"], ports["nginx_big"]),
    ):
        listeners.append(
            textwrap.dedent(f"""
            [[listeners]]
            protocol = "http"
            name = "{name}"
            host = "127.0.0.1"
            port = {listen}
            default_action = {{ type = "forward", target_group = "{name}" }}
            limits = {{ connections = 20000 }}
            """)
        )
        groups.append(
            textwrap.dedent(f"""
            [[target_groups]]
            name = "{name}"
            targets = [{{ host = "127.0.0.1", port = {backend} }}]
            health_check = {{ enabled = false }}
            """)
        )
    for kind in KEY_KINDS:
        pair = f'cert_file = "{work / (kind + ".crt")}", key_file = "{work / (kind + ".key")}"'
        listeners.append(
            textwrap.dedent(f"""
            [[listeners]]
            protocol = "https"
            name = "tls-{kind}"
            host = "127.0.0.1"
            port = {ports["wharf_tls_" + kind]}
            certificates = [{{ {pair} }}]
            ssl_policy = "{DEFAULT_SSL_POLICY}"
            default_action = {{ type = "forward", target_group = "small" }}
            limits = {{ connections = 20000 }}
            """)
        )
    conf.write_text(
        textwrap.dedent(f"""
        [admin]
        host = "127.0.0.1"
        port = {ports["wharf_admin"]}
        [logging]
        level = "warning"
        """)
        + "".join(listeners)
        + "".join(groups)
    )
    return conf


def haproxy_workers_conf(work: Path, port: int, backend: int, threads: int) -> Path:
    """HAProxy with ``threads`` threads and the ``keepalive`` frontend only."""
    conf = work / f"haproxy-{threads}.cfg"
    conf.write_text(
        textwrap.dedent(f"""
        global
            nbthread {threads}
        defaults
            mode http
            timeout connect 10s
            timeout client 60s
            timeout server 60s
            timeout http-keep-alive 60s
            option http-keep-alive
            option forwardfor
            http-reuse always
        frontend small
            bind 127.0.0.1:{port}
            http-request set-header X-Forwarded-Proto http
            http-request set-header X-Forwarded-Port %[dst_port]
            default_backend small
        backend small
            server s1 127.0.0.1:{backend}
        """)
    )
    return conf


def wharf_workers_conf(work: Path, port: int, admin: int, backend: int, workers: int) -> Path:
    """wharf-balancer with ``workers`` workers and the ``keepalive`` listener only."""
    conf = work / f"balancer-{workers}.toml"
    conf.write_text(
        textwrap.dedent(f"""
        workers = {workers}
        [admin]
        host = "127.0.0.1"
        port = {admin}
        [logging]
        level = "warning"
        [[listeners]]
        protocol = "http"
        name = "small"
        host = "127.0.0.1"
        port = {port}
        default_action = {{ type = "forward", target_group = "small" }}
        [[target_groups]]
        name = "small"
        targets = [{{ host = "127.0.0.1", port = {backend} }}]
        health_check = {{ enabled = false }}
        """)
    )
    return conf


def wrk(
    url: str,
    seconds: int,
    *,
    close: bool = False,
    script: Path | None = None,
    connections: int = 64,
    core: str = LOAD_CORE,
) -> dict[str, float]:
    args = [
        "taskset",
        "-c",
        core,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if close:
        args += ["-H", "Connection: close"]
    if script is not None:
        args += ["-s", str(script)]
    output = subprocess.run(
        [*args, url], capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    return parse_wrk(output)


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = _stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """``root`` and every live process under it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, ()))
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and each of its live descendants."""
    return {child: cpu_seconds(child) for child in descendants(pid)}


def busy_seconds() -> float:
    """CPU seconds every process of the machine spent (user, nice, system), all cores."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(v) for v in fields[:3]) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    """CPU of this benchmark: this process, its live descendants, its reaped children."""
    live = sum(tree_cpu(os.getpid()).values())
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return live + usage.ru_utime + usage.ru_stime


def measured(pid: int | None, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run a wrk scenario; add the proxy's CPU microseconds per request when ``pid`` (its
    whole process tree: a supervisor's workers count), and ``others``: the cores that
    processes outside this benchmark kept busy meanwhile (the machine's load)."""
    probe = core_probe.speed_ms(int(PROXY_CORE)) if pid else None
    before = tree_cpu(pid) if pid else {}
    busy, own, start = busy_seconds(), _own_cpu(), time.monotonic()
    result = run()
    elapsed = time.monotonic() - start
    ours = _own_cpu() - own
    result["others"] = max(0.0, (busy_seconds() - busy) - ours) / elapsed
    if pid and result.get("requests"):
        after = tree_cpu(pid)
        spent = sum(after.get(p, before[p]) - before[p] for p in before)
        spent += sum(cpu for p, cpu in after.items() if p not in before)
        result["cpu_us"] = spent * 1e6 / result["requests"]
        result["proxy_cores"] = spent / elapsed
        result["harness_cores"] = (ours - spent) / elapsed  # wrk, nginx, this script
    if probe is not None:
        result["probe_ms"] = probe  # the proxy core's speed just before (bench/core_probe.py)
    return result


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> dict[str, float]:
    found: dict[str, float] = {}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    found["rps"] = float(rate.group(1)) if rate else 0.0
    total = re.search(r"(\d+) requests in", output)
    found["requests"] = float(total.group(1)) if total else 0.0
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if match:
            found[f"p{pct}"] = _ms(match.group(1), match.group(2))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    found["non2xx"] = float(errors.group(1)) if errors else 0.0
    sock_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    found["socket_errors"] = float(sum(int(g) for g in sock_errors.groups())) if sock_errors else 0
    return found


def pacing_script(work: Path, rate: int) -> Path:
    script = work / "pace.lua"
    delay_ms = LATENCY_CONNECTIONS * 1000.0 / rate
    script.write_text(f"function delay()\n  return {delay_ms:.3f}\nend\n")
    return script


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def proxy_pid(proc: subprocess.Popen[bytes]) -> int:
    # taskset execs the proxy, so the child pid is the proxy's; HAProxy in master-worker
    # mode would fork, but it is started without -W here.
    return proc.pid


def idle_memory(port: int, pid: int, count: int) -> float:
    """KiB of proxy RSS per idle keep-alive connection (after one request each)."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    time.sleep(0.5)
    before = rss_kib(pid)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or not data.endswith(SMALL_BODY):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(
                        f"the proxy on port {port} closed idle-test connection {len(sockets) + 1}"
                        f" of {count} (answered {data[:80]!r})"
                    )
                data += chunk
            sockets.append(sock)
        time.sleep(1.0)
        after = rss_kib(pid)
    finally:
        for sock in sockets:
            sock.close()
    return (after - before) / count


def drive(port: int, count: int, connections: int = 8) -> None:
    """``count`` keep-alive GETs over ``connections`` connections, one at a time."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    try:
        for i in range(count):
            exchange(socks[i % connections])
    finally:
        for sock in socks:
            sock.close()


def drive_newconn(port: int, count: int) -> None:
    """``count`` GETs with ``Connection: close``, each on a new connection."""
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            exchange(sock, close=True)


def exchange(sock: socket.socket, close: bool = False) -> None:
    """One GET and its whole response (plain or TLS socket)."""
    extra = b"Connection: close\r\n" if close else b""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n" + extra + b"\r\n")
    data = b""
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError(f"the proxy closed before the whole response: {data[:80]!r}")
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            continue
        length = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
        if length and len(body) >= int(length.group(1)):
            return


def drive_tls(port: int, count: int, *, handshake_each: bool, connections: int = 8) -> None:
    """``count`` GETs over TLS: keep-alive over ``connections`` connections, or a new
    connection and full handshake for each (no session offered; the proxies issue none)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port))
        return context.wrap_socket(raw, server_hostname="bench.wharf.test")

    if handshake_each:
        for _ in range(count):
            with connect() as sock:
                exchange(sock, close=True)
        return
    socks = [connect() for _ in range(connections)]
    try:
        for i in range(count):
            exchange(socks[i % connections])
    finally:
        for sock in socks:
            sock.close()


@dataclass(frozen=True)
class Driver:
    """A kind of request to count instructions for: the port and how to send ``n`` of them."""

    name: str
    port: int
    send: Callable[[int, int], None]

    def run(self, count: int) -> None:
        self.send(self.port, count)


def drivers_for(label: str, ports: dict[str, int]) -> list[Driver]:
    """What --instructions counts, per proxy: plain keep-alive (small and 64 KiB responses),
    a new plain connection per request, TLS keep-alive (ECDSA) and a TLS handshake per
    request (ECDSA and RSA-2048)."""
    tls = functools.partial(drive_tls, handshake_each=False)
    handshakes = functools.partial(drive_tls, handshake_each=True)
    return [
        Driver("small", ports[f"{label}_small"], drive),
        Driver("big", ports[f"{label}_big"], drive),
        Driver("newconn", ports[f"{label}_small"], drive_newconn),
        Driver("https-keepalive", ports[f"{label}_tls_ecdsa"], tls),
        Driver("https-handshake ecdsa", ports[f"{label}_tls_ecdsa"], handshakes),
        Driver("https-handshake rsa", ports[f"{label}_tls_rsa"], handshakes),
    ]


def instructions(
    label: str, command: list[str], drivers: list[Driver], work: Path, count: int
) -> list[float]:
    """User-space instructions per request under callgrind (deterministic, unlike time on a
    shared machine), for each driver: warm up, zero the counters, drive ``count`` requests,
    dump. Kernel work (the syscalls) is not counted; OpenSSL's is (it runs in the proxy)."""
    out = work / f"callgrind.{label}"
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            PROXY_CORE,
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            *command,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    found = []
    try:
        for driver in drivers:
            wait_port(driver.port, limit=120)
        for i, driver in enumerate(drivers):
            driver.run(min(300, count))
            subprocess.run(
                ["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True
            )
            driver.run(count)
            subprocess.run(
                ["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True
            )
            time.sleep(1)
            dump = max(work.glob(f"callgrind.{label}.*"), key=lambda p: p.stat().st_mtime)
            totals = subprocess.run(
                ["callgrind_annotate", str(dump)], capture_output=True, text=True
            ).stdout
            match = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", totals) or re.search(
                r"([\d,]+)\s+PROGRAM TOTALS", totals
            )
            found.append(int(match.group(1).replace(",", "")) / count if match else 0.0)
            dump.rename(work / f"callgrind.{label}.done{i}")
    finally:
        proc.terminate()
        proc.wait(30)
    return found


def tls_check(port: int) -> dict[str, str | bool]:
    """Protocol, cipher and ALPN a TLS port negotiates with a default client, and whether a
    second connection offering the first one's session (and tickets, read with the first
    response) was resumed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    request = f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
    session: ssl.SSLSession | None = None
    found: dict[str, str | bool] = {}
    for attempt in range(2):
        with (
            socket.create_connection(("127.0.0.1", port), 5) as raw,
            context.wrap_socket(raw, server_hostname=SERVER_NAME, session=session) as tls,
        ):
            tls.sendall(request)
            with contextlib.suppress(ssl.SSLError, OSError):
                while tls.recv(65536):  # to the end: the tickets come with the response
                    pass
            session = tls.session
            if attempt == 0:
                cipher = tls.cipher()
                found["protocol"] = tls.version() or "-"
                found["cipher"] = cipher[0] if cipher else "-"
                found["alpn"] = tls.selected_alpn_protocol() or "-"
            else:
                found["resumed"] = bool(tls.session_reused)
    return found


def two_free_ports() -> int:
    """A free port whose successor is free too (an admin port for two workers)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            # As a listener binds: connections in TIME_WAIT on the port (thousands after the
            # new-connection runs) do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


WORKER_SETUPS = (("haproxy", 1), ("haproxy", 2), ("wharf", 1), ("wharf", 2))


def scale_workers(
    work: Path, nginx_pid: int, backend: int, seconds: int, rounds: int
) -> dict[tuple[str, str], dict[str, float]]:
    """``keepalive`` with HAProxy nbthread 1 and 2 and wharf workers 1 and 2, all unpinned,
    ``rounds`` times in turn (the machine's load moves between runs)."""
    for pid in descendants(nginx_pid):  # nginx too may use either core from now on
        subprocess.run(["taskset", "-a", "-p", "-c", BOTH_CORES, str(pid)], capture_output=True)
    found: dict[tuple[str, str], dict[str, float]] = {}
    for attempt, (label, count) in enumerate(WORKER_SETUPS * rounds):
        admin = two_free_ports()
        port = free_port()
        while port in (admin, admin + 1):
            port = free_port()
        admins: list[int] = []
        if label == "haproxy":
            command = [
                "haproxy",
                "-db",
                "-f",
                str(haproxy_workers_conf(work, port, backend, count)),
            ]
        else:
            admins = [admin + i for i in range(count)]
            conf = wharf_workers_conf(work, port, admin, backend, count)
            command = [sys.executable, "-m", "balancer.cli", "serve", "--config", str(conf)]
        with process(command, core=BOTH_CORES, log=work / f"{label}-{count}.out") as proc:
            for waited in (port, *admins):
                wait_port(waited, limit=30)
            for retry in range(3):
                try:
                    drive(port, 500)  # warm-up
                    break
                except OSError as exc:
                    log = (work / f"{label}-{count}.out").read_text()[-2000:]
                    print(f"warm-up of {label} x{count}: {exc!r}; its log:\n{log}", flush=True)
                    if retry == 2:
                        raise
                    time.sleep(1)
            url = f"http://127.0.0.1:{port}/"
            found[(f"{label}-{count}", f"workers{attempt // len(WORKER_SETUPS)}")] = measured(
                proc.pid, functools.partial(wrk, url, seconds, core=BOTH_CORES)
            )
    return found


def count_instructions(
    work: Path, ports: dict[str, int], count: int, stack: contextlib.ExitStack
) -> dict[tuple[str, str], dict[str, float]]:
    """Both proxies under callgrind, one after the other, nginx behind them again."""
    need("valgrind", "callgrind_control", "callgrind_annotate")
    nginx = ["nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"]
    stack.enter_context(process(nginx, core=LOAD_CORE, log=work / "nginx2.out"))
    # As in the timed runs: the launcher that turns session tickets off, as on HAProxy.
    wharf = [sys.executable, "-c", WHARF_LAUNCHER, "serve", "--config", str(work / "balancer.toml")]
    found: dict[tuple[str, str], dict[str, float]] = {}
    for label, command in (
        ("haproxy", ["haproxy", "-db", "-f", str(work / "haproxy.cfg")]),
        ("wharf", wharf),
    ):
        drivers = drivers_for(label, ports)
        counts = instructions(label, command, drivers, work, count)
        found[(label, "instructions")] = {d.name: n for d, n in zip(drivers, counts, strict=True)}
    return found


# Rows of the throughput table: (row, --only name, port prefix suffix, close per request).
ROWS = (
    ("keepalive", "keepalive", "small", False),
    ("newconn", "newconn", "small", True),
    ("64k", "64k", "big", False),
    ("https-keepalive", "https-keepalive", "tls_ecdsa", False),
    ("https-handshake ecdsa", "https-handshake", "tls_ecdsa", True),
    ("https-handshake rsa", "https-handshake", "tls_rsa", True),
)
SCENARIOS = "keepalive,newconn,64k,https-keepalive,https-handshake,latency,idle,workers"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--only", default=SCENARIOS, help=f"comma-separated, of {SCENARIOS}")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-to-nginx runs")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each workers setup")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument(
        "--profile",
        metavar="SVG",
        help="py-spy record wharf during the runs (.txt: collapsed stacks, else SVG)",
    )
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="also count user-space instructions per request under callgrind (N requests)",
    )
    args = parser.parse_args()
    tools = ["haproxy", "nginx", "wrk", "taskset"]
    if args.instructions:
        tools += ["valgrind", "callgrind_control", "callgrind_annotate"]
    need(*tools, install=not args.no_install)
    raise_fd_limit()
    only = set(args.only.split(","))
    names = (
        "nginx_small",
        "nginx_big",
        "haproxy_small",
        "haproxy_big",
        "haproxy_tls_ecdsa",
        "haproxy_tls_rsa",
        "wharf_small",
        "wharf_big",
        "wharf_tls_ecdsa",
        "wharf_tls_rsa",
        "wharf_admin",
    )
    ports = {name: free_port() for name in names}
    results: dict[tuple[str, str], dict[str, float]] = {}
    checks: dict[str, dict[str, str | bool]] = {}
    print(f"load average before the runs: {Path('/proc/loadavg').read_text().split()[:3]}")
    try:
        with tempfile.TemporaryDirectory(prefix="wharf-bench-") as tmp:
            work = Path(tmp)
            for kind in KEY_KINDS:
                make_certificate(work, kind)
            with contextlib.ExitStack() as stack:
                nginx = stack.enter_context(
                    process(
                        [
                            "nginx",
                            "-c",
                            str(nginx_conf(work, ports["nginx_small"], ports["nginx_big"])),
                            "-g",
                            "daemon off;",
                        ],
                        core=LOAD_CORE,
                        log=work / "nginx.out",
                    )
                )
                haproxy = stack.enter_context(
                    process(
                        ["haproxy", "-db", "-f", str(haproxy_conf(work, ports))],
                        core=PROXY_CORE,
                        log=work / "haproxy.out",
                    )
                )
                wharf_config = str(wharf_conf(work, ports))
                wharf = stack.enter_context(
                    process(
                        [sys.executable, "-c", WHARF_LAUNCHER, "serve", "--config", wharf_config],
                        core=PROXY_CORE,
                        log=work / "wharf.out",
                    )
                )
                for name in names:
                    try:
                        wait_port(ports[name], limit=30)
                    except RuntimeError:
                        for log in sorted(work.glob("*.out")):
                            print(f"--- {log.name}\n{log.read_text()[-2000:]}")
                        raise
                if args.profile:
                    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
                    stack.enter_context(
                        process(
                            [
                                spy,
                                "record",
                                "-p",
                                str(wharf.pid),
                                "-o",
                                args.profile,
                                "--nonblocking",
                                "-r",
                                "200",
                                # Collapsed stacks for a .txt path (to aggregate), else SVG.
                                "-f",
                                "raw" if args.profile.endswith(".txt") else "flamegraph",
                            ],
                            core=LOAD_CORE,
                            log=work / "py-spy.out",
                            # py-spy writes its profile on SIGINT only; SIGTERM loses it.
                            stop=signal.SIGINT,
                        )
                    )
                if only & {"https-keepalive", "https-handshake"}:
                    for label in ("haproxy", "wharf"):
                        for kind in KEY_KINDS:
                            checks[f"{label} {kind}"] = tls_check(ports[f"{label}_tls_{kind}"])
                targets: list[tuple[str, str, int | None]] = [
                    ("haproxy", "haproxy", haproxy.pid),
                    ("wharf", "wharf", wharf.pid),
                ]
                if not args.no_direct:
                    targets.insert(0, ("direct", "nginx", None))
                # Row by row, the peers back to back, so that a change in the machine's load (it
                # may be shared) hits both sides of a ratio alike.
                for row, scenario, suffix, close in ROWS:
                    if scenario not in only:
                        continue
                    for label, prefix, pid in targets:
                        if f"{prefix}_{suffix}" not in ports:
                            continue  # nginx serves no TLS
                        scheme = "https" if suffix.startswith("tls") else "http"
                        url = f"{scheme}://127.0.0.1:{ports[prefix + '_' + suffix]}/"
                        results[(label, row)] = measured(
                            pid, functools.partial(wrk, url, args.seconds, close=close)
                        )
                if "latency" in only:
                    for label, prefix, pid in targets:
                        url = f"http://127.0.0.1:{ports[prefix + '_small']}/"
                        results[(label, "latency")] = measured(
                            pid,
                            functools.partial(
                                wrk,
                                url,
                                args.seconds,
                                script=pacing_script(work, args.rate),
                                connections=LATENCY_CONNECTIONS,
                            ),
                        )
                if "idle" in only:
                    for label, proc, port in (
                        ("haproxy", haproxy, ports["haproxy_small"]),
                        ("wharf", wharf, ports["wharf_small"]),
                    ):
                        try:
                            per = idle_memory(port, proxy_pid(proc), IDLE_CONNECTIONS)
                        except RuntimeError:
                            log = work / f"{label}.out"
                            print(f"--- {label}\n{log.read_text()[-3000:]}", file=sys.stderr)
                            raise
                        results[(label, "idle")] = {"kib_per_conn": per}
                if "workers" in only:
                    results.update(
                        scale_workers(
                            work, nginx.pid, ports["nginx_small"], args.seconds, args.rounds
                        )
                    )
                if args.instructions:
                    stack.close()  # the timed runs are over: free the ports and the cores
                    results.update(count_instructions(work, ports, args.instructions, stack))
    finally:  # what was measured, even when a later scenario failed
        report(results, checks, args.rate)
    print(f"load average after the runs: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0


def _errors(res: dict[str, float]) -> int:
    return int(res.get("non2xx", 0) + res.get("socket_errors", 0))


def report(
    results: dict[tuple[str, str], dict[str, float]],
    checks: dict[str, dict[str, str | bool]],
    rate: int,
) -> None:
    for where, found in checks.items():
        print(f"tls {where}: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    print(
        f"{'scenario':<22} {'direct':>10} {'haproxy':>10} {'wharf':>10} {'wharf/haproxy':>14}"
        "  errors (haproxy/wharf), other processes' load (cores)"
    )
    for row, _, _, _ in ROWS:
        if ("wharf", row) not in results:
            continue
        res = {label: results.get((label, row), {}) for label in ("direct", "haproxy", "wharf")}
        rps = [res[label].get("rps", 0.0) for label in ("direct", "haproxy", "wharf")]
        ratio = rps[2] / rps[1] if rps[1] else 0.0
        others = "/".join(f"{res[label].get('others', 0):.2f}" for label in ("haproxy", "wharf"))
        print(
            f"{row + ' rps':<22} {rps[0]:>10,.0f} {rps[1]:>10,.0f} {rps[2]:>10,.0f} "
            f"{ratio:>13.2f}x  {_errors(res['haproxy'])}/{_errors(res['wharf'])}, load {others}"
        )
        cpu = [res[label].get("cpu_us", 0.0) for label in ("haproxy", "wharf")]
        if cpu[0] and cpu[1]:
            print(
                f"{'  cpu us/req':<22} {'':>10} {cpu[0]:>10.1f} {cpu[1]:>10.1f} "
                f"{cpu[0] / cpu[1]:>13.2f}x  (CPU-normalised capacity ratio)"
            )
        for pct in ("p50", "p99"):
            lat = [res[label].get(pct, 0.0) for label in ("direct", "haproxy", "wharf")]
            print(f"{'  ' + pct + ' ms':<22} {lat[0]:>10.2f} {lat[1]:>10.2f} {lat[2]:>10.2f}")
        probes = [res[label].get("probe_ms", 0.0) for label in ("haproxy", "wharf")]
        if probes[0] and probes[1]:
            print(
                f"{'  core probe ms':<22} {'':>10} {probes[0]:>10.1f} {probes[1]:>10.1f}"
                "  (the proxy core's speed before each run: lower is faster)"
            )
    if ("wharf", "latency") in results:
        print(f"latency at {rate}/s (wrk, {LATENCY_CONNECTIONS} paced connections):")
        for label in ("direct", "haproxy", "wharf"):
            paced = results.get((label, "latency"))
            if paced:
                print(
                    f"  {label:<8} achieved {paced['rps']:>8,.0f}/s"
                    f"  p50 {paced.get('p50', 0):.2f} ms  p99 {paced.get('p99', 0):.2f} ms"
                    f"  load {paced.get('others', 0):.2f}"
                )
        h99 = results.get(("haproxy", "latency"), {}).get("p99", 0.0)
        w99 = results[("wharf", "latency")].get("p99", 0.0)
        print(f"  p99 difference wharf - haproxy: {w99 - h99:+.2f} ms (target: within 2 ms)")
    if ("wharf-1", "workers0") in results:
        print("keepalive, everything unpinned on both cores (proxy's whole process tree):")
        rounds = sorted({key for name, key in results if name == "wharf-1"})
        for key in rounds:
            for label, count in WORKER_SETUPS:
                run = results[(f"{label}-{count}", key)]
                print(
                    f"  {key} {label} x{count}: {run.get('rps', 0):>8,.0f} req/s"
                    f"  {run.get('cpu_us', 0):>6.1f} cpu us/req  errors {_errors(run)}"
                    f"  cores: proxy {run.get('proxy_cores', 0):.2f}"
                    f" wrk+nginx {run.get('harness_cores', 0):.2f}"
                    f" others {run.get('others', 0):.2f}"
                )
            one, two = results[("wharf-1", key)], results[("wharf-2", key)]
            if one.get("rps"):
                print(f"  {key} wharf workers 2 / 1: {two.get('rps', 0) / one['rps']:.2f}x req/s")
    if ("wharf", "instructions") in results:
        h, w = results[("haproxy", "instructions")], results[("wharf", "instructions")]
        for kind in w:
            print(
                f"user-space instructions per request, {kind}: haproxy {h[kind]:,.0f}"
                f"  wharf {w[kind]:,.0f}  ratio {h[kind] / w[kind] if w[kind] else 0:.3f}x"
            )
    if ("wharf", "idle") in results:
        for label in ("haproxy", "wharf"):
            per = results[(label, "idle")]["kib_per_conn"]
            print(
                f"idle keep-alive memory, {label}: {per:.1f} KiB per connection "
                f"({IDLE_CONNECTIONS:,} connections)"
            )


if __name__ == "__main__":
    sys.exit(main())
