"""wharf-balancer's HTTP data path next to HAProxy, in one run, on loopback.

Installs nothing: it needs ``haproxy``, ``nginx``, ``wrk`` and ``taskset`` on PATH (Debian:
``apt-get install -y haproxy nginx wrk``) and exits 2 naming what is missing.

Layout (a 2-core machine): the proxy under test on core 0; nginx (one worker, serving a
small response and a 64 KiB response) and the load generator on core 1. HAProxy gets one
thread and wharf-balancer one worker, with equivalent configurations: keep-alive to the
backends, X-Forwarded-For/-Proto/-Port added, no health checks, no logs.

Scenarios, each run against both proxies (and directly against nginx for reference):

- ``keepalive``: ``wrk -t1 -c64``, small response, keep-alive.
- ``newconn``: the same with ``Connection: close`` (a new connection per request).
- ``64k``: ``wrk -t1 -c64``, 64 KiB response, keep-alive.
- ``latency``: a fixed request rate (default 5,000/s) from wrk: 50 connections, each paced
  by wrk's Lua ``delay()`` hook to ``50 / rate`` seconds between requests (a closed-loop
  pacing, not wrk2's open-loop schedule: a slow response delays that connection's next
  request). wrk's ``--latency`` distribution gives p50/p99.
- ``idle``: 10,000 keep-alive connections, each after one request, held open; RSS of the
  proxy before and after, per connection.

Every throughput run also reports the proxy's CPU time per request (from ``/proc``), the
steadier comparison on a shared machine. ``--instructions N`` adds a deterministic one: each
proxy under valgrind's callgrind, user-space instructions per request over N requests.

Usage: ``python bench/balancer_http.py [--seconds 10] [--only keepalive,64k] [--rate 5000]
[--instructions 1000] [--profile wharf.svg]``.
Bounded: every run has a duration, every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROXY_CORE = "0"
LOAD_CORE = "1"
IDLE_CONNECTIONS = 10_000
LATENCY_CONNECTIONS = 50
SMALL_BODY = b"hello from nginx\n"
BIG_BODY_BYTES = 64 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y haproxy nginx wrk)")
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
def process(args: list[str], *, core: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(["taskset", "-c", core, *args], stdout=out, stderr=out)
    try:
        yield proc
    finally:
        proc.terminate()
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


def haproxy_conf(work: Path, ports: dict[str, int]) -> Path:
    conf = work / "haproxy.cfg"
    conf.write_text(
        textwrap.dedent(f"""
        global
            nbthread 1
            # This machine's hard descriptor limit is 20,000; 10,000 idle clients plus a
            # backend connection fit, though HAProxy's maxconn * 2 estimate would not.
            no strict-limits
            ulimit-n {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}
            maxconn {IDLE_CONNECTIONS + 100}
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


def wrk(
    url: str,
    seconds: int,
    *,
    close: bool = False,
    script: Path | None = None,
    connections: int = 64,
) -> dict[str, float]:
    args = [
        "taskset",
        "-c",
        LOAD_CORE,
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int | None, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run a wrk scenario; add the proxy's CPU microseconds per request when ``pid``."""
    before = cpu_seconds(pid) if pid else 0.0
    result = run()
    if pid and result.get("requests"):
        result["cpu_us"] = (cpu_seconds(pid) - before) * 1e6 / result["requests"]
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
                    raise RuntimeError("proxy closed an idle-test connection")
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
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        for i in range(count):
            sock = socks[i % connections]
            sock.sendall(request)
            data = b""
            while True:
                data += sock.recv(1 << 20)
                head, sep, body = data.partition(b"\r\n\r\n")
                if not sep:
                    continue
                length = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
                if length and len(body) >= int(length.group(1)):
                    break
    finally:
        for sock in socks:
            sock.close()


def instructions(
    label: str, command: list[str], ports: list[int], work: Path, count: int
) -> list[float]:
    """User-space instructions per request under callgrind (deterministic, unlike time on a
    shared machine), for each port: warm up, zero the counters, drive ``count`` requests,
    dump. Kernel work (the syscalls) is not counted."""
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
        for port in ports:
            wait_port(port, limit=120)
        for i, port in enumerate(ports):
            drive(port, 300)
            subprocess.run(
                ["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True
            )
            drive(port, count)
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


def count_instructions(
    work: Path, ports: dict[str, int], count: int, stack: contextlib.ExitStack
) -> dict[tuple[str, str], dict[str, float]]:
    """Both proxies under callgrind, one after the other, nginx behind them again."""
    need("valgrind", "callgrind_control", "callgrind_annotate")
    nginx = ["nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"]
    stack.enter_context(process(nginx, core=LOAD_CORE, log=work / "nginx2.out"))
    wharf = [sys.executable, "-m", "balancer.cli", "serve", "--config", str(work / "balancer.toml")]
    found: dict[tuple[str, str], dict[str, float]] = {}
    for label, command in (
        ("haproxy", ["haproxy", "-db", "-f", str(work / "haproxy.cfg")]),
        ("wharf", wharf),
    ):
        pair = [ports[f"{label}_small"], ports[f"{label}_big"]]
        counts = instructions(label, command, pair, work, count)
        found[(label, "instructions")] = dict(zip(("small", "big"), counts, strict=True))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--only", default="keepalive,newconn,64k,latency,idle")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-to-nginx runs")
    parser.add_argument("--profile", metavar="SVG", help="py-spy record wharf during the runs")
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="also count user-space instructions per request under callgrind (N requests)",
    )
    args = parser.parse_args()
    need("haproxy", "nginx", "wrk", "taskset")
    raise_fd_limit()
    only = set(args.only.split(","))
    names = (
        "nginx_small",
        "nginx_big",
        "haproxy_small",
        "haproxy_big",
        "wharf_small",
        "wharf_big",
        "wharf_admin",
    )
    ports = {name: free_port() for name in names}
    results: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="wharf-bench-") as tmp:
        work = Path(tmp)
        balancer = str(ROOT / ".venv" / "bin" / "wharf-balancer")
        with contextlib.ExitStack() as stack:
            stack.enter_context(
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
            wharf = stack.enter_context(
                process(
                    [balancer, "serve", "--config", str(wharf_conf(work, ports))],
                    core=PROXY_CORE,
                    log=work / "wharf.out",
                )
            )
            for name in names:
                try:
                    wait_port(ports[name])
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
                        ],
                        core=LOAD_CORE,
                        log=work / "py-spy.out",
                    )
                )
            targets: list[tuple[str, str, int | None]] = [
                ("haproxy", "haproxy", haproxy.pid),
                ("wharf", "wharf", wharf.pid),
            ]
            if not args.no_direct:
                targets.insert(0, ("direct", "nginx", None))
            # Scenario by scenario, the peers back to back, so that a change in the machine's
            # load (it may be shared) hits both sides of a ratio alike.
            for scenario in ("keepalive", "newconn", "64k", "latency"):
                if scenario not in only:
                    continue
                for label, prefix, pid in targets:
                    small = f"http://127.0.0.1:{ports[prefix + '_small']}/"
                    big = f"http://127.0.0.1:{ports[prefix + '_big']}/"
                    runs = {
                        "keepalive": lambda url=small: wrk(url, args.seconds),
                        "newconn": lambda url=small: wrk(url, args.seconds, close=True),
                        "64k": lambda url=big: wrk(url, args.seconds),
                        "latency": lambda url=small: wrk(
                            url,
                            args.seconds,
                            script=pacing_script(work, args.rate),
                            connections=LATENCY_CONNECTIONS,
                        ),
                    }
                    results[(label, scenario)] = measured(pid, runs[scenario])
            if "idle" in only:
                for label, proc, port in (
                    ("haproxy", haproxy, ports["haproxy_small"]),
                    ("wharf", wharf, ports["wharf_small"]),
                ):
                    per = idle_memory(port, proxy_pid(proc), IDLE_CONNECTIONS)
                    results[(label, "idle")] = {"kib_per_conn": per}
            if args.instructions:
                stack.close()  # the timed runs are over: free the ports and the cores
                results.update(count_instructions(work, ports, args.instructions, stack))
    report(results, args.rate)
    return 0


