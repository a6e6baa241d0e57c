"""The HTTP listener's connection loop on real sockets: keep-alive, pipelining, limits,
desync refusals, timeouts, rules and actions, draining, access log and metrics."""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import shlex
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator

import pytest
import trio
import trustme

from balancer.config import (
    AccessLog,
    Conditions,
    FixedResponse,
    Forward,
    HttpsListener,
    ListenerLimits,
    ListenerTimeouts,
    Redirect,
    Rule,
    WeightedTargetGroup,
)
from balancer.listeners import http as http_listener
from proto.http1 import verdict
from tests.balancer.test_access_log import TID, athena_row
from tests.support.balancer_http import (
    Client,
    balancer,
    config,
    front,
    group,
    listener,
    raw,
    sample,
    statuses,
)
from tests.support.daemons import address
from tests.support.http import request
from tests.support.targets import Reply, Seen, TargetServer, running_targets
from tests.support.tls import client_context, write_pair


async def test_keep_alive_serves_many_requests_on_one_connection_each_way():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        for i in range(5):
            status, _headers, body = await client.request(target=f"/n/{i}")
            assert status == 200
            assert json.loads(body)["target"] == f"/n/{i}"
        assert target.accepts == 1  # the upstream connection was pooled and reused


async def test_pipelined_requests_are_answered_in_order():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        payload = b"".join(
            b"GET /p/%d HTTP/1.1\r\nHost: x\r\n%s\r\n"
            % (i, b"Connection: close\r\n" if i == 2 else b"")
            for i in range(3)
        )
        answer = await raw(front(daemon), payload)
        assert statuses(answer) == [200, 200, 200]
        assert [s.target for s in target.seen] == ["/p/0", "/p/1", "/p/2"]
        order = [answer.index(b'"/p/%d"' % i) for i in range(3)]
        assert order == sorted(order)


async def test_http_1_0_clients_get_an_answer_and_a_close():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(front(daemon), b"GET /old HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        assert target.seen[0].header("host")  # a Host was supplied for the target


async def test_an_absolute_form_target_names_the_host_routed_on_and_forwarded():
    # RFC 9112 3.2.2: the URI's authority replaces Host, so the target serves the host the
    # rules matched (never the Host header the client also sent).
    rules = [
        Rule(
            priority=1,
            conditions=Conditions(host_header=("api.example.com",)),
            action=Forward(target_group="api"),
        )
    ]
    async with (
        running_targets(TargetServer("web"), TargetServer("api")) as (web, api),
        balancer(config([listener(rules=rules)], [group("web", web), group("api", api)])) as d,
    ):
        answer = await raw(
            front(d),
            b"GET http://user@api.example.com/v1/z?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"
            b"GET HTTP://api.example.com HTTP/1.1\r\nHost: other\r\n\r\n"
            b"OPTIONS http://api.example.com:80 HTTP/1.1\r\nHost: other\r\n\r\n"
            b"GET http:///nohost HTTP/1.1\r\nHost: other\r\n\r\n",
        )
        assert statuses(answer) == [200, 200, 200, 400]
        assert [(s.target, s.header("host")) for s in api.seen] == [
            ("/v1/z?q=1", "api.example.com"),
            ("/", "api.example.com"),
            ("*", "api.example.com:80"),  # RFC 9112 3.2.4: OPTIONS of the server as a whole
        ]
        assert all(len([k for k, _ in s.headers if k.lower() == "host"]) == 1 for s in api.seen)
        assert web.seen == []


async def test_an_http_1_0_request_without_host_is_redirected_to_the_balancers_address():
    rule = Rule(
        priority=1,
        conditions=Conditions(path_pattern=("/old/*",)),
        action=Redirect(path="/new/#{path}", status_code="HTTP_302"),
    )
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(rules=[rule])], [group("web", target)])) as daemon,
    ):
        port = front(daemon)[1]
        answer = await raw(front(daemon), b"GET /old/x HTTP/1.0\r\n\r\n")
        assert statuses(answer) == [302]
        assert f"location: http://127.0.0.1:{port}/new/old/x".encode() in answer.lower()


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /old/x HTTP/1.1\r\nHost: \r\n",
        b"GET /old/x HTTP/1.1\r\nHost: :8080\r\n",
        b"GET /old/x HTTP/1.0\r\nHost:\r\n",
        b"GET http://:80/old/x HTTP/1.1\r\nHost: a.example\r\n",
        b"GET /x HTTP/1.1\r\nHost: \r\n",  # forwarded, were it valid
    ],
    ids=["empty", "port alone", "empty, HTTP/1.0", "absolute-form", "forward"],
)
async def test_a_host_that_names_no_host_gets_400_and_no_redirect(request_head):
    # RFC 9110 4.2.1: no http(s) URI with an empty host. A redirect built from it said
    # `Location: http://:<port>/...`; RFC 9112 3.3 lets a server reject such a request, and it
    # is refused as any other invalid Host (HTTP/1.0 without Host: the test above).
    rule = Rule(
        priority=1,
        conditions=Conditions(path_pattern=("/old/*",)),
        action=Redirect(path="/new/#{path}", status_code="HTTP_302"),
    )
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(rules=[rule])], [group("web", target)])) as daemon,
    ):
        answer = await raw(front(daemon), request_head + b"\r\n")
        assert statuses(answer) == [400]
        assert b"location" not in answer.lower()
        assert answer.endswith(b"bad host header\n")
        assert target.seen == []


