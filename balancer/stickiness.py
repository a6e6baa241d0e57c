"""Stickiness cookies: opaque, authenticated values naming a target or a target group (pure).

ALB's cookies (sticky-sessions.md), reproduced by name and behaviour:

- ``AWSALB`` names the target of a group with ``lb_cookie`` stickiness; ``AWSALBCORS`` carries
  the same value with ``SameSite=None; Secure`` for cross-origin requests. A request carrying
  both is read from ``AWSALBCORS`` first, as ALB does, and from ``AWSALB`` when that one
  does not open (:func:`open_sticky`). The value is a list of sealed entries joined by ``.``,
  one per target group (up to ``MAX_TARGET_ENTRIES``), as ALB captures stickiness "for each
  target group": with a single entry, a client using two sticky groups (``/api/*`` and the
  rest) would lose its target at each switch. A value of one entry is what balancers before
  that issued.
- ``AWSALBTG`` / ``AWSALBTGCORS`` name the target group of a weighted forward (read in the
  same order). Like ``AWSALBAPP-0``, the value is a list of sealed entries joined by ``.``,
  one per weighted forward the client uses (up to ``MAX_GROUP_ENTRIES``): with a single
  entry, a client going back and forth between two rules whose forwards share no group
  would be drawn afresh at each switch. A forward reads the first entry naming one of its
  groups, and its response puts its own entry first, keeping the entries naming groups it
  does not have. A value of one entry is what balancers before that issued.
- ``AWSALBAPP-0`` maps the application's own cookie to a target (``app_cookie``), "for each
  target group that has application-based stickiness enabled": its value is a list of sealed
  entries joined by ``.``, one per target group, of this balancer or of another layer in
  front of or behind it (entries this balancer cannot open are kept as they are, up to
  ``MAX_APP_ENTRIES``). ALB shards this cookie into ``AWSALBAPP-0..3`` because it copies the
  app cookie; ours seals only a digest of it, so one shard suffices. It carries
  ``SameSite=None; Secure`` for Chromium 80 and later, as ALB's does.
- Cookies expire in the browser after a fixed 7 days (``Expires``, never ``Max-Age``). The
  time a cookie was issued is sealed inside, and every request checks it against the
  duration configured *now* (the target group's, or the weighted forward's for
  ``AWSALBTG``): a reload that shortens the duration ends older sessions at once, one that
  lengthens it lengthens live ones. ALB "checks whether the configured duration of
  stickiness is still valid", and its "manual rebalancing" is to set it to 1 second. The
  shell re-issues the cookie on every response, which slides the window.
- Cookies sealed before the issue time was (version 1) hold their absolute expiry instead.
  They still open, until that expiry: the configured duration cannot be checked against a
  time they do not hold. Each is replaced by a version 2 cookie on the next response, so
  only a client replaying an old value keeps one.

Sealing: AES-SIV (RFC 5297, ``cryptography``'s ``AESSIV``) with AES-256 and the cookie kind
and header (version, key id) as associated data, so a group cookie never opens as a target
cookie, nor a version 2 cookie as a version 1 one. SIV rather than
AES-GCM because it needs no nonce: a balancer re-seals on every response, and random 96-bit
GCM nonces reach NIST's 2^32-messages-per-key bound within hours at high request rates, after
which a repeat would leak the authentication key. SIV's only leak, equal plaintexts giving
equal cookies, reveals nothing a client does not already know. Determinism also keeps this
module free of randomness.

Keys come from files (bytes passed in by the shell, never read here). The first key seals;
every key opens, so rotation is: add the new key second, reload every node, move it first,
reload again, drop the old one. Each cookie carries a 4-byte key id so opening tries one key.
Times are wall-clock seconds since the epoch (``time.time()``), not a monotonic clock:
cookies travel between processes and hosts.

``open_*`` methods return None for anything they did not seal: tampered, truncated, expired
(issued longer ago than the duration they are given), foreign, oversized or non-ASCII values.
They never raise on input from a client.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import re
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from email.utils import formatdate
from typing import NamedTuple, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LB_COOKIE = "AWSALB"
LB_CORS_COOKIE = "AWSALBCORS"
GROUP_COOKIE = "AWSALBTG"
GROUP_CORS_COOKIE = "AWSALBTGCORS"
APP_COOKIE = "AWSALBAPP-0"
COOKIE_LIFETIME_SECONDS = 7 * 86400  # ALB's fixed browser expiry
MIN_KEY_BYTES = 16  # below 128 bits a key could be guessed
MAX_COOKIE_CHARS = 1024  # ours are ~100-700; bounds the work spent on garbage
APP_ENTRY_SEPARATOR = "."  # not in base64url: it joins AWSALBAPP-0's entries
MAX_APP_ENTRIES = 8  # target groups (of every layer) one AWSALBAPP-0 remembers
MAX_GROUP_ENTRIES = 8  # weighted forwards one AWSALBTG remembers
MAX_TARGET_ENTRIES = 8  # lb_cookie target groups one AWSALB remembers

_VERSION = 2  # seals the issue time
_EXPIRY_VERSION = 1  # sealed an absolute expiry; opened, never sealed any more
_HEADER = struct.Struct(">B4s")  # version, key id (authenticated as associated data)
# The first sealed field. Version 2: issued at, milliseconds since the epoch; version 1:
# expires at, whole seconds since the epoch.
_TIME = struct.Struct(">Q")
_LENGTH = struct.Struct(">H")
_APP_DIGEST_BYTES = 16
_SIV_TAG_BYTES = 16

_Opened = TypeVar("_Opened")


class Kind(enum.Enum):
    """What a sealed value names; bound to the ciphertext as associated data."""

    TARGET = b"target"
    GROUP = b"group"
    APP = b"app"


class StickyTarget(NamedTuple):
    """What a target cookie names."""

    target_group: str
    target_id: str


class _Key(NamedTuple):
    key_id: bytes
    cipher: AESSIV


def _derive(key: bytes) -> _Key:
    """Stretch a key file's bytes into an AES-256-SIV key (64 bytes) and a key id."""
    material = HKDF(hashes.SHA256(), 64, salt=None, info=b"wharf stickiness cookie v1").derive(key)
    key_id = hashlib.sha256(b"wharf stickiness key id\0" + key).digest()[:4]
    return _Key(key_id, AESSIV(material))


