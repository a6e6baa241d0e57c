"""HttpClient against a hostile subscriber endpoint that answers with hypothesis-made bytes.

Each example POSTs to a raw TCP endpoint on 127.0.0.1 (the balancer target fuzz's
:class:`~tests.support.target_fuzz.HostileTarget`) that answers with a drawn script
(tests/support/target_fuzz_cases.py): a valid response of any framing, or one mutated in its
status line, header fields, framing or body; 1xx responses before it; bytes nobody asked for
after it; cut short and closed or reset at any byte, trickled within or past the client's
response timeout, or sent before the request body was read. Sometimes a plain delivery goes
first, so that the hostile answer arrives on a reused keep-alive connection.

Per delivery: ``post`` returns within the response timeout (plus a margin) and never raises;
its outcome carries a status only when the endpoint sent that status in a valid head, and
then only once the response was complete (or its body past the documented read limit); a
valid, complete response in time gets its status. A plain delivery right after gets exactly
its own status (200 or 500), reused connection or not: never bytes left from the hostile
exchange. At ``aclose`` every connection the client kept is closed.
"""

from __future__ import annotations

import os
import time

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from broker.http_client import MAX_RESPONSE_BODY, HttpClient, Outcome
from tests.support.target_fuzz import (
    TAG,
    Case,
    ClientRequest,
    HostileTarget,
    Script,
    good_script,
    new_tag,
)
from tests.support.target_fuzz_cases import script_of, scripts

pytestmark = pytest.mark.slow

RESPONSE_TIMEOUT = 0.5  # below the scripts' HEAD_STALL (0.85 s) and BODY_STALL (1.4 s)
CONNECT_TIMEOUT = 1.0
MARGIN = 0.4  # scheduling, closing: post's own work on top of the response timeout
H11_HEAD_LIMIT = 16 * 1024  # h11's max_incomplete_event_size: a longer head is refused
HEADERS = [("x-amz-sns-message-type", "Notification")]
BODIES = [b"", b"hello", b"x" * 5000, b"u" * 300_000]


def _plain(status: int) -> Script:
    """A valid keep-alive response with ``status``, the tag in header and body."""
    if status == 200:
        return good_script()
    content = b"bad:" + TAG
    head = b"HTTP/1.1 %d Oops\r\nX-Tf-Id: %s\r\nContent-Length: %d\r\n\r\n" % (
        status,
        TAG,
        len(content),
    )
    return script_of(head + content)


class Endpoint(HostileTarget):
    """The hostile target, counting its connections still open."""

    def __init__(self) -> None:
        super().__init__()
        self.open = 0
        self.none_open = trio.Event()

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.open += 1
        if self.none_open.is_set():
            self.none_open = trio.Event()
        try:
            await super()._connection(stream)
        finally:
            self.open -= 1
            if not self.open:
                self.none_open.set()

    def url(self, tag: bytes) -> str:
        return f"http://127.0.0.1:{self.port}/tf/{tag.decode()}"


def _waited(script: Script, upto: int) -> float:
    """Seconds the endpoint pauses before it has sent the bytes [0, upto)."""
    sent = script.sent_end()
    return sum(s for o, s in script.pauses if o < upto and o <= sent)


def _stalled(script: Script, upto: int) -> bool:
    return _waited(script, upto) >= RESPONSE_TIMEOUT


def _problems(script: Script, body: bytes, outcome: Outcome, elapsed: float) -> list[str]:
    """What is wrong with ``outcome`` as HttpClient's answer to ``script``."""
    problems = []
    # A head over the balancer's limit is refused there (the script's "head-invalid"), but
    # the client has none of its own: h11 refuses only a head still incomplete past 16 KiB.
    validity = "lenient" if script.big_head else script.validity
    if elapsed > RESPONSE_TIMEOUT + MARGIN:
        problems.append(f"post took {elapsed:.2f} s")
    sent = script.sent_end()
    head_end = script.head_end
    reached = head_end is not None and sent >= head_end
    early = not script.read_body and bool(body)
    # A reset, or a close with the request body unread (the kernel turns it into a reset):
    # the client may lose any bytes the endpoint sent.
    lossy = script.end == "reset" or (script.end == "close" and early)
    if script.message_end is None:  # delimited by the close: complete when it comes
        complete = reached and script.end in ("close", "linger", "reset")
        decided = sent
    else:
        complete = sent >= script.message_end and validity in ("valid", "lenient")
        decided = script.message_end
    complete = complete and not _stalled(script, decided + 1)
    # Past MAX_RESPONSE_BODY body bytes the client stops reading, the status known.
    big_at = (head_end or 0) + MAX_RESPONSE_BODY
    big = reached and sent > big_at and not _stalled(script, big_at)
    if outcome.status is not None:
        if outcome.error is not None:
            problems.append("an outcome with both a status and an error")
        if not reached or validity == "head-invalid":
            problems.append(f"status {outcome.status} from a head that is not valid")
        elif outcome.status != script.status:
            problems.append(f"status {outcome.status}, the endpoint sent {script.status}")
        if not (complete or big):
            problems.append(f"status {outcome.status} from an incomplete response")
    else:
        if outcome.error not in ("timeout", "reset", "protocol"):
            problems.append(f"error {outcome.error!r} from an endpoint that accepted")
        must = (
            complete
            and script.validity == "valid"
            and not lossy
            and head_end is not None
            and _final_head_size(script) <= H11_HEAD_LIMIT
        )
        if must:
            problems.append(f"no status from a valid, complete response: {outcome}")
    return problems


