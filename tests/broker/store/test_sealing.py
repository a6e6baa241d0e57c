"""Encryption at rest: key files, sealing round trips, tampering, rotation, and the store."""

import base64
import hashlib
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.cli import SPEC
from broker.config import StorageSettings
from broker.model.messages import AttributeValue
from broker.model.mutations import MessageInserted, MessageMoved
from broker.model.settings import QueueSettings
from broker.store.base import KeyUnavailable, SealingError, UnopenedMessages
from broker.store.sealing import (
    AWS_MANAGED_KEY,
    HEADER_BYTES,
    KeyRing,
    Sealer,
    SealingKey,
    associated_data,
    load_key_file,
)
from broker.store.sqlite import SqliteStore
from monitoring.configfile import ConfigError
from monitoring.lifecycle import Daemon
from tests.support.broker import BrokerThread, broker_config

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
SSE = QueueSettings()  # AWS's default: SqsManagedSseEnabled = true
CLEAR = QueueSettings(sqs_managed_sse_enabled=False)
MESSAGE_ID = uuid.UUID(int=7).bytes


def ring(sse="k1", kms=None, **keys):
    return KeyRing(keys or {"k1": K1}, sse, kms or {})


def write_key_file(path, keys, sse, kms=None):
    lines = [f'sse_key_id = "{sse}"', "[kms_master_keys]"]
    lines += [f'"{alias}" = "{key_id}"' for alias, key_id in (kms or {}).items()]
    for key_id, secret in keys.items():
        lines += ["[[keys]]", f'id = "{key_id}"', f'key = "{base64.b64encode(secret).decode()}"']
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------- key files


def test_a_key_file_loads(tmp_path):
    path = write_key_file(
        tmp_path / "keys.toml", {"k1": K1, "k2": K2}, "k2", {"alias/orders": "k1"}
    )
    keyring = load_key_file(path)
    assert keyring.keys == {"k1": K1, "k2": K2}
    assert keyring.key_id_for(SSE) == "k2"
    assert keyring.key_id_for(CLEAR) is None
    assert keyring.key_id_for(QueueSettings(kms_master_key_id="alias/orders")) == "k1"
    assert keyring.key_id_for(QueueSettings(kms_master_key_id=AWS_MANAGED_KEY)) == "k2"
    with pytest.raises(KeyUnavailable, match="alias/nope") as info:
        keyring.key_id_for(QueueSettings(kms_master_key_id="alias/nope"))
    assert info.value.code == "KMS.NotFoundException"


@pytest.mark.parametrize(
    ("keys", "sse", "kms", "problem"),
    [
        ({"k1": b"short"}, "k1", {}, "has 5 bytes"),
        ({"k1": K1}, "k9", {}, "not listed under"),
        ({"k1": K1}, "k1", {"alias/x": "k9"}, "k9"),
    ],
)
def test_bad_key_files_are_refused(tmp_path, keys, sse, kms, problem):
    path = write_key_file(tmp_path / "keys.toml", keys, sse, kms)
    with pytest.raises(ConfigError, match=problem):
        load_key_file(path)


