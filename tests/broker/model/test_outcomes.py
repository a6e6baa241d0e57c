from hypothesis import given
from hypothesis import strategies as st

from broker.model.errors import SqsError
from broker.model.outcomes import Change, SendOutcome


def test_on_durable_runs_callbacks_once_in_order():
    calls = []
    change = Change([], [lambda: calls.append(1), lambda: calls.append(2)])
    change.on_durable()
    change.on_durable()
    assert calls == [1, 2]


def test_send_outcome_keeps_results():
    outcome = SendOutcome([SqsError("X", "y")], [], [])
    assert outcome.results == [SqsError("X", "y")]
    assert outcome.mutations == []


@given(st.integers(0, 20))
def test_callbacks_run_in_the_order_given(count):
    calls: list[int] = []
    Change([], [lambda n=n: calls.append(n) for n in range(count)]).on_durable()
    assert calls == list(range(count))
