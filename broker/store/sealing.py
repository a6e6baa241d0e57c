"""Encryption at rest: message bodies and attributes sealed with AES-256-GCM.

Which key. A queue with ``KmsMasterKeyId`` uses the key that the key file maps that id to;
``alias/aws/sqs`` (AWS's managed key) falls back to the SSE-SQS key. A queue with
``SqsManagedSseEnabled=true`` (AWS's default since 2022) uses the file's current SSE-SQS key.
Other queues are stored in clear. The key file (TOML, named by ``storage.key_file``)::

    sse_key_id = "2025-06"            # new SSE-SQS messages are sealed with this key
    [kms_master_keys]                 # KmsMasterKeyId value -> key id
    "alias/orders" = "2024-11"
    [[keys]]
    id = "2025-06"
    key = "<base64 of 32 random bytes>"   # e.g. head -c32 /dev/urandom | base64
    [[keys]]
    id = "2024-11"
    key = "..."

Rotation. Each stored message names its key id, so a key can be replaced by adding a new one,
pointing ``sse_key_id`` (or the KMS mapping) at it and reloading (SIGHUP): new messages use the
new key, old ones stay readable while the file still lists theirs.

A message that cannot be opened -- its key is gone, or its sealed value fails authentication
(altered, or another key listed under its key's id) -- does not stop the others: a receive
returns those it opened and leaves it received, as a consumer that took it and failed would
(hidden for its visibility timeout, counted, dead-lettered by a RedrivePolicy), and logs its
id with its key's id. Only a receive that opened none of its messages fails: AWS's
``KMS.NotFoundException`` for a missing key, a retryable 503 for a failed authentication.

Nonces. A key is never used directly: each process derives a session key from it with
HKDF-SHA256 and a random 128-bit salt, and numbers the messages of the session with a 96-bit
counter as the GCM nonce. Nonces therefore never repeat under one session key, even across a
restore from backup (which would replay sequence numbers) or ten billion messages (where
random 96-bit nonces start to collide). A sealed value is::

    version (1 byte) | salt (16) | nonce (12) | ciphertext and GCM tag (16)

The associated data binds each value to its message id and field, so values cannot be
swapped between messages, or a body passed off as attributes.

Without a key file, queues that ask for encryption still work and keep their attributes, but
their messages are stored in clear; :class:`Sealer` reports that once (the app logs it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from msgspec import Meta, field

from broker.model.settings import QueueSettings
from broker.store.base import KeyUnavailable, SealingError
from monitoring.configfile import ConfigError, load
from monitoring.settings import Section

KEY_BYTES: Final = 32  # AES-256
SALT_BYTES: Final = 16
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
VERSION: Final = b"\x01"
HEADER_BYTES: Final = 1 + SALT_BYTES + NONCE_BYTES
SESSION_MESSAGES: Final = 1 << 32  # a fresh salt (session key) after this many seals
AWS_MANAGED_KEY: Final = "alias/aws/sqs"
SESSION_CACHE: Final = 256  # derived session keys kept for reading
_INFO: Final = b"wharf message sealing v1|"
_FINGERPRINT: Final = b"wharf key fingerprint v1"

KeyId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._:/-]{1,128}$")]


class KeyEntry(Section, frozen=True, kw_only=True):
    """One key of the key file."""

    id: KeyId
    key: Annotated[str, Meta(description="base64 of 32 random bytes")]


class KeyFile(Section, frozen=True, kw_only=True):
    """The key file's schema."""

    sse_key_id: KeyId
    kms_master_keys: dict[str, KeyId] = field(default_factory=dict)
    keys: list[KeyEntry] = field(default_factory=list)


