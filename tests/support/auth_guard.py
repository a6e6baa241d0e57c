"""The server side of Basic and Digest authentication, for test endpoints.

Written for the tests from RFC 7617 and RFC 7616 (not :mod:`proto.http_auth`), with the
standard library's parser of auth parameters, and itself checked against curl and urllib as
clients (tests/proto/test_http_auth.py), so a client passing it is checked against more than
its own reading of the RFCs.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote
from urllib.request import parse_http_list, parse_keqv_list

_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


@dataclass
class AuthGuard:
    """Checks requests' ``Authorization``; says which challenges a refused one gets.

    ``schemes`` lists the challenges in the order sent: ``"Basic"`` or ``"Digest"``, the
    latter with ``algorithm`` (MD5 when None), ``qop`` (a value such as ``"auth,auth-int"``,
    or None for an RFC 2069 challenge) and ``userhash``. A nonce answers ``stale_after``
    requests, then is refused with ``stale=true``.
    """

    username: str
    password: str
    schemes: tuple[str, ...] = ("Digest",)
    algorithm: str | None = None
    qop: str | None = "auth"
    userhash: bool = False
    stale_after: int = 1000
    realm: str = "wharf-tests@example.org"
    accepted: list[str] = field(default_factory=list)  # the scheme of each accepted request
    _nonces: dict[str, int] = field(default_factory=dict)  # nonce -> highest nc seen
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def challenges(self) -> list[tuple[str, str]]:
        """``WWW-Authenticate`` headers for a 401, each Digest with a fresh nonce."""
        headers = []
        for scheme in self.schemes:
            if scheme == "Basic":
                headers.append(("WWW-Authenticate", f'Basic realm="{self.realm}", charset="UTF-8"'))
                continue
            nonce = secrets.token_urlsafe(24)
            with self._lock:
                self._nonces[nonce] = 0
            params = [f'realm="{self.realm}"', f'nonce="{nonce}"', 'opaque="0p4que"']
            if self.algorithm is not None:
                params.append(f"algorithm={self.algorithm}")
            if self.qop is not None:
                params.append(f'qop="{self.qop}"')
            if self.userhash:
                params.append("userhash=true")
            headers.append(("WWW-Authenticate", "Digest " + ", ".join(params)))
        return headers

    def stale_challenge(self) -> tuple[str, str]:
        name, value = self.challenges()[self.schemes.index("Digest")]
        return name, value + ", stale=true"

    def check(self, method: str, uri: str, authorization: str | None, body: bytes) -> str:
        """``ok``, ``refused`` or ``stale`` for one request."""
        if authorization is None:
            return "refused"
        scheme, _, rest = authorization.partition(" ")
        if scheme.lower() == "basic" and "Basic" in self.schemes:
            expected = f"{self.username}:{self.password}".encode()
            ok = base64.b64decode(rest.strip()) == expected
            return self._accept("Basic") if ok else "refused"
        if scheme.lower() == "digest" and "Digest" in self.schemes:
            return self._check_digest(method, uri, parse_keqv_list(parse_http_list(rest)), body)
        return "refused"

    def _accept(self, scheme: str) -> str:
        with self._lock:
            self.accepted.append(scheme)
        return "ok"

    def _check_digest(self, method: str, uri: str, fields: dict[str, str], body: bytes) -> str:
        algorithm = fields.get("algorithm", "MD5")
        name = _HASHES.get(algorithm.upper().removesuffix("-SESS"))
        if name is None or fields.get("uri") != uri or fields.get("realm") != self.realm:
            return "refused"

        def digest(text: str | bytes) -> str:
            return hashlib.new(name, text.encode() if isinstance(text, str) else text).hexdigest()

        if self.userhash:
            if fields.get("username") != digest(f"{self.username}:{self.realm}"):
                return "refused"
        elif "username*" in fields:
            charset, _, encoded = fields["username*"].partition("''")
            if charset.upper() != "UTF-8" or unquote(encoded) != self.username:
                return "refused"
        elif fields.get("username") != self.username:
            return "refused"
        nonce = fields.get("nonce", "")
        ha1 = digest(f"{self.username}:{self.realm}:{self.password}")
        if algorithm.upper().endswith("-SESS"):
            ha1 = digest(f"{ha1}:{nonce}:{fields.get('cnonce', '')}")
        qop = fields.get("qop")
        a2 = f"{method}:{uri}" + (f":{digest(body)}" if qop == "auth-int" else "")
        if qop is None:
            expected = digest(f"{ha1}:{nonce}:{digest(a2)}")
        else:
            if qop not in (self.qop or "").replace(" ", "").split(","):
                return "refused"
            parts = [ha1, nonce, fields.get("nc", ""), fields.get("cnonce", ""), qop, digest(a2)]
            expected = digest(":".join(parts))
        if fields.get("response") != expected:
            return "refused"
        with self._lock:
            if nonce not in self._nonces:
                return "refused"  # never issued
            count = int(fields.get("nc", "0"), 16)
            if qop is not None and count <= self._nonces[nonce]:
                return "refused"  # a replayed request
            self._nonces[nonce] = count
            if count > self.stale_after:
                return "stale"
        return self._accept("Digest")
