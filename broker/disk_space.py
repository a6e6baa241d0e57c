"""Refuse new messages before the disk fills up, as RabbitMQ's disk alarm does.

A full disk makes a commit fail, and a failed store stops the broker. So the room left on
the data directory's filesystem (its free space less the store's WAL, whose pages checkpoints
copy into the database file) is watched, and while it is below ``storage.min_free_bytes``
the actions that add messages (SendMessage, SendMessageBatch, Publish, PublishBatch) are
refused with ``ServiceUnavailable`` (HTTP 503, which AWS SDKs retry with backoff). It is
measured every second (others may fill the disk too), and sooner when the broker itself may
have used up the room: each measurement grants a budget of half the room above the limit,
each send spends three times its request's size from it (a row is written to the WAL, then
to the database file, both in whole pages), and a spent budget means a new measurement
before the next send: the nearer the limit, the more often it is measured. A publish spends
its request's size when it is admitted and, once its subscriptions are known and before it
signs anything, reserves an estimate of the copies and outbox rows it will write
(:meth:`DiskSpace.reserve`), replaced by the exact bytes in its model step
(:meth:`DiskSpace.settle`) and released once its commit is durable (:meth:`DiskSpace.release`).
What is reserved is not on the disk yet, so a measurement takes it off the room: publishes
that run together (signing yields to the event loop) are admitted against what the others
will write, not against the same room. New messages are refused while the room less the
reservations is below the limit; no single publish can overrun the limit by more than what
it writes itself.
Everything else goes on: receives and deletes are how consumers make room, and they need
only a little of the space kept back. Below the limit the store is also asked to copy its
WAL into the database file and truncate it, which gives back what the WAL kept for reuse.
Crossing the limit either way is logged; the room and the state are exported as metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import trio
from prometheus_client.core import GaugeMetricFamily, Metric

from monitoring.logging import EventLog
from proto.aws.errors import common_error

CHECK_SECONDS: Final = 1.0
ADDING_ACTIONS: Final = frozenset({"SendMessage", "SendMessageBatch", "Publish", "PublishBatch"})


def statvfs_free_bytes(
    directory: Path, pending: Callable[[], int] = lambda: 0
) -> Callable[[], int]:
    """The room left for the store in ``directory``: the filesystem's free space (for an
    unprivileged user) less ``pending()``, space the store may still take without growing
    its files' sizes as the filesystem sees them (``SqliteStore.wal_bytes``: the WAL's pages
    are copied into the database file by checkpoints)."""

    def free() -> int:
        stats = os.statvfs(directory)
        return stats.f_bavail * stats.f_frsize - pending()

    return free


class DiskSpace:
    """The data directory's free space against ``storage.min_free_bytes``."""

    def __init__(
        self,
        free_bytes: Callable[[], int],
        min_free_bytes: int,
        log: EventLog,
        make_room: Callable[[], None] = lambda: None,
    ) -> None:
        """Measure once now.

        Args:
            free_bytes: measures the free space (:func:`statvfs_free_bytes`; tests pass others).
            min_free_bytes: below it, adding actions are refused; 0 never refuses.
            make_room: called at every measurement below the limit, to give back space the
                store keeps for itself (``SqliteStore.give_back_wal_space``).
        """
        self._free_bytes = free_bytes
        self._make_room = make_room
        self.min_free_bytes = min_free_bytes
        self._log = log
        self.free = 0
        self.low = False
        self._budget = 0  # bytes sends may still write before the next measurement
        self._reserved = 0  # bytes admitted publishes will write: not in ``free`` yet
        self.measure()

    def measure(self) -> None:
        """Measure the free space; log when it crosses the limit."""
        try:
            self.free = self._free_bytes()
        except OSError as error:  # the directory vanished, say: keep the last verdict
            self._log.warning("storage.free_space_unknown", reason=str(error))
            return
        low = self.min_free_bytes > 0 and self.free < self.min_free_bytes
        self._budget = (self.free - self._reserved - self.min_free_bytes) // 2
        if low and not self.low:
            self._log.error(
                "storage.disk_low",
                free_bytes=self.free,
                min_free_bytes=self.min_free_bytes,
                consequence="sends and publishes are refused (503) until there is room; "
                "receives and deletes go on",
            )
        elif self.low and not low:
            self._log.info(
                "storage.disk_ok", free_bytes=self.free, min_free_bytes=self.min_free_bytes
            )
        self.low = low
        if low:
            self._make_room()

    def admit(self, action: str, request_bytes: int) -> None:
        """Refuse ``action`` if it adds messages while the disk is low.

        Args:
            action: the API action.
            request_bytes: the size of its request body (about what it will store).

        Raises:
            AwsError: ``ServiceUnavailable`` (503).
        """
        if action not in ADDING_ACTIONS or not self.min_free_bytes:
            return
        self._spend(3 * request_bytes)

    def reserve(self, stored_bytes: int) -> int:
        """Admit a publish's copies and outbox rows, about ``stored_bytes``, until its commit
        is durable: spent from the budget (at three times, as a send) and taken off the room
        every measurement finds until :meth:`release`.

        Returns:
            The reservation, for :meth:`settle` and :meth:`release`.

        Raises:
            AwsError: ``ServiceUnavailable`` (503): the room less what other publishes hold
                is below the limit. Nothing is reserved then.
        """
        if not self.min_free_bytes:
            return 0
        reservation = 3 * stored_bytes
        self._spend(reservation)
        self._reserved += reservation
        return reservation

    def settle(self, reservation: int, stored_bytes: int) -> int:
        """Replace ``reservation`` with what the publish stores, ``stored_bytes``, known in
        its model step; the difference is spent from (or given back to) the budget.

        Returns:
            The new reservation, to :meth:`release` once the commit is durable.
        """
        settled = 3 * stored_bytes
        self._budget -= settled - reservation
        self._reserved += settled - reservation
        return settled

    def release(self, reservation: int) -> None:
        """The commit that ``reservation`` was for is on the disk (or failed): measurements
        see what it wrote."""
        self._reserved -= reservation

    def _spend(self, charge: int) -> None:
        self._budget -= charge
        if self._budget < 0:
            self.measure()
        if self.low or self.free - self._reserved < self.min_free_bytes:
            held = f", {self._reserved} of them held for publishes in progress" * bool(
                self._reserved
            )
            raise common_error(
                "ServiceUnavailable",
                f"The broker's disk has {self.free} bytes free{held}, below its limit of "
                f"{self.min_free_bytes}: new messages are refused until consumers or the "
                "operator make room. Retry later.",
            )

    async def watch_forever(self) -> None:
        while True:
            await trio.sleep(CHECK_SECONDS)
            self.measure()

    def collect(self) -> Iterable[Metric]:
        """Gauges for the admin listener's /metrics."""
        return [
            GaugeMetricFamily(
                "wharf_storage_free_bytes",
                "Free space of the data directory's filesystem (for the broker's user).",
                value=self.free,
            ),
            GaugeMetricFamily(
                "wharf_storage_min_free_bytes",
                "storage.min_free_bytes: below it, new messages are refused.",
                value=self.min_free_bytes,
            ),
            GaugeMetricFamily(
                "wharf_storage_refusing_messages",
                "1 while new messages are refused for lack of disk space.",
                value=int(self.low),
            ),
        ]