async def test_fixed_responses_without_content_send_none_and_keep_the_connection():
    rules = [
        Rule(
            priority=code,
            conditions=Conditions(path_pattern=(f"/{code}",)),
            action=FixedResponse(status_code=code, message_body="ignored"),
        )
        for code in (204, 205, 418)
    ]
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(rules=rules)], [group("web", target)])) as daemon,
    ):
        answer = await raw(
            front(daemon),
            b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /205 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /418 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert statuses(answer) == [204, 205, 418]
        no_content, reset_content, teapot = answer.split(b"HTTP/1.1 ")[1:]
        assert no_content.startswith(b"204 No Content\r\n")
        assert b"content-length" not in no_content.lower()
        assert reset_content.startswith(b"205 Reset Content\r\n")
        assert b"content-length: 0\r\n" in reset_content.lower()
        assert b"ignored" not in no_content + reset_content
        assert teapot.startswith(b"418 I'm a Teapot\r\n")
        assert teapot.endswith(b"ignored")


CONNECT_ACTIONS = {
    "fixed 200": FixedResponse(status_code=200, message_body="hello"),
    "fixed 204": FixedResponse(status_code=204),
    "redirect": Redirect(protocol="HTTPS", status_code="HTTP_301"),
}


@pytest.mark.parametrize("name", sorted(CONNECT_ACTIONS))
async def test_a_connect_to_a_redirect_or_a_2xx_fixed_response_gets_405(name, tmp_path):
    # A 2xx to CONNECT means the tunnel is open (RFC 9110 9.3.6): h11 refused the fixed
    # response's body and the client got nothing at all, logged as a 460. A redirect was
    # built from the host:port target (https://a.b:<port>/a.b:443).
    path = tmp_path / "access.log"
    action = CONNECT_ACTIONS[name]
    lst = listener(action, access_log=AccessLog(enabled=True, destination=str(path)))
    async with balancer(config([lst], [])) as daemon:
        answer = await raw(
            front(daemon),
            b"CONNECT a.b:443 HTTP/1.1\r\nHost: a.b:443\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: a.b\r\nConnection: close\r\n\r\n",
        )
        # The connection goes on: the next request gets the action as configured.
        expected = action.status_code if isinstance(action, FixedResponse) else 301
        assert statuses(answer) == [405, expected]
        refusal = answer.split(b"HTTP/1.1 ")[1]
        assert refusal.startswith(b"405 Method Not Allowed\r\n")
        assert b"\r\nallow: \r\n" in refusal.lower()
        assert b"location" not in refusal.lower()
        assert refusal.endswith(b"CONNECT is not supported by this listener's action\n")
        await trio.sleep(1.3)  # the app flushes access logs once a second
    (line,) = [line for line in path.read_text().splitlines() if '"CONNECT ' in line]
    fields = shlex.split(line)
    assert (fields[8], fields[9]) == ("405", "-")  # elb_status_code, target_status_code
    assert '"MethodNotAllowed"' in line
    assert ('"redirect"' if name == "redirect" else '"fixed-response"') in line


async def test_a_connect_to_a_non_2xx_fixed_response_gets_it_as_configured():
    lst = listener(FixedResponse(status_code=403, message_body="no tunnels"))
    async with balancer(config([lst], [])) as daemon:
        answer = await raw(
            front(daemon),
            b"CONNECT a.b:443 HTTP/1.1\r\nHost: a.b:443\r\nConnection: close\r\n\r\n",
        )
        assert statuses(answer) == [403]
        assert answer.endswith(b"\r\n\r\nno tunnels")


async def test_an_own_answer_to_a_client_waiting_for_100_continue_closes():
    """RFC 9110 10.1.1: answering before the content, a server SHOULD say whether it will
    read it. The client holds its body until a 100 that now never comes (curl closes); kept
    open, the connection waited for that body until the body timeout (hunt httpsem)."""
    lst = listener(FixedResponse(status_code=403, message_body="no"))
    async with balancer(config([lst], [])) as daemon:
        answer = await raw(
            front(daemon),
            b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n",
            limit=5,
        )
        assert statuses(answer) == [403]
        assert b"\r\nconnection: close\r\n" in answer.lower()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["body sent without waiting", "no body", "empty body"],
)
async def test_an_own_answer_to_a_client_not_waiting_for_100_continue_keeps_the_connection(
    request_bytes,
):
    """Only a client still holding its body back loses the connection: one that sent it
    (or has none) keeps it, and its pipelined request is answered (review of 570f91e)."""
    lst = listener(FixedResponse(status_code=403, message_body="no"))
    async with balancer(config([lst], [])) as daemon:
        answer = await raw(
            front(daemon),
            request_bytes + b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            limit=5,
        )
        assert statuses(answer) == [403, 403]


async def test_an_own_answer_after_a_broken_chunk_says_the_connection_closes():
    """A client that sent a chunk, then a malformed one, behind Expect: 100-continue got a 403
    without Connection: close (the pull that cleared h11's flag swallowed the error)."""
    lst = listener(FixedResponse(status_code=403, message_body="no"))
    async with balancer(config([lst], [])) as daemon:
        answer = await raw(
            front(daemon),
            b"POST /a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n",
            limit=5,
        )
        assert statuses(answer) == [403]
        assert b"\r\nconnection: close\r\n" in answer.lower()


DESYNC = {
    "both TE and CL": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "repeated Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 1\r\n\r\nx",
    "differing Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nxx",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",
    "NUL in a header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "control byte in a header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x1bb\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    # 2^64 + 3: h11 read up to 20 hex digits, a chunk swallowing the requests after it.
    "chunk size beyond 64 bits": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
    "underscore lookalike": b"POST / HTTP/1.1\r\nHost: x\r\nContent_Length: 3\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "bad Content-Length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\nx",
    "unsupported Transfer-Encoding": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "bare LF ending a chunk line": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
}


# ALB's classification_reason for each DESYNC case, as logged with http.desync_refused.
DESYNC_REASONS = {
    "both TE and CL": "BothTeClPresent",
    "repeated Content-Length": "DuplicateContentLength",
    "differing Content-Length": "MultipleContentLength",
    "obs-fold": "ObsFold",
    "NUL in a header": "BadHeader",
    "control byte in a header": "BadHeader",
    "bare CR": "BadHeader",
    "bad chunk size": "BadTransferEncoding",
    "chunk size beyond 64 bits": "BadTransferEncoding",
    "space before colon": "SuspiciousHeader",
    "underscore lookalike": "SuspiciousHeader",
    "bad Content-Length": "BadContentLength",
    "unsupported Transfer-Encoding": "BadTransferEncoding",
    "bare LF ending a chunk line": "BadTransferEncoding",
}


def desync_log_reasons(daemon) -> list[tuple[str, str]]:
    """(classification, reason) of every http.desync_refused line logged so far, in order."""
    found = []
    for line in daemon.log_output.getvalue().splitlines():
        if "event=http.desync_refused" in line and "level=info" in line:
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            found.append((fields["classification"], fields["reason"]))
    return found


async def test_every_desync_attempt_is_refused_with_400_and_a_close():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        for i, (name, payload) in enumerate(DESYNC.items()):
            # A second, innocent request after it must never be reached.
            answer = await raw(
                front(daemon), payload + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert statuses(answer) == [400], name
            # Logged at info with its own classification, whether h11 or the balancer's
            # classifier refused it.
            logged = desync_log_reasons(daemon)
            assert len(logged) == i + 1, name
            reason = DESYNC_REASONS[name]
            assert logged[-1] == (verdict(reason).classification.label, reason), name
        assert all(s.target != "/smuggled" for s in target.seen)
        assert all(s.method != "POST" or s.body == b"" for s in target.seen)
        refused = sum(
            value
            for metric in daemon.metrics.registry.collect()
            if metric.name == "wharf_balancer_http_desync_requests"
            for sample_ in metric.samples
            if sample_.labels.get("refused") == "true"
            for value in [sample_.value]
        )
        assert refused == len(DESYNC)
        for reason in set(DESYNC_REASONS.values()):
            labels = {
                "listener": "front",
                "classification": verdict(reason).classification.label,
                "reason": reason,
                "refused": "true",
            }
            expected = list(DESYNC_REASONS.values()).count(reason)
            assert sample(daemon, "wharf_balancer_http_desync_requests_total", labels) == (
                expected
            ), reason


async def test_whitespace_before_a_chunk_extension_is_no_desync_attempt():
    # RFC 9112 7.1.1 allows BWS before a chunk extension's ";" (HAProxy skips it): the body is
    # forwarded, re-chunked without the extension, and the connection carries the next request.
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(
            front(daemon),
            b"POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3 ;ext\r\nabc\r\n2\t; a = 1\r\nde\r\n0\r\n\r\n" + CLOSE_GET,
        )
        assert statuses(answer) == [200, 200]
        assert [(s.target, s.body) for s in target.seen] == [("/ext", b"abcde"), ("/next", b"")]
        assert desync_log_reasons(daemon) == []


async def test_chunk_lines_ended_by_a_bare_lf_are_refused_at_once_not_after_the_body_timeout():
    # RFC 9112 7.1: chunk lines end with CRLF. h11 waited for one that never came: the request
    # hung until request_body_seconds, then got 408, the target holding half a request.
    timeouts = ListenerTimeouts(request_body_seconds=30)
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(timeouts=timeouts)], [group("web", target)])) as daemon,
    ):
        payload = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n"
        answer = await raw(front(daemon), payload, limit=5)
        assert statuses(answer) == [400]
        assert b"connection: close" in answer.lower()
        assert desync_log_reasons(daemon) == [("Severe", "BadTransferEncoding")]
        # The log line says which rule broke (h11's message), as for a refused head.
        (logged,) = [
            line
            for line in daemon.log_output.getvalue().splitlines()
            if "event=http.desync_refused" in line
        ]
        assert "a chunk line must end with CRLF, not a bare LF" in logged
        labels = {
            "listener": "front",
            "classification": "Severe",
            "reason": "BadTransferEncoding",
            "refused": "true",
        }
        assert sample(daemon, "wharf_balancer_http_desync_requests_total", labels) == 1
        assert all(s.body == b"" for s in target.seen)


