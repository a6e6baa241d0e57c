"""Where a running wharf-broker's CPU goes, thread by thread, per request or per message.

Reads ``/proc/PID/task/*/stat`` (user + system time of every thread) around one bounded load
from ``bench/loadgen.py`` against a broker that is already running (start it pinned, e.g.
``taskset -c 0 bench/peers.sh start wharf 9400 9401 /tmp/wb``, and run this on the other core
with ``taskset -c 1``). The threads are the event loop (named after the process), the store's
writer and checkpointer, and trio's worker threads (reads of bodies that are not cached).

Modes:

- ``floor ACTION``: a request that does no message work (GetQueueUrl, GetQueueAttributes,
  or an empty ReceiveMessage), closed loop: the HTTP, authentication and JSON cost of a
  request, which every scenario pays once per request.
- ``send`` / ``send_batch``: loadgen's closed-loop SendMessage or SendMessageBatch of 10.
- ``depth N``: fill a new queue with N + ``--drain`` messages, wait until the broker is idle,
  then ReceiveMessage(10) + DeleteMessageBatch the oldest ``--drain``; CPU per message.

``--profile FILE``: py-spy samples the measured part (``--gil``: the thread holding the GIL,
i.e. the Python work, not the waits) into FILE in its raw format, one folded stack per line.

Example: ``.venv/bin/python bench/cpu_by_thread.py --pid $(pgrep -f 'wharf-broker serve' |
head -1) --port 9400 depth 300000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen as lg  # bench/ is not a package: imported from beside this file

BENCH = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")
IDLE_CORES = 0.05  # the broker counts as idle below this share of a core
IDLE_LIMIT_SECONDS = 120.0


def thread_seconds(pid: int) -> dict[tuple[str, str], float]:
    """CPU seconds of every thread of ``pid``, keyed by (thread id, name)."""
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[(tid, name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


def wait_idle(pid: int) -> float:
    """Wait (bounded) until the broker uses under ``IDLE_CORES``; return the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < IDLE_LIMIT_SECONDS:
        before = sum(thread_seconds(pid).values())
        time.sleep(0.5)
        if sum(thread_seconds(pid).values()) - before < IDLE_CORES * 0.5:
            break
    return time.monotonic() - started


def start_profile(pid: int, output: str) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{BENCH}/.peers/tools/bin")
    if spy is None:
        raise SystemExit("--profile needs py-spy: bench/peers.sh install tools")
    command = [spy, "record", "--nonblocking", "--gil", "-r", "250", "-f", "raw", "-o", output]
    spy_process = subprocess.Popen([*command, "-p", str(pid)], stdout=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attaches before the load starts
    return spy_process


def stop_profile(spy_process: subprocess.Popen[bytes]) -> None:
    spy_process.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
    try:
        spy_process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy_process.kill()
        spy_process.wait()


def measure(pid: int, units: str, run: Callable[[], int], profile: str | None = None) -> None:
    """Print each thread's CPU per unit of ``run``'s work (it returns how many units)."""
    spy_process = start_profile(pid, profile) if profile else None
    before = thread_seconds(pid)
    try:
        count = run()
    finally:
        after = thread_seconds(pid)
        if spy_process is not None:
            stop_profile(spy_process)
    total = 0.0
    for key in sorted(after):
        spent = after[key] - before.get(key, 0.0)
        total += spent
        if spent > 0.005:
            tid, name = key
            print(f"  thread {tid} {name:<16} {spent / count * 1e6:8.1f} µs per {units}")
    print(f"  all threads             {total / count * 1e6:8.1f} µs per {units} ({count:,})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, required=True, help="the broker's process id")
    parser.add_argument("--port", type=int, required=True, help="its API port (127.0.0.1)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--drain", type=int, default=30_000, help="depth: messages drained")
    parser.add_argument("--profile", help="py-spy raw output file for the measured part")
    parser.add_argument("mode", choices=["floor", "send", "send_batch", "depth"])
    parser.add_argument("argument", nargs="?", default="", help="floor: action; depth: N")
    args = parser.parse_args(argv)
    endpoint = lg.Endpoint("127.0.0.1", args.port)
    builder = lg.RequestBuilder(endpoint)
    url = lg.create_queue(endpoint, f"cpu-by-thread-{time.time_ns()}")
    try:
        if args.mode == "depth":
            depth = int(args.argument or 10_000)
            lg.fill_queue(endpoint, url, depth + args.drain, connections=16, max_seconds=900)
            print(
                f"depth {depth:,}: idle after {wait_idle(args.pid):.1f} s; draining {args.drain:,}"
            )

            def drain() -> int:
                result = lg.run_drain(
                    endpoint, url, target=args.drain, connections=args.connections, seconds=120
                )
                return int(result.messages)

            measure(args.pid, "message", drain, args.profile)
            return 0
        if args.mode == "floor":
            action = args.argument or "GetQueueUrl"
            payloads: dict[str, dict[str, Any]] = {
                "GetQueueUrl": {"QueueName": url.rsplit("/", 1)[1]},
                "GetQueueAttributes": {"QueueUrl": url, "AttributeNames": ["VisibilityTimeout"]},
                "ReceiveMessage": {"QueueUrl": url, "WaitTimeSeconds": 0},
            }
            request, per_request, units = builder.build(action, payloads[action]), 1, "request"
        elif args.mode == "send":
            request, per_request, units = lg.send_request(builder, url), 1, "message"
        else:
            request, per_request, units = lg.batch_request(builder, url), 10, "message"
        print(f"{args.mode} {args.argument}".strip() + f": {args.seconds:g} s closed loop")

        def fixed() -> int:
            result = lg.run_fixed(
                endpoint,
                args.mode,
                request,
                connections=args.connections,
                seconds=args.seconds,
                warmup=0.0,
                per_request=per_request,
            )
            return max(1, int(result.requests_per_second * args.seconds * per_request))

        measure(args.pid, units, fixed, args.profile)
    finally:
        lg.delete_queue(endpoint, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