def test_malformed_keys_are_refused(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text('sse_key_id = "k1"\n[[keys]]\nid = "k1"\nkey = "not base64!"\n')
    with pytest.raises(ConfigError, match="not valid base64"):
        load_key_file(path)
    key = base64.b64encode(K1).decode()
    path.write_text(f'sse_key_id = "k1"\n[[keys]]\nid = "k1"\nkey = "{key}"\n' * 1)
    path.write_text(path.read_text() + f'[[keys]]\nid = "k1"\nkey = "{key}"\n')
    with pytest.raises(ConfigError, match="listed twice"):
        load_key_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_key_file(tmp_path / "missing.toml")


# ---------------------------------------------------------------------- sealing


@given(st.binary(max_size=4096), st.binary(max_size=64))
def test_sealed_values_open_to_what_was_sealed(plaintext, aad):
    sealer = Sealer(ring())
    key = sealer.key_for(SSE)
    assert key is not None
    sealed = key.seal(plaintext, aad)
    assert len(sealed) == len(plaintext) + HEADER_BYTES + 16
    assert sealer.open("k1", sealed, aad) == plaintext


@given(st.binary(min_size=1, max_size=256), st.data())
def test_any_altered_byte_is_rejected(plaintext, data):
    sealer = Sealer(ring())
    key = sealer.key_for(SSE)
    assert key is not None
    sealed = bytearray(key.seal(plaintext, b"aad"))
    position = data.draw(st.integers(0, len(sealed) - 1))
    sealed[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SealingError):
        sealer.open("k1", bytes(sealed), b"aad")


def test_values_are_bound_to_their_message_and_field():
    sealer = Sealer(ring())
    key = sealer.key_for(SSE)
    assert key is not None
    body = key.seal(b"secret", associated_data(MESSAGE_ID, b"body"))
    with pytest.raises(SealingError):
        sealer.open("k1", body, associated_data(uuid.UUID(int=8).bytes, b"body"))
    with pytest.raises(SealingError):
        sealer.open("k1", body, associated_data(MESSAGE_ID, b"attributes"))
    with pytest.raises(SealingError, match="truncated"):
        sealer.open("k1", body[:20], b"")


def test_nonces_never_repeat_and_sessions_differ():
    key = SealingKey("k1", K1)
    sealed = [key.seal(b"same", b"") for _ in range(100)]
    headers = {s[:HEADER_BYTES] for s in sealed}
    assert len(headers) == 100
    other = SealingKey("k1", K1).seal(b"same", b"")
    assert other[1:17] != sealed[0][1:17]  # another process: another salt, another session key


def test_rotation_keeps_old_messages_readable_while_their_key_is_listed():
    sealer = Sealer(ring())
    old = sealer.key_for(SSE)
    assert old is not None
    sealed_old = old.seal(b"old", b"")
    sealer.replace(ring(sse="k2", k1=K1, k2=K2))
    new = sealer.key_for(SSE)
    assert new is not None
    assert new.key_id == "k2"
    sealed_new = new.seal(b"new", b"")
    assert sealer.open("k1", sealed_old, b"") == b"old"
    assert sealer.open("k2", sealed_new, b"") == b"new"
    sealer.replace(ring(sse="k2", k2=K2))
    with pytest.raises(KeyUnavailable, match="k1"):
        sealer.open("k1", sealed_old, b"")


def test_without_a_key_file_encrypted_queues_are_stored_in_clear_and_said_once():
    warnings = []
    sealer = Sealer(None, on_clear=lambda: warnings.append(1))
    assert not sealer.enabled
    assert sealer.key_for(CLEAR) is None
    assert warnings == []
    assert sealer.key_for(SSE) is None
    assert sealer.key_for(QueueSettings(kms_master_key_id="alias/x")) is None
    assert warnings == [1]
    with pytest.raises(KeyUnavailable):
        sealer.open("k1", b"\x01" + bytes(60), b"")


# ---------------------------------------------------------------------- in the store


def inserted(queue_id, seq, body, attributes=None):
    return MessageInserted(
        queue_id=queue_id,
        seq=seq,
        message_id=str(uuid.UUID(int=seq)),
        body=body,
        attributes=attributes or {},
        sent_at=1,
        visible_at=1,
        group_id=None,
        deduplication_id=None,
        sender_id="",
        trace_header=None,
    )


def database_bytes(directory):
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith("wharf"))


async def test_the_store_seals_encrypted_queues_and_reads_them_back(tmp_path):
    store = SqliteStore(tmp_path, sealer=Sealer(ring()))
    await store.open()
    try:
        sealed_queue = await store.create_queue("sealed", SSE, {}, 1)
        clear_queue = await store.create_queue("clear", CLEAR, {}, 1)
        secret = "top secret body " + os.urandom(8).hex()
        tag = AttributeValue("String", "secret attribute value", None)
        await store.commit(
            [
                inserted(sealed_queue.queue_id, 1, secret, {"tag": tag}),
                inserted(clear_queue.queue_id, 1, "plain body in clear"),
            ]
        )
        [message] = await store.read_messages(sealed_queue.queue_id, [1])
        assert message.body == secret
        assert message.attributes == {"tag": tag}
        on_disk = database_bytes(tmp_path)
        assert secret.encode() not in on_disk
        assert b"secret attribute value" not in on_disk
        assert b"plain body in clear" in on_disk  # the check itself sees clear text
    finally:
        await store.aclose()
    rows = sqlite3.connect(tmp_path / "wharf.sqlite3").execute(
        "SELECT queue_id, key_id FROM messages ORDER BY queue_id"
    )
    assert rows.fetchall() == [(sealed_queue.queue_id, "k1"), (clear_queue.queue_id, None)]


