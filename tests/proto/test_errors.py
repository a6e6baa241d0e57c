from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proto.errors import ProtocolError


def test_carries_its_wire_answer():
    error = ProtocolError("bad frame", status_hint=413, code="TooLarge")
    assert (str(error), error.status_hint, error.code) == ("bad frame", 413, "TooLarge")


@given(st.text(), st.integers(400, 599), st.text())
def test_defaults_and_fields_survive(message, status, code):
    error = ProtocolError(message, status_hint=status, code=code)
    assert (error.message, error.status_hint, error.code) == (message, status, code)
    assert ProtocolError(message).status_hint == 400
