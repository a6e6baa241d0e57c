"""Request targets on real sockets: one in none of RFC 9112 3.2's four forms, or a CONNECT to
anything but ``host:port``, is refused with 400 before anything is forwarded, and counted and
logged as a BadUri desync (HAProxy answers 400 to each of them).

Forwarded, ``CONNECT /x`` opened a raw tunnel when the target answered 2xx, and whatever the
client sent after it on that connection skipped the rules, X-Forwarded-For cleaning and the
access log; ``GET x:/admin/secret`` reached the target with a path no rule had seen."""

from __future__ import annotations

import shlex

import pytest
import trio

from balancer.config import AccessLog, Conditions, FixedResponse, Rule
from proto.http1 import verdict
from tests.balancer.listeners.test_http import desync_log_reasons
from tests.support.balancer_http import balancer, config, front, group, listener, raw, sample
from tests.support.targets import TargetServer, running_targets

# After the refused request, on the same connection: what a tunnel would have carried past
# the rules (a forged X-Forwarded-For and trace id included).
SMUGGLED = (
    b"GET /admin/secret HTTP/1.1\r\nHost: admin.example.com\r\nX-Forwarded-For: 10.9.9.9\r\n"
    b"X-Amzn-Trace-Id: Root=forged\r\n\r\n"
)

OUT_OF_FORM = {
    "CONNECT to a path": b"CONNECT /x HTTP/1.1",
    "CONNECT to a URI": b"CONNECT http://public.example.com/ HTTP/1.1",
    "CONNECT without a port": b"CONNECT public.example.com HTTP/1.1",
    "CONNECT to port 0": b"CONNECT public.example.com:0 HTTP/1.1",
    "CONNECT over HTTP/1.0": b"CONNECT /x HTTP/1.0",
    "scheme without authority": b"GET http:/admin/secret HTTP/1.1",
    "unknown scheme": b"GET x:/admin/secret HTTP/1.1",
    "relative reference": b"GET a:b/../admin/secret HTTP/1.1",
    "authority-form on a GET": b"GET example.com:443 HTTP/1.1",
    "asterisk-form on a GET": b"GET * HTTP/1.1",
    "absolute-form of another scheme": b"GET ftp://public.example.com/x HTTP/1.1",
    # The rules skip a fragment; a target that does not (Go's FileServer cleans this one to
    # /admin/secret) would serve what no rule saw.
    "fragment hiding a path": b"GET /x#/../admin/secret HTTP/1.1",
    # Read up to '/' as the authority, this one's Host was admin.example.com.
    "fragment in an absolute-form authority": (
        b"GET http://public.example.com#@admin.example.com/admin/x HTTP/1.1"
    ),
}


def bad_uris(daemon) -> float:
    labels = {
        "listener": "front",
        "classification": verdict("BadUri").classification.label,
        "reason": "BadUri",
        "refused": "true",
    }
    return sample(daemon, "wharf_balancer_http_desync_requests_total", labels)


@pytest.mark.parametrize("name", sorted(OUT_OF_FORM))
async def test_a_target_out_of_its_methods_forms_is_refused_before_anything_is_forwarded(name):
    # A rule on the path the target hides: the request must not get past it by its form.
    rule = Rule(
        priority=1,
        conditions=Conditions(path_pattern=("/admin/*",)),
        action=FixedResponse(status_code=403),
    )
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener(rules=[rule])], [group("web", target)])) as daemon,
    ):
        request = OUT_OF_FORM[name] + b"\r\nHost: public.example.com\r\n\r\n"
        answer = await raw(front(daemon), request + SMUGGLED, limit=5)  # then it closes
        head = answer.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 400 "), answer[:200]
        assert b"connection: close" in head
        assert answer.count(b"HTTP/1.1 ") == 1  # nothing answered after the refusal
        assert target.accepts == 0  # not the request, nor anything after it
        assert bad_uris(daemon) == 1
        assert desync_log_reasons(daemon) == [("Severe", "BadUri")]


async def test_the_access_log_names_the_refusal_a_bad_uri_desync(tmp_path):
    path = tmp_path / "access.log"
    logged = listener(access_log=AccessLog(enabled=True, destination=str(path)))
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([logged], [group("web", target)])) as daemon,
    ):
        answer = await raw(front(daemon), b"CONNECT /x HTTP/1.1\r\nHost: a.example\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        await trio.sleep(1.3)  # the app flushes access logs once a second
    (line,) = path.read_text().splitlines()
    fields = shlex.split(line)
    assert fields[8] == "400"  # elb_status_code
    assert fields[12].startswith("CONNECT http://a.example:")  # request, as ALB writes it
    assert fields[20] == "-"  # matched_rule_priority: refused before the rules ran
    assert fields[24] == "DesyncRefused"  # error_reason
    assert fields[27:29] == ["Severe", "BadUri"]  # classification, classification_reason


async def test_targets_in_their_methods_forms_are_still_forwarded():
    async with (
        running_targets(TargetServer("a")) as (target,),
        balancer(config([listener()], [group("web", target)])) as daemon,
    ):
        answer = await raw(
            front(daemon),
            b"GET //double/slash?x=a:b HTTP/1.1\r\nHost: a.example\r\n\r\n"
            b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n"
            b"GET https://a.example:8443/p HTTP/1.1\r\nHost: other\r\n\r\n"
            b"connect /lower-case HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        )
        assert answer.count(b"HTTP/1.1 200 ") == 4
        assert [(s.method, s.target) for s in target.seen] == [
            ("GET", "//double/slash?x=a:b"),
            ("OPTIONS", "*"),
            ("GET", "/p"),
            ("connect", "/lower-case"),  # methods are case-sensitive: not CONNECT
        ]
        assert bad_uris(daemon) == 0