async def test_a_refusal_is_logged_without_the_header_values_or_body_bytes_it_choked_on():
    # h11's message quotes the line it could not parse: an Authorization value, or body bytes
    # of a mis-framed chunk. The log names the rule (and a header line's field name) only.
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        bad_header = b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer SECRETTOKEN\r\n\r\n"
        bad_chunk = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"pas\r\nsword": "hunter2"}\r\n0\r\n\r\n'
        )
        bad_line = b"GET /\x7fSECRETQUERY HTTP/1.1\r\nHost: x\r\n\r\n"
        for payload in (bad_header, bad_chunk, bad_line):
            assert statuses(await raw(front(daemon), payload)) == [400]
        logged = [
            line
            for line in daemon.log_output.getvalue().splitlines()
            if "event=http.desync_refused" in line
        ]
        assert len(logged) == 3
        assert not any(
            secret in line for line in logged for secret in ("SECRET", "hunter2", "sword")
        )
        assert 'detail="illegal header line: field Authorization, 34 bytes"' in logged[0]
        assert 'detail="illegal chunk header: 20 bytes"' in logged[1]
        assert 'detail="illegal request line: 26 bytes"' in logged[2]


AMBIGUOUS_SERVED = {
    "Content-Length on a GET": b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    "Transfer-Encoding on a GET": b"GET /a HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(AMBIGUOUS_SERVED))
async def test_an_ambiguous_request_is_served_then_both_connections_close(name):
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(front(daemon), AMBIGUOUS_SERVED[name])
        assert statuses(answer) == [200]
        assert b"connection: close" in answer.lower()
        # The target connection was closed too, not pooled: the next request opens another.
        assert statuses(await raw(front(daemon), CLOSE_GET)) == [200]
        assert target.accepts == 2
        # A compliant request's target connection is pooled and reused.
        assert statuses(await raw(front(daemon), CLOSE_GET)) == [200]
        assert target.accepts == 2


CLOSE_GET = b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def forwarded_for(count: int) -> bytes:
    chain = b", ".join(b"192.0.2.%d" % (i % 250) for i in range(count))
    return b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: %s\r\nConnection: close\r\n\r\n" % (
        chain
    )


async def test_a_trusted_chain_of_more_than_30_addresses_gets_463(tmp_path):
    path = tmp_path / "access.log"
    trusted = listener(
        trusted_proxies=("127.0.0.0/8",),
        access_log=AccessLog(enabled=True, destination=str(path)),
    )
    untrusted = listener(name="open", x_forwarded_for="preserve")
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([trusted, untrusted], [group("web", target)])) as daemon,
    ):
        assert statuses(await raw(front(daemon), forwarded_for(30))) == [200]
        assert statuses(await raw(front(daemon), forwarded_for(31))) == [463]
        # From an untrusted peer the chain is dropped, never forwarded: nothing to limit.
        assert statuses(await raw(front(daemon, "open"), forwarded_for(31))) == [200]
        assert len(target.seen) == 2
        labels = {
            "listener": "front",
            "rule": "-",  # refused before the rules ran
            "target_group": "-",
            "code_class": "4xx",
            "source": "elb",
        }
        assert sample(daemon, "wharf_balancer_http_requests_total", labels) == 1
        await trio.sleep(1.3)  # the app flushes access logs once a second
    lines = path.read_text().splitlines()
    refused = [line for line in lines if " 463 - " in line]
    assert len(refused) == 1
    assert '"ForwardedForTooLong"' in refused[0]
    assert shlex.split(refused[0])[20] == "-"  # matched_rule_priority: rules never ran
    served = [shlex.split(line)[20] for line in lines if " 200 200 " in line]
    assert served
    assert set(served) == {"0"}  # the default action


async def test_head_size_count_and_request_line_limits():
    # ALB answers 400 past each of its limits (request line, one header, all headers, count).
    limits = ListenerLimits(
        request_header_bytes=1024, header_count=8, request_line_bytes=256, header_field_bytes=300
    )
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(limits=limits)], [group("web", target)])) as daemon,
    ):
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        assert statuses(await raw(front(daemon), big)) == [400]
        many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(12))
        assert statuses(await raw(front(daemon), many + b"\r\n")) == [400]
        long_line = b"GET /" + b"a" * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert statuses(await raw(front(daemon), long_line)) == [400]
        field = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: %s\r\n\r\n"
        assert statuses(await raw(front(daemon), field % (b"a" * 296))) == [400]  # 301 bytes
        assert target.seen == []
        assert statuses(await raw(front(daemon), field % (b"a" * 295))) == [200]  # 300 bytes


@pytest.mark.parametrize("shape", ["userinfo", "host", "path"])
async def test_the_request_line_limit_counts_an_absolute_form_target_as_sent(shape):
    # The limit was checked on the origin-form target the balancer rewrites it to: userinfo
    # and authority (moved to Host) escaped it, so a 3 KB line passed a 1 KB limit.
    limits = ListenerLimits(request_line_bytes=256, request_header_bytes=4096)
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(limits=limits)], [group("web", target)])) as daemon,
    ):
        for line_bytes, status in ((256, 200), (257, 400)):
            template = {
                "userinfo": b"GET http://%s@a.b/x HTTP/1.1",
                "host": b"GET http://%s.b/x HTTP/1.1",
                "path": b"GET http://a.b/%s HTTP/1.1",
            }[shape]
            line = template % (b"u" * (line_bytes - len(template % b"")))
            assert len(line) == line_bytes
            answer = await raw(front(daemon), line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert statuses(answer) == [status], (shape, line_bytes)
        assert len(target.seen) == 1


@pytest.mark.parametrize(
    "line", [b"GET / HTTP/1.0", b"GET http://a.example/ HTTP/1.0"], ids=["origin", "absolute"]
)
async def test_the_header_count_limit_counts_only_the_headers_the_client_sent(line):
    # An HTTP/1.0 request without Host gets one from the balancer (its own address, or an
    # absolute-form target's authority): that one was counted against the client's limit.
    limits = ListenerLimits(header_count=8)
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(limits=limits)], [group("web", target)])) as daemon,
    ):
        for count, status in ((8, 200), (9, 400)):
            fields = b"".join(b"X-%d: 1\r\n" % i for i in range(count))
            answer = await raw(front(daemon), line + b"\r\n" + fields + b"\r\n")
            assert statuses(answer) == [status], count
        assert [s.header("x-7") for s in target.seen] == ["1"]
        assert target.seen[0].header("host") is not None


async def test_a_slow_head_gets_408_and_an_idle_connection_is_closed():
    timeouts = ListenerTimeouts(request_header_seconds=0.3)
    lst = listener(timeouts=timeouts, idle_timeout_seconds=1)
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        assert statuses(await raw(front(daemon), b"GET / HTTP/1.1\r\nHo")) == [408]
        with trio.fail_after(5):
            async with await trio.open_tcp_stream(*front(daemon)) as stream:
                start = trio.current_time()
                assert await stream.receive_some(100) == b""  # closed by the balancer
                assert trio.current_time() - start >= 0.9


