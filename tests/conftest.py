"""Test-wide settings: hypothesis profiles and the CI switch that turns skips into failures."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.support import socket_pairs

# "ci" is the default: enough examples to find real bugs, no deadline (CI timing varies).
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("deep", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# The broker's message actions skip their output check for speed; every broker the tests
# start (in-process or as a child, which inherits this) checks them (broker/frontend.py).
os.environ.setdefault("WHARF_CHECK_OUTPUTS", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under WHARF_CI=1 a skipped test is a failure: CI must run everything."""
    outcome = yield
    report = outcome.get_result()
    strict = os.environ.get("WHARF_CI") == "1"
    if (
        strict
        and report.skipped
        and call.when in ("setup", "call")
        and not getattr(report, "wasxfail", None)
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped under WHARF_CI=1: {report.longrepr}"


@pytest.fixture(autouse=True)
def _close_socket_pairs():  # type: ignore[no-untyped-def]
    """Close the socket pairs a test made with tests.support.socket_pairs."""
    yield
    socket_pairs.close_all()