async def test_a_sealed_row_keeps_no_digest_of_its_body_and_a_clear_row_does(tmp_path):
    # The MD5 of a clear body would let anyone holding the file confirm a guessed body.
    store = SqliteStore(tmp_path, sealer=Sealer(ring()))
    await store.open()
    try:
        sealed_queue = await store.create_queue("sealed", SSE, {}, 1)
        clear_queue = await store.create_queue("clear", CLEAR, {}, 1)
        digest = hashlib.md5(b"guessable").hexdigest()
        await store.commit(
            [
                msgspec.structs.replace(inserted(queue.queue_id, 1, "guessable"), body_md5=digest)
                for queue in (sealed_queue, clear_queue)
            ]
        )
        [sealed] = await store.read_messages(sealed_queue.queue_id, [1])
        [clear] = await store.read_messages(clear_queue.queue_id, [1])
        assert (sealed.body, sealed.body_md5) == ("guessable", None)  # a receive hashes it
        assert (clear.body, clear.body_md5) == ("guessable", digest)
    finally:
        await store.aclose()
    rows = sqlite3.connect(tmp_path / "wharf.sqlite3").execute(
        "SELECT queue_id, body_md5 FROM messages ORDER BY queue_id"
    )
    assert rows.fetchall() == [
        (sealed_queue.queue_id, None),
        (clear_queue.queue_id, bytes.fromhex(digest)),
    ]


def unopened_of(info: pytest.ExceptionInfo[UnopenedMessages]) -> list[tuple[int, str, str, type]]:
    """(seq, message id, key id, error type) of each message a read could not open."""
    return [(m.seq, m.message_id, m.key_id, type(m.error)) for m in info.value.unopened]


async def test_a_tampered_row_is_set_aside_and_the_others_are_read(tmp_path):
    store = SqliteStore(tmp_path, sealer=Sealer(ring()))
    await store.open()
    try:
        queue = await store.create_queue("sealed", SSE, {}, 1)
        await store.commit([inserted(queue.queue_id, seq, f"body {seq}") for seq in (1, 2, 3)])
        # Give message 2 the sealed body of message 1: still valid ciphertext, not its own.
        tamper = sqlite3.connect(tmp_path / "wharf.sqlite3", isolation_level=None)
        one, two = (r[0] for r in tamper.execute("SELECT body FROM messages WHERE seq < 3"))
        tamper.execute("UPDATE messages SET body = ? WHERE seq = 2", (one,))
        tamper.close()
        assert one != two
        with pytest.raises(UnopenedMessages) as info:
            await store.read_messages(queue.queue_id, [3, 2, 1])
        assert [m.body for m in info.value.opened] == ["body 3", "body 1"]
        assert unopened_of(info) == [(2, str(uuid.UUID(int=2)), "k1", SealingError)]
        with pytest.raises(UnopenedMessages) as info:
            await store.read_messages(queue.queue_id, [2])
        assert info.value.opened == []
    finally:
        await store.aclose()


async def test_another_key_under_the_same_id_sets_its_messages_aside(tmp_path):
    # The key file replaced k1's key material: what k1 sealed before fails authentication.
    sealer = Sealer(ring())
    store = SqliteStore(tmp_path, sealer=sealer)
    await store.open()
    try:
        queue = await store.create_queue("q", SSE, {}, 1)
        await store.commit([inserted(queue.queue_id, 1, "under the first k1")])
        sealer.replace(ring(k1=K2))
        await store.commit([inserted(queue.queue_id, 2, "under the second k1")])
        with pytest.raises(UnopenedMessages) as info:
            await store.read_messages(queue.queue_id, [1, 2])
        assert [m.body for m in info.value.opened] == ["under the second k1"]
        assert unopened_of(info) == [(1, str(uuid.UUID(int=1)), "k1", SealingError)]
    finally:
        await store.aclose()