def _field(text: str) -> bytes:
    data = text.encode()
    return _LENGTH.pack(len(data)) + data


def _read_field(data: bytes, offset: int) -> tuple[str, int]:
    (length,) = _LENGTH.unpack_from(data, offset)
    start = offset + _LENGTH.size
    if start + length > len(data):
        raise ValueError("truncated field")
    return data[start : start + length].decode(), start + length


def app_digest(app_cookie: str) -> bytes:
    """A digest of the application cookie's value, sealed to bind the mapping to it."""
    return hashlib.sha256(app_cookie.encode()).digest()[:_APP_DIGEST_BYTES]


class CookieSealer:
    """Seals and opens stickiness cookie values with a list of keys (first seals)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        """Derive the ciphers.

        Args:
            keys: key file contents; the first seals, all open.

        Raises:
            ValueError: no key, or a key shorter than ``MIN_KEY_BYTES``.
        """
        if not keys:
            raise ValueError("stickiness needs at least one key")
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"a stickiness key needs at least {MIN_KEY_BYTES} bytes")
        self._keys = [_derive(key) for key in keys]
        self._by_id = {k.key_id: k for k in reversed(self._keys)}  # first key wins a clash

    # Sealing.

    def _seal(self, kind: Kind, issued_at: float, body: bytes) -> str:
        key = self._keys[0]
        header = _HEADER.pack(_VERSION, key.key_id)
        issued = _TIME.pack(max(math.floor(issued_at * 1000), 0))
        sealed = key.cipher.encrypt(issued + body, [header, kind.value])
        return base64.urlsafe_b64encode(header + sealed).rstrip(b"=").decode("ascii")

    def seal_target(self, target_group: str, target_id: str, *, issued_at: float) -> str:
        """The ``AWSALB`` value sending a client to ``target_id``, issued at ``issued_at``."""
        return self._seal(Kind.TARGET, issued_at, _field(target_group) + _field(target_id))

    def seal_group(self, target_group: str, *, issued_at: float) -> str:
        """The ``AWSALBTG`` value sending a client to ``target_group``, issued at
        ``issued_at``."""
        return self._seal(Kind.GROUP, issued_at, _field(target_group))

    def seal_app(
        self, target_group: str, target_id: str, app_cookie: str, *, issued_at: float
    ) -> str:
        """The ``AWSALBAPP-0`` value tying the app cookie's current value to a target."""
        body = _field(target_group) + _field(target_id) + app_digest(app_cookie)
        return self._seal(Kind.APP, issued_at, body)

    # Opening.

    def _open(self, kind: Kind, value: str, now: float, duration: float) -> bytes | None:
        if not value or len(value) > MAX_COOKIE_CHARS or not value.isascii():
            return None
        try:
            raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        if base64.urlsafe_b64encode(raw).rstrip(b"=") != value.encode():
            return None  # only our canonical spelling: one cookie, one string
        if len(raw) < _HEADER.size + _SIV_TAG_BYTES + _TIME.size:
            return None
        header = raw[: _HEADER.size]
        version, key_id = _HEADER.unpack(header)
        key = self._by_id.get(key_id)
        if version not in (_VERSION, _EXPIRY_VERSION) or key is None:
            return None
        try:
            # The header is associated data: a version 1 cookie never opens as version 2.
            plain = key.cipher.decrypt(raw[_HEADER.size :], [header, kind.value])
        except InvalidTag:
            return None
        (stamp,) = _TIME.unpack_from(plain)
        return plain[_TIME.size :] if _live(version, stamp, now, duration) else None

    def open_target(self, value: str, *, now: float, duration: float) -> StickyTarget | None:
        """What an ``AWSALB`` value names, or None if it is not a live cookie of ours (one
        issued less than ``duration`` seconds, the duration configured now, before ``now``)."""
        body = self._open(Kind.TARGET, value, now, duration)
        if body is None:
            return None
        try:
            group, offset = _read_field(body, 0)
            target, offset = _read_field(body, offset)
        except (ValueError, struct.error):  # UnicodeDecodeError is a ValueError
            return None
        return StickyTarget(group, target) if offset == len(body) else None

    def open_group(self, value: str, *, now: float, duration: float) -> str | None:
        """The target group a live ``AWSALBTG`` value names, or None."""
        body = self._open(Kind.GROUP, value, now, duration)
        if body is None:
            return None
        try:
            group, offset = _read_field(body, 0)
        except (ValueError, struct.error):
            return None
        return group if offset == len(body) else None

    def open_app(
        self, value: str, app_cookie: str, *, now: float, duration: float
    ) -> StickyTarget | None:
        """The target one live ``AWSALBAPP-0`` entry names for this app cookie value, or
        None."""
        opened = self._open_app(value, now, duration)
        if opened is None:
            return None
        mapping, digest = opened
        if not hmac.compare_digest(digest, app_digest(app_cookie)):
            return None  # the application started a new session: pick afresh
        return mapping

    def app_entry_group(self, value: str, *, now: float) -> str | None:
        """The target group an ``AWSALBAPP-0`` entry of ours is for, or None once it is dead
        for any duration (older than the cookies' lifetime): whether it is live is for its
        own group to check, against that group's duration, when it reads it."""
        opened = self._open_app(value, now, COOKIE_LIFETIME_SECONDS)
        return None if opened is None else opened[0].target_group

    def sealed_here(self, value: str) -> bool:
        """Whether a value carries the id of one of this sealer's keys (so one that does not
        open is stale or forged, not another balancer's)."""
        try:
            raw = base64.urlsafe_b64decode(value[:8] + "=" * (-len(value[:8]) % 4))
        except (binascii.Error, ValueError):
            return False
        return len(raw) >= _HEADER.size and raw[1 : _HEADER.size] in self._by_id

    def _open_app(
        self, value: str, now: float, duration: float
    ) -> tuple[StickyTarget, bytes] | None:
        body = self._open(Kind.APP, value, now, duration)
        if body is None or len(body) < _APP_DIGEST_BYTES:
            return None
        try:
            group, offset = _read_field(body, 0)
            target, offset = _read_field(body, offset)
        except (ValueError, struct.error):
            return None
        if offset != len(body) - _APP_DIGEST_BYTES:
            return None
        return StickyTarget(group, target), body[-_APP_DIGEST_BYTES:]


