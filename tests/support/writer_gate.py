"""Hold the store's writer thread at a gate: a commit under way that does not end.

For tests that check what a call answers while an earlier commit is not yet durable. The
gate is open until ``close()``; the writer then stops before it applies its next
transaction, sets ``writing`` and waits (at most ``HOLD_SECONDS``) until ``open`` is set.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from broker.store import sqlite_writer

HOLD_SECONDS = 30  # a test that fails before it opens the gate frees the writer after this


class WriterGate:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.open.set()
        self.writing = threading.Event()
        unhindered = sqlite_writer.apply_mutations

        def held_at_the_gate(*args: Any, **kwargs: Any) -> None:
            self.writing.set()
            if not self.open.wait(HOLD_SECONDS):
                raise TimeoutError("the test never opened the gate")
            unhindered(*args, **kwargs)

        monkeypatch.setattr(sqlite_writer, "apply_mutations", held_at_the_gate)

    def close(self) -> None:
        """Hold the next transaction (and every one after it) until ``open`` is set."""
        self.writing.clear()
        self.open.clear()