async def test_rules_pick_fixed_responses_redirects_and_forwards():
    rules = [
        Rule(
            priority=10,
            conditions=Conditions(path_pattern=("/health",)),
            action=FixedResponse(
                status_code=200, content_type="application/json", message_body="{}"
            ),
        ),
        Rule(
            priority=20,
            conditions=Conditions(host_header=("old.example.com",)),
            action=Redirect(host="new.example.com", status_code="HTTP_301"),
        ),
    ]
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(rules=rules)], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        status, headers, body = await client.request(target="/health")
        assert (status, headers["content-type"], body) == (200, "application/json", b"{}")
        # RFC 9110 6.6.1: the balancer is the origin of its own answers, and has a clock.
        sent = email.utils.parsedate_to_datetime(headers["date"])
        assert abs(sent.timestamp() - time.time()) < 60
        status, headers, _ = await client.request(target="/a/b?c=d", headers=[("x-host", "unused")])
        assert status == 200  # no Host match: the default forward
        port = front(daemon)[1]
        answer = await raw(
            front(daemon),
            b"GET /a/b?c=d HTTP/1.1\r\nHost: old.example.com\r\nConnection: close\r\n\r\n",
        )
        assert statuses(answer) == [301]
        assert f"location: http://new.example.com:{port}/a/b?c=d".encode() in answer.lower()
        assert b"\r\ndate: " in answer.lower()
        assert [s.target for s in target.seen] == ["/a/b?c=d"]
        assert (
            sample(daemon, "wharf_balancer_http_fixed_responses_total", {"listener": "front"}) == 1
        )
        assert sample(daemon, "wharf_balancer_http_redirects_total", {"listener": "front"}) == 1
        labels = {
            "listener": "front",
            "rule": "10",
            "target_group": "-",
            "code_class": "2xx",
            "source": "elb",
        }
        assert sample(daemon, "wharf_balancer_http_requests_total", labels) == 1
        labels.update(rule="default", target_group="web", source="target")
        assert sample(daemon, "wharf_balancer_http_requests_total", labels) == 1


