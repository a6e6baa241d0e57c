"""NextTokens that say where a listing resumes, and that only their issuer can write.

A token carries the last key of the page it ends (the listing resumes after it) and an
HMAC-SHA256 of that key and the listing's name under a secret the caller supplies, so a token
the service never issued (edited, made up, or issued for another listing: ListTopics',
another topic's ListSubscriptionsByTopic) does not verify and is refused, where a bare key
would resume anywhere. AWS's tokens are opaque too and expire; a broker that draws a new
secret at start refuses the tokens of the one before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

TAG_BYTES: Final = 16  # a truncated HMAC-SHA256: 128 bits cannot be guessed


class PageTokens:
    """Issues and reads the NextTokens of one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def issue(self, listing: str, key: str) -> str:
        """The token that resumes ``listing`` after ``key``.

        Args:
            listing: which listing the token belongs to (its action, and what it lists).
            key: the sort key of the page's last item.
        """
        raw = key.encode("utf-8", "surrogatepass")
        return base64.urlsafe_b64encode(self._tag(listing, raw) + raw).decode("ascii")

    def key_of(self, listing: str, token: str) -> str | None:
        """The key ``token`` resumes ``listing`` after; None if it was not issued for it."""
        try:
            decoded = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        except (ValueError, binascii.Error):  # UnicodeEncodeError is a ValueError
            return None
        tag, raw = decoded[:TAG_BYTES], decoded[TAG_BYTES:]
        if len(tag) != TAG_BYTES or not hmac.compare_digest(tag, self._tag(listing, raw)):
            return None
        return raw.decode("utf-8", "surrogatepass")

    def _tag(self, listing: str, raw_key: bytes) -> bytes:
        # The listing's name ends at the first NUL: a name cannot run into the key.
        message = listing.encode("utf-8", "surrogatepass") + b"\0" + raw_key
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:TAG_BYTES]