async def test_unknown_kms_keys_are_refused_before_anything_is_queued(tmp_path):
    store = SqliteStore(tmp_path, sealer=Sealer(ring()))
    await store.open()
    try:
        bogus = QueueSettings(kms_master_key_id="alias/missing")
        queue = await store.create_queue("kms", bogus, {}, 1)  # AWS accepts it here
        with pytest.raises(KeyUnavailable):
            store.check_sealing(bogus)
        with pytest.raises(KeyUnavailable):
            await store.commit([inserted(queue.queue_id, 1, "x")])
        assert store.statistics().commits == 1  # only the create
        await store.update_queue(queue.queue_id, SSE, 2)
        store.check_sealing(SSE)
        await store.commit([inserted(queue.queue_id, 1, "x")])
    finally:
        await store.aclose()


async def test_a_dead_letter_move_into_a_sealed_queue_seals_a_clear_row(tmp_path):
    store = SqliteStore(tmp_path, sealer=Sealer(ring()))
    await store.open()
    try:
        source = await store.create_queue("source", CLEAR, {}, 1)
        dlq = await store.create_queue("dlq", SSE, {}, 1)
        await store.commit([inserted(source.queue_id, 1, "moving body")])
        move = MessageMoved(
            source_queue_id=source.queue_id,
            source_seq=1,
            target_queue_id=dlq.queue_id,
            target_seq=1,
            enqueued_at=None,
            visible_at=5,
            source_arn="arn:aws:sqs:us-east-1:000000000000:source",
        )
        await store.commit([move])
        [message] = await store.read_messages(dlq.queue_id, [1])
        assert message.body == "moving body"
        assert message.dead_letter_source_arn == move.source_arn
        assert await store.read_messages(source.queue_id, [1]) == []
    finally:
        await store.aclose()
    key_ids = sqlite3.connect(tmp_path / "wharf.sqlite3").execute("SELECT key_id FROM messages")
    assert key_ids.fetchall() == [("k1",)]


async def test_rotation_in_the_store(tmp_path):
    sealer = Sealer(ring())
    store = SqliteStore(tmp_path, sealer=sealer)
    await store.open()
    try:
        queue = await store.create_queue("q", SSE, {}, 1)
        await store.commit([inserted(queue.queue_id, 1, "under k1")])
        sealer.replace(ring(sse="k2", k1=K1, k2=K2))
        await store.commit([inserted(queue.queue_id, 2, "under k2")])
        messages = await store.read_messages(queue.queue_id, [1, 2])
        assert [m.body for m in messages] == ["under k1", "under k2"]
        sealer.replace(ring(sse="k2", k2=K2))  # k1 retired too early
        with pytest.raises(UnopenedMessages) as info:
            await store.read_messages(queue.queue_id, [1, 2])
        assert [m.body for m in info.value.opened] == ["under k2"]  # not hidden by the other
        assert unopened_of(info) == [(1, str(uuid.UUID(int=1)), "k1", KeyUnavailable)]
        error = info.value.unopened[0].error
        assert isinstance(error, KeyUnavailable)
        assert error.code == "KMS.NotFoundException"
        assert [m.body for m in await store.read_messages(queue.queue_id, [2])] == ["under k2"]
    finally:
        await store.aclose()


@pytest.mark.parametrize("settings", [SSE, CLEAR])
async def test_a_queue_sealed_at_rest_is_not_read_ahead(tmp_path, settings):
    # Rows stored in clear before the queue asked for encryption: once it does, their clear
    # text is not brought into memory ahead of the receives either. (CLEAR: the control.)
    store = SqliteStore(tmp_path, sealer=Sealer(ring()), body_cache_bytes=40_000)
    await store.open()
    try:
        queue = await store.create_queue("q", CLEAR, {}, 1)
        qid = queue.queue_id
        await store.commit([inserted(qid, seq, f"body {seq}") for seq in range(1, 301)])
        await store.update_queue(qid, settings, 2)
        # The cache holds the backlog's head (about 80 rows): read past it, from the file.
        await store.read_messages(qid, range(201, 211))
        tamper = sqlite3.connect(tmp_path / "wharf.sqlite3", isolation_level=None)
        tamper.execute("UPDATE messages SET body = ? WHERE key_id IS NULL", (b"from the file",))
        tamper.close()
        [message] = await store.read_messages(qid, [211])
        assert message.body == ("from the file" if settings is SSE else "body 211")
    finally:
        await store.aclose()


