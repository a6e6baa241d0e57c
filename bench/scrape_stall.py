"""What a Prometheus scrape costs the broker's clients: SendMessage latency with and without a
/metrics scrape every half second, on a broker holding many queues.

    .venv/bin/python bench/scrape_stall.py                      # 10,000 queues, 6 s per run
    .venv/bin/python bench/scrape_stall.py --queues 5000 --rounds 3

It starts its own wharf-broker (a temporary data directory, free ports on 127.0.0.1),
creates the queues, then takes turns: one client sending as fast as it can, first alone, then
beside a scraper thread. Every loop is bounded by ``--seconds``. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.config

ROOT = Path(__file__).resolve().parent.parent
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    api, admin = free_port(), free_port()
    config = workdir / "broker.toml"
    config.write_text(
        f'[api]\nhost = "127.0.0.1"\nport = {api}\n'
        f'[admin]\nhost = "127.0.0.1"\nport = {admin}\n'
        f'[storage]\ndata_dir = "{workdir / "store"}"\n[logging]\nlevel = "warning"\n'
    )
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/wharf-broker"), "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "broker.log").open("wb"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).read()
            return process, api, admin
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the broker did not become ready in 60 s")


def scrape(admin: int, accept: str | None = None, gzipped: bool = False) -> tuple[float, int]:
    """Seconds for one scrape and the size of its body as sent."""
    headers = {"Accept": accept} if accept else {}
    if gzipped:
        headers["Accept-Encoding"] = "gzip"
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/metrics", headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            gzip.decompress(body)  # as a scraper would
    return time.perf_counter() - started, len(body)


def send_latencies(sqs: Any, url: str, seconds: float, admin: int | None) -> dict[str, Any]:
    """One client's SendMessage latencies for ``seconds``, beside a scrape every 0.5 s when
    ``admin`` is given."""
    stop = threading.Event()
    scrapes: list[float] = []

    def scraper() -> None:
        assert admin is not None
        while not stop.is_set():
            scrapes.append(scrape(admin)[0])
            stop.wait(0.5)

    thread = threading.Thread(target=scraper)
    if admin is not None:
        thread.start()
    latencies: list[float] = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        started = time.perf_counter()
        sqs.send_message(QueueUrl=url, MessageBody="x")
        latencies.append(time.perf_counter() - started)
    stop.set()
    if admin is not None:
        thread.join()
    latencies.sort()
    return {
        "scraping": admin is not None,
        "sends": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "scrapes": len(scrapes),
        "scrape_ms_max": round(max(scrapes) * 1000) if scrapes else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wharf-scrape-") as workdir:
        process, api, admin = start_broker(Path(workdir))
        try:
            sqs = boto3.client(
                "sqs",
                endpoint_url=f"http://127.0.0.1:{api}",
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                config=botocore.config.Config(retries={"max_attempts": 1}, max_pool_connections=8),
            )
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                names = [f"many-{i:05d}" for i in range(args.queues)]
                urls = list(pool.map(lambda name: sqs.create_queue(QueueName=name), names))
            url = urls[0]["QueueUrl"]
            for label, accept, gzipped in (
                ("text", None, False),
                ("openmetrics", OPENMETRICS, False),
                ("text+gzip", None, True),
            ):
                times = [scrape(admin, accept, gzipped) for _ in range(3)]
                print(
                    json.dumps(
                        {
                            "scrape": label,
                            "queues": args.queues,
                            "bytes": times[0][1],
                            "ms": [round(seconds * 1000) for seconds, _ in times],
                        }
                    )
                )
            for _ in range(args.rounds):
                for scraping in (False, True):
                    result = send_latencies(sqs, url, args.seconds, admin if scraping else None)
                    print(json.dumps({"queues": args.queues, **result}))
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