def _live(version: int, stamp: int, now: float, duration: float) -> bool:
    """Whether a cookie whose first sealed field is ``stamp`` is still live at ``now``."""
    if version == _EXPIRY_VERSION:
        return now < stamp  # its own expiry: when it was issued is not known
    return now < stamp / 1000 + min(duration, COOKIE_LIFETIME_SECONDS)


def _entries(value: str | None, limit: int) -> list[str]:
    if not value or len(value) > limit * (MAX_COOKIE_CHARS + 1):
        return []
    entries = value.split(APP_ENTRY_SEPARATOR, limit)[:limit]
    return [entry for entry in entries if entry and len(entry) <= MAX_COOKIE_CHARS]


def app_entries(value: str | None) -> list[str]:
    """The entries of an ``AWSALBAPP-0`` value (bounded in number and size)."""
    return _entries(value, MAX_APP_ENTRIES)


def target_entries(value: str | None) -> list[str]:
    """The entries of an ``AWSALB`` value (bounded in number and size); a value of one entry
    (as issued before entries) is a list of one."""
    return _entries(value, MAX_TARGET_ENTRIES)


def merged_target_value(
    sealer: CookieSealer, own: str, target_group: str, previous: Iterable[str], *, now: float
) -> str:
    """``AWSALB``'s new value: this group's fresh entry first, then one entry for each other
    target group the previous entries name; entries that do not open (forged, another key's,
    older than the cookies' lifetime) are dropped, and whether one is live for its group is
    for that group to check, against its own duration, when it reads it."""
    kept = [own]
    named = {target_group}
    for entry in previous:
        if len(kept) == MAX_TARGET_ENTRIES:
            break
        opened = sealer.open_target(entry, now=now, duration=COOKIE_LIFETIME_SECONDS)
        if opened is not None and opened.target_group not in named:
            named.add(opened.target_group)
            kept.append(entry)
    return APP_ENTRY_SEPARATOR.join(kept)