async def test_an_unopened_row_leaves_the_cache_and_the_read_ahead_whole(tmp_path):
    # A queue that turned encryption off keeps its older rows sealed; it is read ahead again.
    sealer = Sealer(ring())
    store = SqliteStore(tmp_path, sealer=sealer, body_cache_bytes=40_000)
    await store.open()
    try:
        queue = await store.create_queue("q", SSE, {}, 1)
        qid = queue.queue_id
        await store.commit([inserted(qid, 1, "sealed under k1")])
        await store.update_queue(qid, CLEAR, 2)
        await store.commit([inserted(qid, seq, f"body {seq}") for seq in range(2, 301)])
        sealer.replace(ring(sse="k2", k2=K2))  # k1 retired
        tamper = sqlite3.connect(tmp_path / "wharf.sqlite3", isolation_level=None)
        tamper.execute("UPDATE messages SET body = ? WHERE key_id IS NULL AND seq < 200", (b"",))
        # 2 is in the cache (the backlog's head); 1 and 250 are read from the file, with the
        # rows after 250 read ahead in the same trip.
        with pytest.raises(UnopenedMessages) as info:
            await store.read_messages(qid, [1, 2, 250])
        assert [m.body for m in info.value.opened] == ["body 2", "body 250"]
        assert unopened_of(info) == [(1, str(uuid.UUID(int=1)), "k1", KeyUnavailable)]
        tamper.execute("UPDATE messages SET body = ? WHERE key_id IS NULL", (b"from the file",))
        tamper.close()
        assert [m.body for m in await store.read_messages(qid, [251])] == ["body 251"]
    finally:
        await store.aclose()


# ---------------------------------------------------------------------- through the broker


def sealing_config(tmp_path, key_file):
    config = broker_config(tmp_path / "data")
    storage = StorageSettings(data_dir=config.storage.data_dir, key_file=str(key_file))
    return msgspec.structs.replace(config, storage=storage)


def test_encrypted_queues_never_reach_the_disk_in_clear_and_keys_rotate(tmp_path):
    key_file = write_key_file(tmp_path / "keys.toml", {"k1": K1}, "k1", {"alias/orders": "k1"})
    config = sealing_config(tmp_path, key_file)
    secrets = {name: f"{name} secret {os.urandom(8).hex()}" for name in ("sse", "kms", "new")}
    with BrokerThread(config) as broker:
        sqs = broker.client()
        sse = sqs.create_queue(QueueName="sse")["QueueUrl"]  # SqsManagedSseEnabled by default
        kms = sqs.create_queue(QueueName="kms", Attributes={"KmsMasterKeyId": "alias/orders"})
        kms = kms["QueueUrl"]
        clear = sqs.create_queue(QueueName="clear", Attributes={"SqsManagedSseEnabled": "false"})[
            "QueueUrl"
        ]
        bogus = sqs.create_queue(QueueName="bogus", Attributes={"KmsMasterKeyId": "alias/nope"})
        sqs.send_message(QueueUrl=sse, MessageBody=secrets["sse"])
        sqs.send_message(QueueUrl=kms, MessageBody=secrets["kms"])
        sqs.send_message(QueueUrl=clear, MessageBody="clear body, readable on disk")
        with pytest.raises(sqs.exceptions.KmsNotFound) as refused:
            sqs.send_message(QueueUrl=bogus["QueueUrl"], MessageBody="never stored")
        assert refused.value.response["Error"]["Code"] == "KMS.NotFoundException"
        with pytest.raises(sqs.exceptions.KmsNotFound):
            sqs.send_message_batch(
                QueueUrl=bogus["QueueUrl"], Entries=[{"Id": "1", "MessageBody": "never"}]
            )

        on_disk = database_bytes(tmp_path / "data")
        assert b"clear body, readable on disk" in on_disk
        assert secrets["sse"].encode() not in on_disk
        assert secrets["kms"].encode() not in on_disk
        assert b"never stored" not in on_disk

        # Rotation: a new key becomes current; messages sealed with the old one still open.
        write_key_file(key_file, {"k1": K1, "k2": K2}, "k2", {"alias/orders": "k1"})
        broker.call(broker.app.reload, config)
        sqs.send_message(QueueUrl=sse, MessageBody=secrets["new"])
        bodies = {
            m["Body"] for m in sqs.receive_message(QueueUrl=sse, MaxNumberOfMessages=10)["Messages"]
        }
        assert bodies == {secrets["sse"], secrets["new"]}
        [message] = sqs.receive_message(QueueUrl=kms)["Messages"]
        assert message["Body"] == secrets["kms"]

        # A bad key file refuses the reload and the keys in use stay.
        key_file.write_text("sse_key_id = 'k3'\n")
        with pytest.raises(ConfigError):
            broker.call(broker.app.reload, config)
        sqs.send_message(QueueUrl=sse, MessageBody="after a refused reload")
        assert b"after a refused reload" not in database_bytes(tmp_path / "data")
    rows = sqlite3.connect(tmp_path / "data" / "wharf.sqlite3").execute(
        "SELECT q.name, m.key_id FROM messages m JOIN queues q USING (queue_id) "
        "ORDER BY m.queue_id, m.seq"
    )
    assert rows.fetchall() == [
        ("sse", "k1"),
        ("sse", "k2"),
        ("sse", "k2"),
        ("kms", "k1"),
        ("clear", None),
    ]


