"""The queues the configuration file declares: created or updated at start and at every
reload, never deleted.

Two steps, so that a reload the live queues refuse changes nothing: :func:`plan` checks every
declaration against the live queues, dead-letter targets first, and :func:`apply` makes the
changes. The operator's file is authoritative: a declared queue that was deleted through the
API less than 60 seconds ago is created anyway (AWS's wait protects API callers racing each
other, not a file that says the queue must exist).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from broker.config import BrokerConfig, DeclaredQueue
from broker.model.errors import SqsError
from broker.model.settings import (
    QueueSettings,
    apply_update,
    check_dead_letter_target,
    parse_create,
)
from broker.registry import Queue, QueueRegistry
from monitoring.configfile import ConfigError
from monitoring.durable import write_file
from monitoring.logging import EventLog


@dataclass(frozen=True)
class Step:
    """What one declaration will do: create ``declared``, or bring ``existing`` to it."""

    key: str  # "queues[2]": where the declaration is in the file
    declared: DeclaredQueue
    existing: Queue | None
    settings: QueueSettings
    tags: dict[str, str]


def plan(registry: QueueRegistry, config: BrokerConfig, file: str) -> list[Step]:
    """Check ``config``'s declarations against the live queues; change nothing.

    Returns:
        The steps, dead-letter targets before the queues that name them.

    Raises:
        ConfigError: naming ``file``, the declaration's key and the reason: a value the
            existing queue does not take, or a dead-letter target that is neither declared
            nor an existing queue (or is of the other type, or refuses this source).
    """
    planned: dict[str, QueueSettings] = {}  # ARN -> settings once the steps before are done
    steps: list[Step] = []
    for index, declared in config.declaration_order():
        key = f"queues[{index}]"
        existing = registry.get(declared.name)
        attributes = declared.attributes
        try:
            settings = (
                parse_create(attributes)
                if existing is None
                else apply_update(existing.settings, attributes)
            )
        except SqsError as error:
            raise ConfigError(file, _reason(key, declared, "attributes", error)) from None
        arn = registry.arn_of(declared.name)
        policy = settings.redrive_policy
        if policy is not None:
            target = planned.get(policy.dead_letter_target_arn)
            if target is None:
                live = registry.by_arn(policy.dead_letter_target_arn)
                target = None if live is None else live.settings
            try:
                check_dead_letter_target(settings, arn, target)
            except SqsError as error:
                reason = _reason(key, declared, "attributes.RedrivePolicy", error)
                raise ConfigError(file, reason) from None
        planned[arn] = settings
        tags = dict(declared.tags)
        if existing is not None:  # tags set through the API stay; the file's win
            tags = {**existing.record.tags, **tags}
        steps.append(Step(key, declared, existing, settings, tags))
    return steps


async def apply(registry: QueueRegistry, steps: list[Step], file: str, log: EventLog) -> None:
    """Create or update each queue of ``steps``, in order.

    An existing queue is written only where the file changes it, so a restart does not move
    its LastModifiedTimestamp.

    Raises:
        ConfigError: a queue changed between :func:`plan` and now (through the API, during a
            reload) so that the declaration no longer applies; the steps before it are done.
    """
    for step in steps:
        declared = step.declared
        queue = step.existing
        try:
            if queue is None or queue.deleted:
                await registry.create(
                    declared.name, declared.attributes, declared.tags, declared=True
                )
                continue
            before = queue.settings
            if step.settings != before:
                await registry.set_attributes(queue, declared.attributes)
                log.info(
                    "queue.declaration_applied",
                    queue=declared.name,
                    changed=",".join(_changed(before, queue.settings)),
                )
            if step.tags != queue.record.tags:
                await registry.set_tags(queue, step.tags)
        except SqsError as error:
            raise ConfigError(file, _reason(step.key, declared, "attributes", error)) from None


def note_undeclared(path: Path, config: BrokerConfig, log: EventLog) -> None:
    """Log each queue declared last time (start or reload) that ``config`` no longer
    declares: it is kept. ``path`` keeps the names declared, so a restart notices too."""
    try:
        before = msgspec.json.decode(path.read_bytes(), type=list[str])
    except (FileNotFoundError, msgspec.DecodeError):
        before = []  # first start, or a file no one should have edited: nothing to compare
    names = [q.name for q in config.queues]
    for name in sorted(set(before) - set(names)):
        log.warning(
            "queue.undeclared",
            queue=name,
            consequence="kept with its messages: a queue leaves only by DeleteQueue",
        )
    if names != before:
        try:
            write_file(path, msgspec.json.encode(names), 0o600)
        except OSError as error:  # only the next comparison suffers: never refuse for it
            log.warning("queue.declarations_not_saved", file=str(path), reason=str(error))


def _reason(key: str, declared: DeclaredQueue, field: str, error: SqsError) -> str:
    return f"{key}.{field} (queue {declared.name!r}): {error.code}: {error.message}"


def _changed(before: QueueSettings, after: QueueSettings) -> list[str]:
    return [
        name
        for name in msgspec.structs.asdict(after)
        if getattr(before, name) != getattr(after, name)
    ]
