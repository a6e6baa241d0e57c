"""A client's answers to HTTP authentication challenges: Basic (RFC 7617) and Digest (RFC 7616).

SNS endpoints may carry ``user:password@`` in their URL; AWS answers the endpoint's
``401 Unauthorized`` with Basic or Digest credentials, whichever the endpoint asks for. The
shell sends a request, and when a 401 comes back it passes the ``WWW-Authenticate`` values to
:func:`answer_challenges`, which picks a challenge this module can answer and returns a
scheme object; its :meth:`authorization` gives the ``Authorization`` value for a request
(and, for Digest, counts the nonce's uses, so the shell may keep it for the next requests).

Nothing here reads a clock or random bytes: the client nonce is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple
from urllib.parse import quote


class Credentials(NamedTuple):
    """A user name and password, as decoded from an endpoint URL."""

    username: str
    password: str


class Challenge(NamedTuple):
    """One challenge of a ``WWW-Authenticate`` field: a lower-cased scheme and its parameters
    (names lower-cased, quoted values unquoted)."""

    scheme: str
    params: dict[str, str]


_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED: Final = r'"(?:[^"\\]|\\.)*"'
_PARAM: Final = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED})")
_SCHEME: Final = re.compile(_TOKEN)
_SEPARATORS: Final = re.compile(r"[ \t,]*")
_ESCAPE: Final = re.compile(r"\\(.)")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """The challenges of ``WWW-Authenticate`` field values (RFC 9110 §11.6.1), in order.

    Total over any input: what does not parse is skipped (a token68, stray characters), so
    a server's odd challenge only means fewer answerable ones.
    """
    challenges: list[Challenge] = []
    for value in values:
        position = 0
        current: Challenge | None = None
        while True:
            position = _SEPARATORS.match(value, position).end()  # type: ignore[union-attr]
            if position >= len(value):
                break
            param = _PARAM.match(value, position)
            if param is not None and current is not None:
                name, raw = param.groups()
                if raw.startswith('"'):
                    raw = _ESCAPE.sub(r"\1", raw[1:-1])
                current.params.setdefault(name.lower(), raw)
                position = param.end()
                continue
            scheme = _SCHEME.match(value, position)
            if scheme is None:
                position += 1  # a character no rule takes: skip it
                continue
            current = Challenge(scheme.group().lower(), {})
            challenges.append(current)
            position = scheme.end()
    return challenges


@dataclass(frozen=True, slots=True)
class BasicScheme:
    """Basic credentials (RFC 7617, UTF-8): the same value for every request."""

    credentials: Credentials

    def authorization(self, method: str, uri: str, body: bytes, cnonce: str) -> str:
        del method, uri, body, cnonce  # Basic proves nothing about the request
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


# RFC 7616 §6.1's algorithms, with hashlib's names; the -sess variants share the hash.
_DIGEST_HASHES: Final = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


@dataclass(slots=True)
class DigestSession:
    """One Digest challenge being answered: its nonce is reused, counting uses (``nc``),
    until the server asks again (a new nonce, or ``stale=true``)."""

    credentials: Credentials
    realm: str
    nonce: str
    opaque: str | None
    algorithm: str | None  # as the challenge named it; None means MD5 (RFC 2617)
    qop: str | None  # "auth" or "auth-int"; None for an RFC 2069 challenge
    userhash: bool
    uses: int = 0

    def _hash(self, text: str | bytes) -> str:
        name = (self.algorithm or "MD5").upper().removesuffix("-SESS")
        data = text.encode() if isinstance(text, str) else text
        return hashlib.new(_DIGEST_HASHES[name], data).hexdigest()

    def authorization(self, method: str, uri: str, body: bytes, cnonce: str) -> str:
        """The ``Authorization`` value for one request; counts one use of the nonce."""
        self.uses += 1
        count = f"{self.uses:08x}"
        user, password = self.credentials
        secret = self._hash(f"{user}:{self.realm}:{password}")
        if (self.algorithm or "").upper().endswith("-SESS"):
            secret = self._hash(f"{secret}:{self.nonce}:{cnonce}")
        target = f"{method}:{uri}"
        if self.qop == "auth-int":
            target += ":" + self._hash(body)
        if self.qop is None:
            response = self._hash(f"{secret}:{self.nonce}:{self._hash(target)}")
        else:
            response = self._hash(
                f"{secret}:{self.nonce}:{count}:{cnonce}:{self.qop}:{self._hash(target)}"
            )
        fields = [self._username(), f"realm={_quoted(self.realm)}", f"uri={_quoted(uri)}"]
        if self.algorithm is not None:
            fields.append(f"algorithm={self.algorithm}")
        fields += [f"nonce={_quoted(self.nonce)}", f"response={_quoted(response)}"]
        if self.qop is not None:
            fields += [f"qop={self.qop}", f"nc={count}", f"cnonce={_quoted(cnonce)}"]
        if self.opaque is not None:
            fields.append(f"opaque={_quoted(self.opaque)}")
        if self.userhash:
            fields.append("userhash=true")
        return "Digest " + ", ".join(fields)

    def _username(self) -> str:
        user = self.credentials.username
        if self.userhash:
            return f"username={_quoted(self._hash(f'{user}:{self.realm}'))}"
        if user.isascii() and user.isprintable():
            return f"username={_quoted(user)}"
        return f"username*=UTF-8''{quote(user, safe='')}"  # RFC 7616 §3.4.4


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _digest_session(params: dict[str, str], credentials: Credentials) -> DigestSession | None:
    nonce = params.get("nonce")
    algorithm = params.get("algorithm")
    if nonce is None:
        return None
    echoed = (params.get(name) for name in ("realm", "nonce", "opaque", "algorithm"))
    if not all(value is None or (value.isascii() and value.isprintable()) for value in echoed):
        return None  # they go back in a header: only printable ASCII can
    if algorithm is not None and algorithm.upper().removesuffix("-SESS") not in _DIGEST_HASHES:
        return None
    offered = {option.strip().lower() for option in params.get("qop", "").split(",")}
    if "qop" not in params:
        qop = None
    elif "auth" in offered:
        qop = "auth"
    elif "auth-int" in offered:
        qop = "auth-int"
    else:
        return None
    return DigestSession(
        credentials=credentials,
        realm=params.get("realm", ""),
        nonce=nonce,
        opaque=params.get("opaque"),
        algorithm=algorithm,
        qop=qop,
        userhash=params.get("userhash", "").lower() == "true",
    )


def answer_challenges(
    values: Iterable[str], credentials: Credentials
) -> BasicScheme | DigestSession | None:
    """The scheme to answer a 401's ``WWW-Authenticate`` values with, or None if none fits.

    The first Digest challenge this module can answer wins (servers list them strongest
    first, RFC 7616 §3.7), then Basic: Digest never sends the password itself.
    """
    challenges = parse_challenges(values)
    for challenge in challenges:
        if challenge.scheme == "digest":
            session = _digest_session(challenge.params, credentials)
            if session is not None:
                return session
    if any(challenge.scheme == "basic" for challenge in challenges):
        return BasicScheme(credentials)
    return None


def is_stale(values: Iterable[str]) -> bool:
    """Whether a 401 only says the Digest nonce expired (``stale=true``): the credentials
    were right, and the request may go again with the new nonce."""
    return any(
        challenge.scheme == "digest" and challenge.params.get("stale", "").lower() == "true"
        for challenge in parse_challenges(values)
    )