class KeyRing:
    """The keys of one key file, and which queue uses which."""

    def __init__(
        self, keys: dict[str, bytes], sse_key_id: str, kms_master_keys: dict[str, str]
    ) -> None:
        """Hold validated keys.

        Args:
            keys: key id -> 32 secret bytes.
            sse_key_id: the key of SSE-SQS queues; must be in ``keys``.
            kms_master_keys: KmsMasterKeyId value -> key id; every id must be in ``keys``.
        """
        for key_id, secret in keys.items():
            if len(secret) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} has {len(secret)} bytes, not {KEY_BYTES}")
        missing = {sse_key_id, *kms_master_keys.values()} - keys.keys()
        if missing:
            raise ValueError(f"key ids not listed under [[keys]]: {', '.join(sorted(missing))}")
        self.keys = dict(keys)
        self.sse_key_id = sse_key_id
        self.kms_master_keys = dict(kms_master_keys)

    def key_id_for(self, settings: QueueSettings) -> str | None:
        """Return the id of the key new messages of a queue are sealed with; None: clear.

        Raises:
            KeyUnavailable: the queue's KmsMasterKeyId is not in the key file.
        """
        kms = settings.kms_master_key_id
        if kms:
            key_id = self.kms_master_keys.get(kms)
            if key_id is None and kms == AWS_MANAGED_KEY:
                key_id = self.sse_key_id
            if key_id is None:
                raise KeyUnavailable(f"Key '{kms}' does not exist.")
            return key_id
        return self.sse_key_id if settings.sqs_managed_sse_enabled else None