def report(results: dict[tuple[str, str], dict[str, float]], rate: int) -> None:
    print(
        f"{'scenario':<12} {'direct':>12} {'haproxy':>12} {'wharf':>12} {'wharf/haproxy':>14}"
        "  errors (haproxy/wharf)"
    )
    for scenario in ("keepalive", "newconn", "64k"):
        if ("wharf", scenario) not in results:
            continue
        row = [
            results.get((label, scenario), {}).get("rps", 0.0)
            for label in ("direct", "haproxy", "wharf")
        ]
        ratio = row[2] / row[1] if row[1] else 0.0
        errs = [
            int(
                results.get((label, scenario), {}).get("non2xx", 0)
                + results.get((label, scenario), {}).get("socket_errors", 0)
            )
            for label in ("haproxy", "wharf")
        ]
        print(
            f"{scenario + ' rps':<12} {row[0]:>12,.0f} {row[1]:>12,.0f} {row[2]:>12,.0f} "
            f"{ratio:>13.2f}x  {errs[0]}/{errs[1]}"
        )
        cpu = [
            results.get((label, scenario), {}).get("cpu_us", 0.0) for label in ("haproxy", "wharf")
        ]
        if cpu[0] and cpu[1]:
            print(
                f"{'  cpu us/req':<12} {'':>12} {cpu[0]:>12.1f} {cpu[1]:>12.1f} "
                f"{cpu[0] / cpu[1]:>13.2f}x  (CPU-normalised capacity ratio)"
            )
        for pct in ("p50", "p99"):
            lat = [
                results.get((label, scenario), {}).get(pct, 0.0)
                for label in ("direct", "haproxy", "wharf")
            ]
            print(f"{'  ' + pct + ' ms':<12} {lat[0]:>12.2f} {lat[1]:>12.2f} {lat[2]:>12.2f}")
    if ("wharf", "latency") in results:
        print(f"latency at {rate}/s (wrk, {LATENCY_CONNECTIONS} paced connections):")
        for label in ("direct", "haproxy", "wharf"):
            res = results.get((label, "latency"))
            if res:
                print(
                    f"  {label:<8} achieved {res['rps']:>8,.0f}/s  p50 {res.get('p50', 0):.2f} ms"
                    f"  p99 {res.get('p99', 0):.2f} ms"
                )
        h99 = results.get(("haproxy", "latency"), {}).get("p99", 0.0)
        w99 = results[("wharf", "latency")].get("p99", 0.0)
        print(f"  p99 difference wharf - haproxy: {w99 - h99:+.2f} ms (target: within 2 ms)")
    if ("wharf", "instructions") in results:
        h, w = results[("haproxy", "instructions")], results[("wharf", "instructions")]
        for size in ("small", "big"):
            print(
                f"user-space instructions per request, {size} response: haproxy {h[size]:,.0f}"
                f"  wharf {w[size]:,.0f}  ratio {h[size] / w[size] if w[size] else 0:.3f}x"
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
