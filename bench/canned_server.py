"""A trivial HTTP/1.1 server that answers every request with one fixed SendMessage reply.

It measures the load generator's ceiling: the server does almost nothing (one recv, find the
end of the request, one send), so requests/s against it is what the load generator can
drive. One epoll loop, one process; run it pinned to the server core.

    python bench/canned_server.py --port 9399 [--seconds 60]
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time

REPLY_BODY = (
    b'{"MD5OfMessageBody":"8d1bde5f0b8a52e2e3c3d2e1b5ec4e3b",'
    b'"MessageId":"5fea7756-0ea4-451a-a703-a558b933e274"}'
)
REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
    b"x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n"
    b"Content-Length: " + str(len(REPLY_BODY)).encode() + b"\r\n\r\n" + REPLY_BODY
)


def _complete_requests(buf: bytes) -> tuple[int, bytes]:
    """How many whole requests ``buf`` holds, and what is left over."""
    count = 0
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return count, buf
        head = buf[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return count, buf
        count += 1
        buf = buf[total:]


def serve(port: int, seconds: float) -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    epoll = select.epoll()
    epoll.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    pending: dict[int, bytes] = {}
    served = 0
    deadline = time.monotonic() + seconds
    print(f"canned server on 127.0.0.1:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
    try:
        while time.monotonic() < deadline:
            for fd, _events in epoll.poll(0.2):
                if fd == listener.fileno():
                    while True:
                        try:
                            conn, _ = listener.accept()
                        except BlockingIOError:
                            break
                        conn.setblocking(False)
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        conns[conn.fileno()] = conn
                        pending[conn.fileno()] = b""
                        epoll.register(conn.fileno(), select.EPOLLIN)
                    continue
                conn = conns[fd]
                try:
                    data = conn.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    epoll.unregister(fd)
                    conn.close()
                    del conns[fd], pending[fd]
                    continue
                count, rest = _complete_requests(pending[fd] + data)
                pending[fd] = rest
                if count:
                    conn.sendall(REPLY * count)
                    served += count
    finally:
        for conn in conns.values():
            conn.close()
        listener.close()
        epoll.close()
    print(f"canned server: {served} replies", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="fixed-reply HTTP server (loopback only)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=120.0, help="exit after this long")
    args = parser.parse_args()
    return serve(args.port, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