def load_key_file(path: str | Path) -> KeyRing:
    """Read and check a key file.

    Raises:
        ConfigError: the file cannot be read, or a key is malformed, listed twice or missing.
    """
    document = load(path, KeyFile)
    keys: dict[str, bytes] = {}
    for entry in document.keys:
        if entry.id in keys:
            raise ConfigError(path, f"key {entry.id!r} is listed twice")
        try:
            keys[entry.id] = base64.b64decode(entry.key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(path, f"key {entry.id!r} is not valid base64") from None
    try:
        return KeyRing(keys, document.sse_key_id, document.kms_master_keys)
    except ValueError as error:
        raise ConfigError(path, str(error)) from None


def fingerprints(keyring: KeyRing | None) -> dict[str, str]:
    """Each key id's fingerprint (a keyed hash: it tells nothing of the key), to find out
    at the next start or reload that an id names other key material; {} without keys."""
    if keyring is None:
        return {}
    return {
        key_id: hmac.new(secret, _FINGERPRINT, hashlib.sha256).hexdigest()[:32]
        for key_id, secret in sorted(keyring.keys.items())
    }


def exposure(path: str | Path) -> str | None:
    """Why the key file at ``path`` is open to more than the service (None: it is not).

    Every user of the host who can read it can open every sealed message in a copy of the
    store (a backup, say); one who can write it can swap the keys. The group may read
    (0640, group wharf: the service user reads a file root owns), not write: every member
    of the group could then swap the keys.
    """
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None  # loading it says what is wrong
    if mode & 0o006:
        who = "read" if not mode & 0o002 else "write" if not mode & 0o004 else "read and write"
        return f"every user of the host may {who} it (mode {mode:04o})"
    if mode & 0o020:
        return f"every member of its group may write it (mode {mode:04o})"
    return None


def associated_data(message_id: bytes, field_name: bytes) -> bytes:
    """Bind a sealed value to its message (16-byte UUID) and its field (body, attributes)."""
    return field_name + b"|" + message_id


def _derive(secret: bytes, salt: bytes, key_id: str) -> AESGCM:
    hkdf = HKDF(hashes.SHA256(), KEY_BYTES, salt=salt, info=_INFO + key_id.encode())
    return AESGCM(hkdf.derive(secret))


class SealingKey:
    """One key, ready to seal: its id and the current session (salt, key, counter).

    Only the store's writer thread seals, but a lock keeps it correct for any caller.
    """

    def __init__(self, key_id: str, secret: bytes) -> None:
        """Hold a key; the first :meth:`seal` opens a session."""
        self.key_id = key_id
        self._secret = secret
        self._lock = threading.Lock()
        self._salt = b""
        self._aead: AESGCM | None = None
        self._counter = SESSION_MESSAGES  # forces a session on first use

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``; ``aad`` must be given again to open it."""
        with self._lock:
            if self._counter >= SESSION_MESSAGES or self._aead is None:
                self._salt = os.urandom(SALT_BYTES)
                self._aead = _derive(self._secret, self._salt, self.key_id)
                self._counter = 0
            nonce = self._counter.to_bytes(NONCE_BYTES, "big")
            self._counter += 1
            salt, aead = self._salt, self._aead
        return VERSION + salt + nonce + aead.encrypt(nonce, plaintext, aad)


class Sealer:
    """What the store seals with and opens with; the key ring can be swapped on reload."""

    def __init__(
        self, keyring: KeyRing | None, *, on_clear: Callable[[], None] | None = None
    ) -> None:
        """Start with ``keyring`` (None: no key file, encrypted queues are stored in clear).

        Args:
            keyring: the keys, or None.
            on_clear: called once, the first time a queue asks for encryption while there is
                no key file (to log a warning).
        """
        self._lock = threading.Lock()
        self._keyring = keyring
        self._sealing: dict[str, SealingKey] = {}
        self._sessions: OrderedDict[tuple[str, bytes], AESGCM] = OrderedDict()
        self._on_clear = on_clear
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Tell whether a key file is loaded."""
        return self._keyring is not None

    @property
    def keyring(self) -> KeyRing | None:
        """The keys in use (None: no key file)."""
        return self._keyring

    def replace(self, keyring: KeyRing | None) -> None:
        """Use new keys from now on (SIGHUP); values sealed earlier open while listed."""
        with self._lock:
            self._keyring = keyring
            self._sealing = {}
            self._sessions.clear()

    def key_for(self, settings: QueueSettings) -> SealingKey | None:
        """Return the key new messages of a queue are sealed with; None: stored in clear.

        Raises:
            KeyUnavailable: the queue's KmsMasterKeyId is not in the key file.
        """
        keyring = self._keyring
        if keyring is None:
            if (settings.sqs_managed_sse_enabled or settings.kms_master_key_id) and not (
                self._warned
            ):
                self._warned = True
                if self._on_clear is not None:
                    self._on_clear()
            return None
        key_id = keyring.key_id_for(settings)
        if key_id is None:
            return None
        with self._lock:
            key = self._sealing.get(key_id)
            if key is None:
                key = self._sealing[key_id] = SealingKey(key_id, keyring.keys[key_id])
            return key

    def open(self, key_id: str, sealed: bytes, aad: bytes) -> bytes:
        """Decrypt a value sealed with key ``key_id``.

        Raises:
            KeyUnavailable: the key file no longer lists ``key_id``.
            SealingError: the value is malformed or fails authentication (tampered with).
        """
        if len(sealed) < HEADER_BYTES + TAG_BYTES or sealed[:1] != VERSION:
            raise SealingError("a sealed value is truncated or of an unknown version")
        salt = sealed[1 : 1 + SALT_BYTES]
        nonce = sealed[1 + SALT_BYTES : HEADER_BYTES]
        try:
            return self._session(key_id, salt).decrypt(nonce, sealed[HEADER_BYTES:], aad)
        except InvalidTag:
            raise SealingError("a sealed value failed authentication") from None

    def _session(self, key_id: str, salt: bytes) -> AESGCM:
        with self._lock:
            aead = self._sessions.get((key_id, salt))
            if aead is not None:
                self._sessions.move_to_end((key_id, salt))
                return aead
            keyring = self._keyring
            secret = keyring.keys.get(key_id) if keyring is not None else None
            if secret is None:
                raise KeyUnavailable(f"Key '{key_id}' that sealed this message is not available.")
            # Derived under the lock, so a concurrent replace() cannot leave a stale entry.
            aead = self._sessions[(key_id, salt)] = _derive(secret, salt, key_id)
            while len(self._sessions) > SESSION_CACHE:
                self._sessions.popitem(last=False)
            return aead
