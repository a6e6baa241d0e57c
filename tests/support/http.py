"""A tiny HTTP/1.1 client over a raw trio socket, for tests that need byte-level control."""

from __future__ import annotations

import h11
import trio


async def request(
    addr: tuple[str, int],
    method: str = "GET",
    target: str = "/",
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    limit_seconds: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection; returns (status, headers, body)."""
    with trio.fail_after(limit_seconds):
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            authority = f"[{addr[0]}]" if ":" in addr[0] else addr[0]  # IPv6 in brackets
            hdrs = [("host", f"{authority}:{addr[1]}"), *(headers or [])]
            if body:
                hdrs.append(("content-length", str(len(body))))
            data = conn.send(h11.Request(method=method, target=target, headers=hdrs))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            return await read_response(conn, stream)


async def read_response(
    conn: h11.Connection, stream: trio.abc.Stream
) -> tuple[int, dict[str, str], bytes]:
    status = 0
    headers: dict[str, str] = {}
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, headers, body


async def raw_exchange(
    addr: tuple[str, int], payload: bytes, *, limit_seconds: float = 10
) -> bytes:
    """Send raw bytes, return everything the server sends until it closes."""
    with trio.fail_after(limit_seconds):
        stream = await trio.open_tcp_stream(*addr)
        async with stream:
            await stream.send_all(payload)
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
            return received