def test_without_a_key_file_encrypted_queues_work_in_clear_and_it_is_logged_once(tmp_path):
    with BrokerThread(broker_config(tmp_path / "data")) as broker:
        sqs = broker.client()
        for name in ("a", "b"):
            url = sqs.create_queue(QueueName=name)["QueueUrl"]
            sqs.send_message(QueueUrl=url, MessageBody=f"body of {name}")
        url = sqs.create_queue(QueueName="k", Attributes={"KmsMasterKeyId": "alias/x"})
        sqs.send_message(QueueUrl=url["QueueUrl"], MessageBody="accepted without keys")
        attributes = sqs.get_queue_attributes(QueueUrl=url["QueueUrl"], AttributeNames=["All"])
        assert attributes["Attributes"]["KmsMasterKeyId"] == "alias/x"
        log = broker.daemon.log_output.getvalue()  # type: ignore[attr-defined]
    assert log.count("storage.stored_in_clear") == 1
    assert b"body of a" in database_bytes(tmp_path / "data")


def test_a_bad_key_file_stops_the_start(tmp_path):
    missing = sealing_config(tmp_path, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        Daemon(SPEC, missing, config_path=None)


def check_config(toml: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "check-config", str(toml)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_key_file_others_may_read_is_warned_of_at_start_reload_and_check(tmp_path):
    # Anyone who reads the key file opens every sealed message of a copy of the store.
    key_file = write_key_file(tmp_path / "keys.toml", {"k1": K1}, "k1")
    key_file.chmod(0o644)
    config = sealing_config(tmp_path, key_file)
    with BrokerThread(config) as broker:
        log = broker.daemon.log_output  # type: ignore[attr-defined]
        assert (
            f"level=warning event=storage.key_file_exposed daemon=broker file={key_file} "
            'reason="every user of the host may read it (mode 0644)"'
        ) in log.getvalue()
        key_file.chmod(0o640)  # root:wharf, as the admin token file: fine
        broker.call(broker.app.reload, config)
        assert log.getvalue().count("storage.key_file_exposed") == 1
        key_file.chmod(0o602)
        broker.call(broker.app.reload, config)
        assert log.getvalue().count("storage.key_file_exposed") == 2
        assert "may write it (mode 0602)" in log.getvalue()
        key_file.chmod(0o660)  # the group may write: any member could swap the keys
        broker.call(broker.app.reload, config)
        assert log.getvalue().count("storage.key_file_exposed") == 3
        assert "every member of its group may write it (mode 0660)" in log.getvalue()
        url = broker.client().create_queue(QueueName="q")["QueueUrl"]
        broker.client().send_message(QueueUrl=url, MessageBody="served all the same")

    toml = tmp_path / "broker.toml"
    toml.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\nkey_file = "{key_file}"\n')
    key_file.chmod(0o644)
    check = check_config(toml)
    assert check.returncode == 0
    assert f"{key_file}: warning: the key file of storage.key_file is open to others" in (
        check.stderr
    )
    key_file.chmod(0o600)
    check = check_config(toml)
    assert (check.returncode, check.stderr) == (0, "")
