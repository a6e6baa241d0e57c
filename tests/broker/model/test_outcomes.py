from hypothesis import given
from hypothesis import strategies as st

from broker.model.errors import SqsError
from broker.model.mutations import MessageDeleted
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


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def wake(self) -> None:
        self.calls += 1


@given(st.lists(st.integers(0, 3), max_size=12))
def test_combine_keeps_mutations_and_runs_a_shared_bound_method_once(picks):
    counters = [_Counter() for _ in range(4)]
    distinct: list[int] = []
    changes = []
    for n, pick in enumerate(picks):
        mutation = MessageDeleted(queue_id=pick, seq=n)
        changes.append(Change([mutation], [counters[pick].wake, lambda n=n: distinct.append(n)]))
    combined = Change.combine(changes)
    assert combined.mutations == [MessageDeleted(queue_id=p, seq=n) for n, p in enumerate(picks)]
    combined.on_durable()
    assert [c.calls for c in counters] == [1 if i in picks else 0 for i in range(4)]
    assert distinct == list(range(len(picks)))  # distinct callables all run, in order