def group_entries(value: str | None) -> list[str]:
    """The entries of an ``AWSALBTG`` value (bounded in number and size); a value of one
    entry (as issued before entries) is a list of one."""
    return _entries(value, MAX_GROUP_ENTRIES)


def merged_group_value(
    sealer: CookieSealer,
    own: str,
    members: Collection[str],
    previous: Iterable[str],
    *,
    now: float,
) -> str:
    """``AWSALBTG``'s new value: this forward's fresh entry first, then one entry for each
    other group the previous entries name that is not among this forward's ``members``.

    Entries that do not open (forged, another key's, older than the cookies' lifetime) are
    dropped; whether one is live for its own forward is for that forward to check, against
    its own duration, when it reads it.
    """
    kept = [own]
    named = set(members)
    for entry in previous:
        if len(kept) == MAX_GROUP_ENTRIES:
            break
        group = sealer.open_group(entry, now=now, duration=COOKIE_LIFETIME_SECONDS)
        if group is not None and group not in named:
            named.add(group)
            kept.append(entry)
    return APP_ENTRY_SEPARATOR.join(kept)


def merged_app_value(
    sealer: CookieSealer, own: str, target_group: str, previous: Iterable[str], *, now: float
) -> str:
    """``AWSALBAPP-0``'s new value: this group's fresh entry first, then the entries of other
    groups and other balancers, without this group's old entry or stale ones of ours."""
    kept = [own]
    for entry in previous:
        if len(kept) == MAX_APP_ENTRIES:
            break
        group = sealer.app_entry_group(entry, now=now)
        if group is None and sealer.sealed_here(entry):
            continue  # ours, but past the cookies' lifetime, or forged
        if group != target_group and entry not in kept:
            kept.append(entry)
    return APP_ENTRY_SEPARATOR.join(kept)