async def test_a_redirect_whose_location_passes_8k_is_answered_500_and_counted(tmp_path):
    path = tmp_path / "access.log"
    rules = [
        Rule(
            priority=10,
            conditions=Conditions(path_pattern=("/old/*",)),
            action=Redirect(path="/new/#{path}", status_code="HTTP_301"),
        )
    ]
    lst = listener(rules=rules, access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        status, headers, _ = await client.request(target="/old/" + "a" * 8_200)
        assert "location" not in headers
        assert status == 500
        status, headers, _ = await client.request(target="/old/short")
        assert status == 301
        assert headers["location"].endswith("/new/old/short")
        labels = {"listener": "front"}
        assert sample(daemon, "wharf_balancer_http_redirect_url_limit_exceeded_total", labels) == 1
        assert sample(daemon, "wharf_balancer_http_redirects_total", labels) == 1
        assert target.seen == []
        await trio.sleep(1.3)  # the app flushes access logs once a second
    # The 500's line says why the balancer answered it.
    rows = [athena_row(line) for line in path.read_text().splitlines()]
    assert [
        (row["elb_status_code"], row["actions_executed"], row["lambda_error_reason"])
        for row in rows
    ] == [("500", "redirect", "RedirectUrlTooLong"), ("301", "redirect", "-")]


async def test_a_fixed_response_reads_past_an_unread_body_and_keeps_the_connection():
    lst = listener(FixedResponse(status_code=404, message_body="nope"))
    async with balancer(config([lst], [])) as daemon, Client.connect(front(daemon)) as client:
        assert (await client.request("POST", body=b"x" * 5000))[0] == 404
        assert (await client.request())[0] == 404


async def test_draining_closes_idle_keep_alive_connections_at_once():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        assert (await client.request())[0] == 200
        daemon.request_stop()
        with trio.fail_after(3):
            assert await client.stream.receive_some(10) == b""


async def test_a_response_in_flight_when_draining_starts_says_connection_close():
    # The connection closes after it: a pooled client must not send the next request into it.
    arrived, release = trio.Event(), trio.Event()

    async def slow(seen: Seen, server: TargetServer) -> Reply | str:
        arrived.set()
        await release.wait()
        return Reply(200, body=b"late")

    async with (
        running_targets(TargetServer("a", slow)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(*front(daemon))
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await arrived.wait()
            daemon.request_stop()
            release.set()
            answer = b""
            while chunk := await stream.receive_some(4096):
                answer += chunk
            await stream.aclose()
        assert statuses(answer) == [200]
        assert b"connection: close\r\n" in answer.lower()


async def test_access_log_lines_follow_albs_field_order(tmp_path):
    path = tmp_path / "access.log"
    lst = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        await client.request(target="/logged?x=1", headers=[("user-agent", 'ev"il\\agent')])
        port = front(daemon)[1]
        await trio.sleep(1.3)  # the app flushes access logs once a second
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("http ")
    assert "app/front" in line
    assert f"127.0.0.1:{target.port}" in line
    assert " 200 200 " in line
    assert f'"GET http://127.0.0.1:{port}/logged?x=1 HTTP/1.1"' in line
    assert '"ev\\"il\\\\agent"' in line
    assert '"forward"' in line
    assert '"Root=1-' in line


def hang_up(stream: trio.SocketStream) -> None:
    """Leave for good: close with a reset (SO_LINGER 0). A plain close looks the same to
    the balancer as a half-close, after which a client still waits for its answer."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def test_a_client_that_leaves_before_its_response_is_logged_as_460():
    release = trio.Event()

    async def slow(seen: Seen, server: TargetServer) -> Reply | str:
        await release.wait()
        return Reply(200, body=b"late")

    async with (
        running_targets(TargetServer("a", slow)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.2)
        hang_up(stream)
        await trio.sleep(0.2)
        release.set()
        await trio.sleep(0.3)
        labels = {
            "listener": "front",
            "rule": "default",
            "target_group": "web",
            "code_class": "4xx",
            "source": "elb",
        }
        assert sample(daemon, "wharf_balancer_http_requests_total", labels) == 1


async def test_a_client_that_resets_while_its_target_is_silent_is_let_go_at_once():
    # It held its descriptor, its connection slot and a connection to the target until the
    # target answered: clients resetting in a loop filled the listener's connection limit
    # with nobody (600 of them after three rounds of 200 against a 15 s target).
    never = trio.Event()

    async def silent(seen: Seen, server: TargetServer) -> Reply | str:
        await never.wait()
        return Reply(200)

    async with (
        running_targets(TargetServer("a", silent)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        stream = await trio.open_tcp_stream(*front(daemon))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        active = {"listener": "front"}
        with trio.fail_after(10):
            while not target.seen:  # noqa: ASYNC110 - bounded poll of the target's log
                await trio.sleep(0.01)
        assert sample(daemon, "wharf_balancer_http_connections_active", active) == 1
        hang_up(stream)
        with trio.fail_after(5):  # the target still says nothing
            while sample(daemon, "wharf_balancer_http_connections_active", active):  # noqa: ASYNC110 - bounded poll of a gauge
                await trio.sleep(0.05)
        labels = {
            "listener": "front",
            "rule": "default",
            "target_group": "web",
            "code_class": "4xx",
            "source": "elb",
        }
        assert sample(daemon, "wharf_balancer_http_requests_total", labels) == 1  # a 460
        never.set()


@pytest.mark.parametrize("late", ["slow", "silent"])
@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    ],
    ids=["keep-alive", "connection-close", "http-1.0"],
)
async def test_a_client_that_half_closes_after_its_request_gets_its_answer(
    late, request_head, tmp_path
):
    """shutdown(SHUT_WR) after a whole request (``nc -N``, some scripted and HTTP/1.0
    clients) is no leaving: the client reads on. It used to count as gone once the target
    took over SLOW_RESPONSE_SECONDS (the response dropped, a 460), and its 504 was dropped
    the same way (found by a report-only hunt); over HTTPS it always got its answer. A
    request that ends its connection (``Connection: close``, HTTP/1.0) was still dropped
    that way until 3 Dec (the fuzz suite's health check, on a loaded CI machine)."""
    path = tmp_path / "access.log"
    never = trio.Event()

    async def slow(seen: Seen, server: TargetServer) -> Reply | str:
        if late == "silent":
            await never.wait()
        await trio.sleep(1)  # far past SLOW_RESPONSE_SECONDS
        return Reply(200, body=b"late")

    lst = listener(
        timeouts=ListenerTimeouts(target_response_seconds=1 if late == "silent" else 10),
        access_log=AccessLog(enabled=True, destination=str(path)),
    )
    async with (
        running_targets(TargetServer("a", slow)) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*front(daemon))
            async with stream:
                await stream.send_all(request_head)
                await stream.send_eof()
                answer = b""
                while chunk := await stream.receive_some(65536):  # then the balancer closes
                    answer += chunk
        never.set()
        await trio.sleep(1.3)  # the app flushes access logs once a second
    if late == "slow":
        assert statuses(answer) == [200]
        assert answer.endswith(b"\r\n\r\nlate")
    else:
        assert statuses(answer) == [504]
    (line,) = path.read_text().splitlines()
    assert shlex.split(line)[8] == ("200" if late == "slow" else "504")


async def test_a_client_gone_when_the_target_response_timeout_ends_is_a_460(tmp_path):
    # ALB's 460 is the client leaving first; a 504 written into a closed socket is not.
    path = tmp_path / "access.log"
    never = trio.Event()

    async def silent(seen: Seen, server: TargetServer) -> Reply | str:
        await never.wait()
        return Reply(200)

    lst = listener(
        timeouts=ListenerTimeouts(target_response_seconds=1),
        access_log=AccessLog(enabled=True, destination=str(path)),
    )
    async with (
        running_targets(TargetServer("a", silent)) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        for leave in (True, False):
            with trio.fail_after(5):
                stream = await trio.open_tcp_stream(*front(daemon))
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if leave:
                    await trio.sleep(0.2)
                    hang_up(stream)
                    await trio.sleep(1.2)  # past the target response timeout
                else:
                    assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 504 ")
                    await stream.aclose()
        await trio.sleep(1.3)  # the app flushes access logs once a second
        elb_5xx = {"listener": "front", "code": "504"}
        assert sample(daemon, "wharf_balancer_http_elb_5xx_responses_total", elb_5xx) == 1
        never.set()
    fields = [shlex.split(line) for line in path.read_text().splitlines()]
    assert [(f[8], f[24]) for f in fields] == [("460", "-"), ("504", "TargetResponseTimeout")]


async def test_response_processing_time_ends_when_the_response_starts(tmp_path):
    # ALB: "until it started to send the response to the client", not until its last byte.
    path = tmp_path / "access.log"
    lst = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    hold = trio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first;"
        await hold.wait()
        yield b"last"

    async def streamed(seen: Seen, server: TargetServer) -> Reply | str:
        return Reply(200, chunks=chunks())

    async with (
        running_targets(TargetServer("a", streamed)) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(*front(daemon))
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            received = b""
            while b"first;" not in received:
                received += await stream.receive_some(4096)
            await trio.sleep(1.0)  # the body's last chunk waits: download time, not ours
            hold.set()
            while chunk := await stream.receive_some(4096):
                received += chunk
            assert b"last" in received
            await stream.aclose()
    (line,) = path.read_text().splitlines()
    response_time = float(line.split(" ")[7])  # the third of the three processing times
    assert 0 <= response_time < 1.0


async def test_requests_the_balancer_answers_are_logged_with_a_trace_id(tmp_path):
    path = tmp_path / "access.log"
    rule = Rule(
        priority=1,
        conditions=Conditions(path_pattern=("/fixed",)),
        action=FixedResponse(status_code=200),
    )
    lst = listener(rules=[rule], access_log=AccessLog(enabled=True, destination=str(path)))
    root = "Root=1-67891233-abcdef012345678912345678"
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        answer = await raw(
            front(daemon),
            b"GET /fixed HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /fixed HTTP/1.1\r\nHost: x\r\nX-Amzn-Trace-Id: %s\r\n\r\n"
            # ALB: "If the HTTP header is greater than 7 KB, the load balancer rewrites the
            # X-Amzn-Trace-Id header with a Root field", for its own answers too.
            b"GET /fixed HTTP/1.1\r\nHost: x\r\nX-Amzn-Trace-Id: %s;Pad=%s\r\n"
            b"Connection: close\r\n\r\n" % (root.encode(), root.encode(), b"p" * 7 * 1024),
        )
        assert statuses(answer) == [200, 200, 200]
    own, kept, large = path.read_text().splitlines()
    assert re.search(r'"Root=1-[0-9a-f]{8}-[0-9a-f]{24}"', own)
    assert re.search(rf'"Self=1-[0-9a-f]{{8}}-[0-9a-f]{{24}};{root}"', kept)
    assert re.search(r'"Root=1-[0-9a-f]{8}-[0-9a-f]{24}"', large)
    assert root not in large


async def test_a_client_that_hangs_up_mid_request_is_a_460_not_a_desync(tmp_path):
    # An abandoned upload (or head) is a client leaving, as ALB logs it: no 400, no desync.
    path = tmp_path / "access.log"
    lst = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    abandoned = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 5000,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ",
    ]
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        for request in abandoned:
            with trio.fail_after(5):
                stream = await trio.open_tcp_stream(*front(daemon))
                await stream.send_all(request)
                await stream.send_eof()
                assert await stream.receive_some(100) == b""  # closed without an answer
                await stream.aclose()
        answer = await raw(front(daemon), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert statuses(answer) == [200]
        desync = daemon.metrics.registry.get_sample_value(
            "wharf_balancer_http_desync_requests_total",
            {"listener": "front", "classification": "Severe", "reason": "BadHeader",
             "refused": "true"},
        )  # fmt: skip
        assert not desync
    lines = path.read_text().splitlines()
    assert [line.split(" ")[8] for line in lines] == ["460", "460", "200"]


async def test_connections_past_the_limit_are_answered_503(tmp_path):
    path = tmp_path / "access.log"
    lst = listener(
        limits=ListenerLimits(connections=1),
        access_log=AccessLog(enabled=True, destination=str(path)),
    )
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as first,
    ):
        assert (await first.request())[0] == 200
        answer = await raw(front(daemon), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(answer) == [503]
        assert (
            sample(daemon, "wharf_balancer_http_rejected_connections_total", {"listener": "front"})
            == 1
        )
        # Every TCP connection is a new one, as ALB's NewConnectionCount (and as an https
        # listener counts it, from its TCP accept), the refused one too.
        assert (
            sample(daemon, "wharf_balancer_http_connections_new_total", {"listener": "front"}) == 2
        )
        # The balancer's own 503, counted as the README says of HTTPCode_ELB_5XX.
        code = {"listener": "front", "code": "503"}
        assert sample(daemon, "wharf_balancer_http_elb_5xx_responses_total", code) == 1
        await trio.sleep(1.3)  # the app flushes access logs once a second
        # ... and so its bytes are processed bytes, and it has an access-log line saying why.
        rows = [athena_row(line) for line in path.read_text().splitlines()]
        assert [row["elb_status_code"] for row in rows] == ["200", "503"]
        assert processed_bytes(daemon, "out") == sum(int(row["sent_bytes"] or 0) for row in rows)
    refused = rows[1]
    assert (refused["request_verb"], refused["request_proto"]) == ("-", "-")
    assert (refused["sent_bytes"], refused["lambda_error_reason"]) == (
        str(len(answer)),
        "TooManyConnections",
    )


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_head_requests_get_headers_only(method):
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        status, _headers, body = await client.request(method)
        assert status == 200
        assert (body == b"") == (method == "HEAD")
        assert (await client.request())[0] == 200


async def test_a_forward_to_another_group_by_rule():
    rules = [
        Rule(
            priority=1,
            conditions=Conditions(path_pattern=("/api/*",)),
            action=Forward(target_group="api"),
        )
    ]
    async with running_targets(TargetServer("web"), TargetServer("api")) as (web, api):
        cfg = config([listener(rules=rules)], [group("web", web), group("api", api)])
        async with balancer(cfg) as daemon, Client.connect(front(daemon)) as client:
            assert (await client.request(target="/api/x"))[1]["x-target"] == "api"
            assert (await client.request(target="/other"))[1]["x-target"] == "web"


async def test_a_request_in_flight_when_draining_starts_finishes_then_the_connection_closes():
    release = trio.Event()

    async def slow(seen: Seen, server: TargetServer) -> Reply | str:
        await release.wait()
        return Reply(200, body=b"done")

    async with (
        running_targets(TargetServer("a", slow)) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        async with trio.open_nursery() as nursery:
            result: list[tuple[int, dict[str, str], bytes]] = []

            async def ask() -> None:
                result.append(await client.request())

            nursery.start_soon(ask)
            await trio.sleep(0.2)
            daemon.request_stop()
            await trio.sleep(0.2)
            release.set()
        assert result[0][0] == 200
        assert result[0][2] == b"done"
        with trio.fail_after(3):
            assert await client.stream.receive_some(10) == b""


def https_front(tmp_path, *, handshake_seconds: float = 10.0) -> HttpsListener:
    """An https listener "front" answering 200 itself, with a throwaway certificate."""
    return HttpsListener(
        name="front",
        host="127.0.0.1",
        port=0,
        default_action=FixedResponse(status_code=200),
        certificates=(write_pair(trustme.CA(), tmp_path, "shop", "shop.example.com"),),
        timeouts=ListenerTimeouts(tls_handshake_seconds=handshake_seconds),
    )


async def test_draining_closes_tls_connections_still_waiting_for_their_hello(tmp_path):
    lst = https_front(tmp_path, handshake_seconds=60)
    async with balancer(config([lst], [])) as daemon:
        silent = [await trio.open_tcp_stream(*front(daemon)) for _ in range(3)]
        await trio.sleep(0.1)  # accepted, each waiting for a ClientHello
        daemon.request_stop()
        with trio.fail_after(5):  # not the 60 s handshake timeout
            for stream in silent:
                assert await stream.receive_some(10) == b""
                await stream.aclose()


def client_hello() -> bytes:
    """A real ClientHello, from an in-memory client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="x.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


async def test_the_handshake_timeout_runs_from_the_accept_not_from_the_first_byte(tmp_path):
    """README: ``timeouts.tls_handshake_seconds`` bounds each handshake. The wait for the
    first byte and the handshake each had the whole timeout, so a client that idled until just
    before it, then sent half a ClientHello, was kept for twice the timeout."""
    async with balancer(config([https_front(tmp_path, handshake_seconds=3)], [])) as daemon:
        stream = await trio.open_tcp_stream(*front(daemon))
        async with stream:
            await trio.sleep(2.5)  # idle, under the timeout
            hello = client_hello()
            with contextlib.suppress(trio.BrokenResourceError):  # closed already: late here
                await stream.send_all(hello[: len(hello) // 2])
            # Closed 0.5 s after the half hello; a fresh timeout would take 3 s more.
            with trio.fail_after(2):
                try:
                    assert await stream.receive_some(10) == b""
                except trio.BrokenResourceError:
                    pass  # a reset: closed with the half hello unread
        labels = {"listener": "front", "reason": "timeout"}
        assert sample(daemon, "wharf_balancer_tls_negotiation_errors_total", labels) == 1


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),  # an HTTP/2 preface on a cleartext port
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # the asterisk form is OPTIONS's alone
        # RFC 9112 3.2: a Host that is no authority (it would land in a redirect's Location).
        (b"GET / HTTP/1.1\r\nHost: evil.test/x?\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),  # ALB does not support TRACE
    ],
)
async def test_requests_that_are_not_http_1_are_refused_not_forwarded(payload, status):
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(front(daemon), payload)
        assert statuses(answer) == [status]
        assert target.accepts == 0


async def test_http_1_2_is_served_as_1_1_and_options_star_is_forwarded():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(
            front(daemon),
            b"GET / HTTP/1.2\r\nHost: x\r\n\r\n"
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert statuses(answer) == [200, 200]


async def test_empty_lines_before_a_request_line_are_ignored():
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line,
    at the start of a connection and after a request (some clients add CRLF after a body)."""
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        payload = (
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok\r\n"
            b"\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert statuses(await raw(front(daemon), payload)) == [200, 200, 200]
        async with Client.connect(front(daemon)) as client:
            await client.stream.send_all(b"\r\n")
            await trio.sleep(0.05)  # the empty line arrives alone
            assert (await client.request())[0] == 200
            await client.stream.send_all(b"\r\n")
            await trio.sleep(0.05)
            assert (await client.request())[0] == 200


async def test_series_known_at_start_exist_at_zero():
    """Prometheus: export 0 for the series you know of (an increase() sees the first one)."""
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        # get_sample_value, not sample(): a missing series must fail, not read as 0.
        get = daemon.metrics.registry.get_sample_value
        assert get("wharf_balancer_target_connection_errors_total", {"target_group": "web"}) == 0
        assert get("wharf_handler_errors_total", {"listener": "front"}) == 0
        codes = {"listener": "front", "code": "502"}
        assert get("wharf_balancer_http_elb_5xx_responses_total", codes) == 0


async def test_every_configured_route_has_its_request_series_from_zero():
    """ALB's HTTPCode_Target_5XX_Count per target group, as an alert reads it: increase() over
    the series of a route sees its first 5xx only if the series existed, at 0, before it. The
    request series of a route appeared with its first request, so the first 5xx of a group
    (or of a fixed response) after a start or a reload never raised the alert."""
    rules = [
        Rule(
            priority=5,
            conditions=Conditions(path_pattern=("/canary/*",)),
            action=Forward(
                target_groups=(
                    WeightedTargetGroup(name="web"),
                    WeightedTargetGroup(name="canary", weight=0),
                )
            ),
        ),
        Rule(
            priority=7,
            conditions=Conditions(path_pattern=("/old/*",)),
            action=Redirect(path="/new/#{path}", status_code="HTTP_301"),
        ),
        Rule(
            priority=9,
            conditions=Conditions(path_pattern=("/down",)),
            action=FixedResponse(status_code=503),
        ),
    ]
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(
            config([listener(rules=rules)], [group("web", target), group("canary", target)])
        ) as daemon,
    ):
        get = daemon.metrics.registry.get_sample_value
        name = "wharf_balancer_http_requests_total"

        def requests(rule: str, group_name: str, code_class: str, source: str) -> float | None:
            labels = {"listener": "front", "rule": rule, "target_group": group_name}
            return get(name, {**labels, "code_class": code_class, "source": source})

        for rule, group_name in (("default", "web"), ("5", "web"), ("5", "canary")):
            for code_class in ("1xx", "2xx", "3xx", "4xx", "5xx"):
                assert requests(rule, group_name, code_class, "target") == 0
            for code_class in ("4xx", "5xx"):
                assert requests(rule, group_name, code_class, "elb") == 0
            timing = {"listener": "front", "target_group": group_name}
            assert get("wharf_balancer_target_response_seconds_count", timing) == 0
        assert requests("7", "-", "3xx", "elb") == 0
        assert requests("9", "-", "5xx", "elb") == 0
        assert requests("-", "-", "4xx", "elb") == 0  # refused before any rule
        assert requests("7", "-", "3xx", "target") is None  # no target answers a redirect
        statuses_seen = [
            (await request(front(daemon), target=path))[0] for path in ("/old/x", "/down")
        ]
        assert statuses_seen == [301, 503]
        assert requests("7", "-", "3xx", "elb") == 1
        assert requests("9", "-", "5xx", "elb") == 1


async def test_connections_to_targets_are_counted_as_albs_connection_metrics_count_them():
    """ALB's NewConnectionCount and ActiveConnectionCount count its connections to targets
    too: a target group's new connections (one, reused by keep-alive) and those open now (the
    pooled idle one) are series of their own, from 0."""
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        get = daemon.metrics.registry.get_sample_value
        labels = {"target_group": "web"}
        assert get("wharf_balancer_target_connections_new_total", labels) == 0
        assert get("wharf_balancer_target_connections_active", labels) == 0
        for _ in range(3):
            assert (await request(front(daemon), target="/"))[0] == 200
        assert get("wharf_balancer_target_connections_new_total", labels) == 1
        assert get("wharf_balancer_target_connections_active", labels) == 1  # idle, pooled


async def test_tls_connections_count_from_their_tcp_accept(tmp_path):
    """ALB's ActiveConnectionCount and NewConnectionCount count TCP connections: a client in
    its handshake (or one that never completes it) is one."""
    lst = https_front(tmp_path)
    async with balancer(config([lst], [])) as daemon:
        silent = [await trio.open_tcp_stream(*front(daemon)) for _ in range(2)]
        labels = {"listener": "front"}
        with trio.fail_after(5):
            while sample(daemon, "wharf_balancer_http_connections_active", labels) != 2:  # noqa: ASYNC110 (a gauge: no event to wait on)
                await trio.sleep(0.01)
        assert sample(daemon, "wharf_balancer_http_connections_new_total", labels) == 2
        for stream in silent:
            await stream.aclose()
        with trio.fail_after(5):
            while sample(daemon, "wharf_balancer_http_connections_active", labels) != 0:  # noqa: ASYNC110 (a gauge: no event to wait on)
                await trio.sleep(0.01)


async def test_the_admin_listener_answers_503_on_readyz_while_the_others_drain():
    """The README: /readyz is 503 from the moment the daemon starts draining. The admin
    listener used to stop with the others, so a load balancer in front saw refusals."""
    lst = listener(FixedResponse(status_code=200))
    async with balancer(config([lst], [])) as daemon:
        busy = await trio.open_tcp_stream(*front(daemon))
        async with busy:
            await busy.send_all(b"GET / HTTP/1.1\r\n")  # under way: the drain waits for it
            await trio.sleep(0.1)
            daemon.request_stop()
            await trio.sleep(0.1)
            admin = address(daemon, "admin")
            assert (await request(admin, target="/readyz"))[0] == 503
            assert (await request(admin, target="/healthz"))[0] == 200
            status, _, metrics = await request(admin, target="/metrics")
            assert status == 200
            assert b"wharf_balancer_http_connections_active" in metrics


@pytest.mark.parametrize("how", ["sigterm", "listener-removed"])
async def test_a_request_cut_when_the_grace_period_ends_is_answered_logged_and_counted(
    tmp_path, how
):
    """The frame cancels what is left when a drain's grace period ends (SIGTERM, or the
    listener removed by a reload): that request left no access log line and no metric."""
    arrived, release = trio.Event(), trio.Event()

    async def stuck(seen: Seen, server: TargetServer) -> Reply | str:
        arrived.set()
        await release.wait()
        return Reply(200, body=b"too late")

    path = tmp_path / "access.log"
    logged = AccessLog(enabled=True, destination=str(path))
    labels = {
        "listener": "front",
        "rule": "default",
        "target_group": "web",
        "code_class": "5xx",
        "source": "elb",
    }
    async with running_targets(TargetServer("a", stuck)) as (target,):
        groups = [group("web", target)]
        async with balancer(config([listener(access_log=logged)], groups, grace=0.3)) as daemon:
            with trio.fail_after(10):
                stream = await trio.open_tcp_stream(*front(daemon))
                await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                await arrived.wait()
                if how == "sigterm":
                    daemon.request_stop()
                else:
                    other = listener(name="other", access_log=logged)
                    await daemon.app.reload(config([other], groups, grace=0.3))
                answer = b""
                while chunk := await stream.receive_some(4096):
                    answer += chunk
                await stream.aclose()
            assert statuses(answer) == [502]
            assert b"connection: close\r\n" in answer.lower()
            if how == "listener-removed":  # the other listeners serve on
                # Read in one scrape: the next one may drop the series of a listener gone.
                samples = {
                    (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                    for family in daemon.metrics.registry.collect()
                    for sample in family.samples
                }
                counted = samples[
                    ("wharf_balancer_http_requests_total", tuple(sorted(labels.items())))
                ]
                elb_5xx = samples[
                    (
                        "wharf_balancer_http_elb_5xx_responses_total",
                        (("code", "502"), ("listener", "front")),
                    )
                ]
                assert (counted, elb_5xx) == (1, 1)
        release.set()
    if how == "sigterm":
        assert sample(daemon, "wharf_balancer_http_requests_total", labels) == 1
        elb_5xx_labels = {"listener": "front", "code": "502"}
        assert sample(daemon, "wharf_balancer_http_elb_5xx_responses_total", elb_5xx_labels) == 1
    (line,) = path.read_text().splitlines()
    fields = shlex.split(line)
    assert fields[2] == "app/front"
    assert fields[4] == f"127.0.0.1:{target.port}"
    assert fields[8:10] == ["502", "-"]  # the balancer's 502; the target never answered
    assert re.fullmatch(r"GET http://x:\d+/slow HTTP/1\.1", fields[12])
    assert fields[24] == "Draining"


@pytest.mark.parametrize(
    ("host", "target", "url"),
    [
        (b"example.com:", b"/x", "http://example.com:8080/x"),
        (b"[::1]:", b"/x", "http://[::1]:8080/x"),
        (b"example.com:81", b"/x", "http://example.com:8080/x"),
        (None, b"http://example.com:/y", "http://example.com:8080/y"),
        (None, b"http://[::1]/y", "http://[::1]:8080/y"),
    ],
)
def test_the_logged_url_has_one_port_even_for_an_empty_one(host, target, url):
    assert http_listener.request_url("http", host, target, 8080) == url


def processed_bytes(daemon, direction: str) -> float:
    labels = {"listener": "front", "direction": direction}
    return sample(daemon, "wharf_balancer_http_processed_bytes_total", labels)


UNPARSABLE = [
    b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
    b"GET /x HTTP/1.1\r\nAccept: */*\r\n\r\n",  # HTTP/1.1 without a Host
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
]


async def test_a_request_h11_cannot_parse_is_logged_as_alb_does_with_its_bytes(tmp_path):
    # ALB logs a request it could not parse with its own URL between a method and a version
    # of "-" (seen in ALB's logs: "- http://<its name>:80- -"), so Athena's table still reads
    # the line; its bytes count in the log and in ProcessedBytes as any other request's.
    path = tmp_path / "access.log"
    lst = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        port = front(daemon)[1]
        before = processed_bytes(daemon, "in"), processed_bytes(daemon, "out")
        answers = [await raw(front(daemon), payload) for payload in UNPARSABLE]
        assert [statuses(answer) for answer in answers] == [[400]] * 3
        after = processed_bytes(daemon, "in"), processed_bytes(daemon, "out")
        assert after[0] - before[0] == sum(len(payload) for payload in UNPARSABLE)
        assert after[1] - before[1] == sum(len(answer) for answer in answers)
        assert target.seen == []
        await trio.sleep(1.3)  # the app flushes access logs once a second
    rows = [athena_row(line) for line in path.read_text().splitlines()]
    assert [(row["request_verb"], row["request_url"], row["request_proto"]) for row in rows] == [
        ("-", f"http://127.0.0.1:{port}-", "-")
    ] * 3
    assert [(row["received_bytes"], row["sent_bytes"]) for row in rows] == [
        (str(len(payload)), str(len(answer)))
        for payload, answer in zip(UNPARSABLE, answers, strict=True)
    ]
    assert {(row["elb_status_code"], row["classification"]) for row in rows} == {("400", "Severe")}
    assert all(TID.fullmatch(row["conn_trace_id"] or "") for row in rows)
    assert all(row["rest"] is None for row in rows)


ELB_4XX = {
    "listener": "front",
    "rule": "-",
    "target_group": "-",
    "code_class": "4xx",
    "source": "elb",
}


async def test_a_head_that_stalls_is_counted_and_logged_with_its_408(tmp_path):
    # ALB's HTTPCode_ELB_4XX_Count counts requests that are "malformed or incomplete": the
    # 408 for a head that never completed was sent, but counted nowhere and never logged,
    # unlike the 408 for a stalled body.
    path = tmp_path / "access.log"
    timeouts = ListenerTimeouts(request_header_seconds=0.3)
    lst = listener(timeouts=timeouts, access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        port = front(daemon)[1]
        payload = b"GET / HTTP/1.1\r\nHost: a\r\n"
        answer = await raw(front(daemon), payload)
        assert statuses(answer) == [408]
        assert sample(daemon, "wharf_balancer_http_requests_total", ELB_4XX) == 1
        assert processed_bytes(daemon, "in") == len(payload)
        assert processed_bytes(daemon, "out") == len(answer)
        await trio.sleep(1.3)  # the app flushes access logs once a second
    (row,) = [athena_row(line) for line in path.read_text().splitlines()]
    assert (row["request_verb"], row["request_url"], row["request_proto"]) == (
        "-",
        f"http://127.0.0.1:{port}-",
        "-",
    )
    assert (row["elb_status_code"], row["received_bytes"], row["sent_bytes"]) == (
        "408",
        str(len(payload)),
        str(len(answer)),
    )
    assert (row["lambda_error_reason"], row["classification"]) == ("RequestHeaderTimeout", "-")
    assert TID.fullmatch(row["conn_trace_id"] or "")
    assert target.seen == []


async def test_a_request_refused_as_malformed_over_tls_is_logged_with_its_tls_fields(tmp_path):
    """ALB's ssl_cipher, ssl_protocol and chosen_cert_arn are set on every line of an HTTPS
    listener, domain_name whenever a certificate carries the SNI name; a request the
    listener could not parse logged them as "-" (as on a plain listener) although its
    handshake had finished."""
    path = tmp_path / "access.log"
    ca = trustme.CA()
    lst = HttpsListener(
        name="front",
        host="127.0.0.1",
        port=0,
        default_action=FixedResponse(status_code=200),
        certificates=(write_pair(ca, tmp_path, "shop", "shop.example.com"),),
        access_log=AccessLog(enabled=True, destination=str(path)),
    )
    async with balancer(config([lst], [])) as daemon:
        with trio.fail_after(10):
            tcp = await trio.open_tcp_stream(*front(daemon))
            stream = trio.SSLStream(tcp, client_context(ca), server_hostname="shop.example.com")
            await stream.do_handshake()
            version, cipher = stream.version(), stream.cipher()
            await stream.send_all(b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
            answer = b""
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(4096):
                    answer += chunk
            await tcp.aclose()
        assert statuses(answer) == [400]
        await trio.sleep(1.3)  # the app flushes access logs once a second
    (row,) = [athena_row(line) for line in path.read_text().splitlines()]
    assert (row["type"], row["elb_status_code"], row["classification"]) == (
        "https",
        "400",
        "Severe",
    )
    assert cipher is not None
    assert (row["ssl_cipher"], row["ssl_protocol"]) == (cipher[0], version)
    assert row["domain_name"] == "shop.example.com"
    assert row["chosen_cert_arn"] == str(tmp_path / "shop.pem")


async def test_every_request_of_a_connection_is_logged_with_its_connections_trace_id(
    tmp_path,
):
    # ALB's conn_trace_id: one opaque TID per client connection, on each request it carried.
    path = tmp_path / "access.log"
    rule = Rule(
        priority=1,
        conditions=Conditions(path_pattern=("/fixed",)),
        action=FixedResponse(status_code=200),
    )
    lst = listener(rules=[rule], access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([lst], [group("web", target)])) as daemon,
    ):
        port = front(daemon)[1]
        answer = await raw(
            front(daemon),
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /fixed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert statuses(answer) == [200, 200]
        answer = await raw(
            front(daemon), b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert statuses(answer) == [200]
        await trio.sleep(1.3)  # the app flushes access logs once a second
    rows = [athena_row(line) for line in path.read_text().splitlines()]
    assert [row["request_url"] for row in rows] == [
        f"http://x:{port}/a",
        f"http://x:{port}/fixed",
        f"http://x:{port}/b",
    ]
    tids = [row["conn_trace_id"] or "" for row in rows]
    assert all(TID.fullmatch(tid) for tid in tids)
    assert tids[0] == tids[1] != tids[2]
    assert all(row["rest"] is None for row in rows)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/fixed", "/moved"])
async def test_an_own_answer_to_an_upload_it_will_not_read_says_close_and_lingers(
    path: str, framing: str
) -> None:
    """The balancer drops at most MAX_DISCARD_BYTES of a body it answered without. Past
    that it closes, and RFC 9110 10.1.1 says an early answer SHOULD say so; closing with
    unread bytes resets the connection, and a client still uploading may lose the answer
    (RFC 9112 9.6). Its redirects and fixed responses used to do both (found by a
    report-only hunt); now they say Connection: close and close lingering, as the forward
    path does after a target's early answer."""
    rules = [
        Rule(
            priority=1,
            conditions=Conditions(path_pattern=("/moved",)),
            action=Redirect(protocol="HTTPS", port="443", status_code="HTTP_302"),
        )
    ]
    lst = listener(FixedResponse(status_code=404, message_body="nope"), rules=rules)
    size = 5 * http_listener.MAX_DISCARD_BYTES
    if framing == "chunked":
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        piece = b"10000\r\n" + b"u" * 0x10000 + b"\r\n"
        body = piece * (size // 0x10000) + b"0\r\n\r\n"
    else:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
        body = b"u" * size
    sent = trio.Event()

    async with balancer(config([lst], [])) as daemon:
        stream = await trio.open_tcp_stream(*front(daemon))

        async def upload() -> None:
            await stream.send_all(head.encode() + body)  # a reset would raise here
            sent.set()

        with trio.fail_after(20):
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(upload)
                answer = b""
                while chunk := await stream.receive_some(65536):  # the balancer closes
                    answer += chunk
                await sent.wait()
    assert statuses(answer) == [404 if path == "/fixed" else 302]
    assert b"\r\nconnection: close\r\n" in answer.lower()
    if path == "/fixed":
        assert answer.endswith(b"\r\n\r\nnope")


async def test_a_connection_past_the_client_keepalive_duration_closes_after_one_more_answer():
    """ALB's HTTP client keepalive duration: once a client connection is that old, the next
    request is still answered, with Connection: close, and the connection then closes.
    (1 second here; the configuration file takes 60 and up.)"""
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(client_keep_alive_seconds=1)], [group("web", target)])) as daemon,
        Client.connect(front(daemon)) as client,
    ):
        opened = trio.current_time()
        status, headers, _ = await client.request(target="/young")
        assert status == 200
        assert "connection" not in headers
        await trio.sleep_until(opened + 1.1)
        status, headers, _ = await client.request(target="/old")
        assert status == 200
        assert headers["connection"] == "close"
        with trio.fail_after(5):
            assert await client.stream.receive_some(1) == b""  # closed, nothing more
    assert [seen.target for seen in target.seen] == ["/young", "/old"]