def _final_head_size(script: Script) -> int:
    """The size of the final head (after any 1xx responses)."""
    assert script.head_end is not None
    interims = script.data[: script.head_end]
    start = 0
    for _ in script.interims:
        start = interims.index(b"\r\n\r\n", start) + 4
    return script.head_end - start


async def _deliver(
    http: HttpClient, endpoint: Endpoint, tag: bytes, body: bytes
) -> tuple[Outcome, float]:
    start = time.monotonic()
    with trio.fail_after(RESPONSE_TIMEOUT + CONNECT_TIMEOUT + 5):  # a hang fails the example
        outcome = await http.post(endpoint.url(tag), HEADERS, body)
    return outcome, time.monotonic() - start


async def run_case(script: Script, body: bytes, warm: bool, after_status: int) -> list[str]:
    """Play the example; what went wrong (nothing: an empty list)."""
    problems: list[str] = []
    async with trio.open_nursery() as nursery:
        endpoint: Endpoint = await nursery.start(Endpoint().serve)
        http = HttpClient(connect_timeout=CONNECT_TIMEOUT, response_timeout=RESPONSE_TIMEOUT)
        try:
            if warm:  # the hostile answer then comes on a reused connection
                warm_tag = new_tag()
                outcome, _ = await _deliver(http, endpoint, warm_tag, b"warm")
                if outcome != Outcome(200):
                    problems.append(f"the warm-up delivery got {outcome}")
            tag, after = new_tag(), new_tag()
            endpoint.scripts[tag.decode()] = script
            endpoint.scripts[after.decode()] = _plain(after_status)
            outcome, elapsed = await _deliver(http, endpoint, tag, body)
            note(f"hostile delivery: {outcome} in {elapsed:.2f} s")
            problems += _problems(script, body, outcome, elapsed)
            event(f"{script.validity}: {outcome.status or outcome.error}")
            # Let the endpoint finish its script first. Otherwise one that closes right after
            # a keep-alive response would race the next request onto that connection: a
            # failed attempt by design (it was sent; SNS retries), not a stale answer.
            await trio.testing.wait_all_tasks_blocked(0.005)
            following, _ = await _deliver(http, endpoint, after, b"after")
            note(f"following delivery: {following}")
            reused = endpoint.connections_of(tag) & endpoint.connections_of(after)
            event(f"following on a reused connection: {bool(reused)}")
            if following != Outcome(after_status):
                problems.append(f"the following delivery got {following}, not {after_status}")
            if len(endpoint.connections_of(after)) != 1:
                problems.append("the following delivery reached the endpoint wrongly")
            message_end = script.message_end
            if reused and (message_end is None or script.sent_end() > message_end):
                problems.append("a connection reused after bytes past the response")
        finally:
            await http.aclose()
        with trio.move_on_after(2):  # the endpoint reads the EOF of each closed connection
            if endpoint.open:
                await endpoint.none_open.wait()
        if endpoint.open:
            problems.append(f"{endpoint.open} connections left open after aclose")
        problems += endpoint.errors
        nursery.cancel_scope.cancel()
    return problems


_OK = b"HTTP/1.1 200 OK\r\nX-Tf-Id: ########\r\nContent-Length: 12\r\n\r\nid:########;"
# A 200 with an unasked 200 right behind it: the 500 after must not get the stale one.
UNASKED = script_of(
    _OK + b"HTTP/1.1 200 OK\r\nX-Tf-Id: unasked\r\nContent-Length: 7\r\n\r\nunasked",
    message_end=len(_OK),
)
# A keep-alive 200, then the endpoint closes at once (the race the wait above avoids).
CLOSED_AFTER = script_of(_OK, end="close", pauses=((1, 0.01),))

# HYPOTHESIS_PROFILE=deep runs ten times as many examples.
EXAMPLES = 80 * (10 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1)


@st.composite
def hostile(draw: st.DrawFn) -> Case:
    request = ClientRequest(b"POST", draw(st.sampled_from(BODIES)))
    return Case(request, draw(scripts(request)))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=hostile(), warm=st.booleans(), after_status=st.sampled_from([200, 500]))
@example(case=Case(ClientRequest(b"POST", b"hello"), UNASKED), warm=False, after_status=500)
@example(case=Case(ClientRequest(b"POST", b"hello"), CLOSED_AFTER), warm=True, after_status=200)
def test_every_endpoint_answer_ends_in_a_right_outcome(
    case: Case, warm: bool, after_status: int
) -> None:
    script = case.script
    problems = trio.run(run_case, script, case.request.body, warm, after_status)
    assert not problems, f"{script.label}: {problems}\n{script!r}"