_CHROMIUM = re.compile(r"(?:Chrome|Chromium)/(\d{1,6})")


def chromium_80_or_later(user_agent: str | None) -> bool:
    """Whether a user agent is Chromium 80 or later: ALB gives ``AWSALBAPP`` cookies
    ``SameSite=None; Secure`` for those only (older ones reject SameSite=None cookies)."""
    found = _CHROMIUM.search(user_agent) if user_agent else None
    return found is not None and int(found[1]) >= 80


# ---------------------------------------------------------------------------------------------
# Cookie headers.


def read_cookies(cookie_headers: Iterable[str], names: Collection[str]) -> dict[str, str]:
    """The values of the named cookies in ``Cookie`` request headers (first one wins)."""
    found: dict[str, str] = {}
    for header in cookie_headers:
        for part in header.split(";"):
            name, equals, value = part.strip().partition("=")
            if equals and name in names and name not in found:
                found[name] = value.strip()
    return found


def set_cookie(name: str, value: str, *, now: float, cors: bool = False) -> str:
    """A ``Set-Cookie`` value for a stickiness cookie, expiring 7 days after ``now``.

    ``cors`` adds ``SameSite=None; Secure``, which browsers require to send a cookie on
    cross-site requests.
    """
    expires = formatdate(now + COOKIE_LIFETIME_SECONDS, usegmt=True)
    header = f"{name}={value}; Expires={expires}; Path=/"
    return f"{header}; SameSite=None; Secure" if cors else header


def target_cookies(value: str, *, now: float) -> list[str]:
    """``AWSALB`` and its CORS twin ``AWSALBCORS``, as ``Set-Cookie`` values."""
    return [
        set_cookie(LB_COOKIE, value, now=now),
        set_cookie(LB_CORS_COOKIE, value, now=now, cors=True),
    ]


def group_cookies(value: str, *, now: float) -> list[str]:
    """``AWSALBTG`` and its CORS twin ``AWSALBTGCORS``, as ``Set-Cookie`` values."""
    return [
        set_cookie(GROUP_COOKIE, value, now=now),
        set_cookie(GROUP_CORS_COOKIE, value, now=now, cors=True),
    ]


def sticky_values(cookies: Mapping[str, str], name: str, cors_name: str) -> list[str]:
    """The values of a stickiness cookie and its CORS twin, in the order to try them.

    The CORS twin comes first. AWS, "Edit target group attributes" (edit-target-group-
    attributes.md), Sticky sessions, Considerations: "If the Application Load Balancer
    receives both an ``AWSALBCORS`` and an ``AWSALB`` duration-based stickiness cookie, the
    value in ``AWSALBCORS`` will take precedence." The two drift apart when a browser keeps
    the ``SameSite=None`` one from cross-site responses while first-party ones update the
    other. AWS says this of ``AWSALB`` only; ``AWSALBTG``/``AWSALBTGCORS`` follow the same
    order by analogy. (``AWSALBAPP-0`` has no twin: it carries ``SameSite=None`` itself.)
    Empty values are left out, and a value sent under both names is tried once.
    """
    found: list[str] = []
    for value in (cookies.get(cors_name), cookies.get(name)):
        if value and value not in found:
            found.append(value)
    return found


def open_sticky(
    cookies: Mapping[str, str],
    name: str,
    cors_name: str,
    opener: Callable[[str], _Opened | None],
) -> _Opened | None:
    """What the first of a cookie's CORS twin and the cookie itself that ``opener`` accepts
    names (:func:`sticky_values` gives the order), or None.

    The other one is the fallback when the preferred one does not open (tampered, expired,
    sealed with a dropped key) or ``opener`` rejects what it names: a stale ``AWSALBCORS``
    next to a valid ``AWSALB`` keeps the session sticky rather than ending it.
    """
    for value in sticky_values(cookies, name, cors_name):
        opened = opener(value)
        if opened is not None:
            return opened
    return None
