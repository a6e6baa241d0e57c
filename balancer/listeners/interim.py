"""Interim (1xx) responses from a target on their way to the client.

A target may send informational responses before its final one (RFC 9110 15.2): a 100
Continue to a client that sent ``Expect: 100-continue``, 103 Early Hints (RFC 8297) so that
a browser starts loading what the page will need while the page is still being computed, or
codes not named yet. Like HAProxy and nginx, the balancer relays them:

- to HTTP/1.1 clients only: HTTP/1.0 has no 1xx, and a server must not send one to an
  HTTP/1.0 client (RFC 9110 15.2);
- with hop-by-hop headers removed, as for a final response;
- a 100 only to a client still waiting for one. After the balancer's own 100 (sent when the
  target stays silent), after the client started its body anyway, or to a client that never
  asked, a 100 from the target tells nothing new and is dropped, so a client never gets two;
- 101 is not interim here: it is the target's answer to an Upgrade (``forward._switch``).

h11 counts any 1xx sent as the end of the client's wait for a 100, while only a 100 or a
final response ends it (RFC 9110 10.1.1: a client that got a 103 still waits for its 100).
After another 1xx the wait is restored, so that the balancer's own 100 still goes out when
the target says nothing more.
"""

from __future__ import annotations

import h11

from balancer.listeners.exchange import Client
from proto.http1 import forwardable_framing, strip_hop_by_hop


def interim_bytes(conn: h11.Connection, response: h11.InformationalResponse) -> bytes:
    """What the client gets of a target's 1xx (not a 101): its bytes, or b"" if dropped.

    ``conn`` is the client's h11 server state, which records what was sent.
    """
    status = response.status_code
    if status == 100:
        # h11 never counts an HTTP/1.0 client as waiting: its Expect is to be ignored.
        if not conn.they_are_waiting_for_100_continue:
            return b""
    elif conn.their_http_version is None or conn.their_http_version < b"1.1":
        return b""
    waiting = conn.they_are_waiting_for_100_continue
    interim = h11.InformationalResponse(
        status_code=status,
        headers=forwardable_framing(status, strip_hop_by_hop(response.headers)),
        reason=response.reason,
        # Parsed and validated by h11 on the target's side; removing fields keeps them valid.
        _parsed=True,
    )
    data = conn.send(interim) or b""
    if waiting and status != 100:
        conn.client_is_waiting_for_100_continue = True
    return data


async def relay_interim(client: Client, response: h11.InformationalResponse) -> bool:
    """Send the client a target's 1xx (not a 101), or drop it; whether it was sent.

    Raises:
        ClientGone: the client is not there any more.
    """
    data = interim_bytes(client.conn, response)
    if not data:
        return False
    await client.send(data)
    return True
