"""How the public List RPCs page (AIP-132, AIP-158): page sizes, and opaque, tamper-evident page tokens.

A page token is the cursor of the previous page's last item (its `create_time` and id) with an HMAC-SHA256
over the cursor, the RPC (and its filter) and the caller it was issued to, all base64url. The MAC makes a
token that was changed, truncated, or issued for another caller or another list fail verification, so a
caller can never steer a listing into someone else's rows. The key is STILLPOINT_PAGE_TOKEN_SECRET, shared
by every gateway replica; without it each process makes its own random key, and its tokens then work only
on the replica that issued them (until it restarts).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from datetime import datetime

from services.gateway.errors import InvalidInputError
from services.gateway.models import PageCursor

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# A real token is about 120 characters; anything far longer is not one of ours, and is not decoded.
MAX_PAGE_TOKEN_CHARS = 512
# The secret is an HMAC key: shorter than 256 bits would be the weakest part of the scheme.
MIN_SECRET_CHARS = 32

_VERSION = "1"
_MAC_BYTES = 32
_REFUSED = (
    "is not a token this list issued to you (changed, or from another list or caller): start again without it"
)


def page_size(requested: int) -> int:
    """The page size a request gets: the default for 0, at most the maximum; negative is refused."""
    if requested < 0:
        raise InvalidInputError(
            "page_size", f"must be 0 (for {DEFAULT_PAGE_SIZE}) or more, at most {MAX_PAGE_SIZE}"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PageTokens:
    """Issues and verifies page tokens with one HMAC key."""

    def __init__(self, secret: str | None = None) -> None:
        """`secret` is STILLPOINT_PAGE_TOKEN_SECRET; None makes a random key of this process's own."""
        if secret is not None and len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"a page token secret needs at least {MIN_SECRET_CHARS} characters")
        # Domain-separated, so the same secret used elsewhere never yields a MAC that verifies here.
        key = secret.encode() if secret is not None else secrets.token_bytes(32)
        self._is_shared = secret is not None
        self._key = hmac.new(key, b"stillpoint page tokens", hashlib.sha256).digest()

    @property
    def is_shared(self) -> bool:
        """Whether the key came from a secret every replica can share."""
        return self._is_shared

    def issue(self, cursor: PageCursor | None, *, scope: str, owner: str) -> str:
        """A token that resumes after `cursor`, valid only for `owner` and `scope` (the list it pages); empty
        for no cursor (the last page), as `verify` reads an empty token as the first."""
        if cursor is None:
            return ""
        body = json.dumps(
            [_VERSION, cursor.create_time.isoformat(), cursor.id], separators=(",", ":")
        ).encode()
        return _encode(body + self._mac(body, scope, owner))

    def verify(self, token: str, *, scope: str, owner: str) -> PageCursor | None:
        """The cursor in a token that `issue` made for the same owner and scope (None for an empty token: the
        first page); anything else is INVALID_ARGUMENT, with one message whatever was wrong."""
        if not token:
            return None
        if len(token) > MAX_PAGE_TOKEN_CHARS:
            raise InvalidInputError("page_token", _REFUSED)
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidInputError("page_token", _REFUSED) from None
        # base64 decoding skips stray characters: only the one canonical spelling of a token is accepted.
        if _encode(raw) != token:
            raise InvalidInputError("page_token", _REFUSED)
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(body, scope, owner)):
            raise InvalidInputError("page_token", _REFUSED)
        # Only a body this key signed gets here, so a failure below is a token of an older format.
        try:
            version, create_time, item_id = json.loads(body)
            if version != _VERSION:
                raise ValueError(version)
            return PageCursor(create_time=datetime.fromisoformat(create_time), id=str(item_id))
        except (ValueError, TypeError):
            raise InvalidInputError("page_token", _REFUSED) from None

    def _mac(self, body: bytes, scope: str, owner: str) -> bytes:
        # Length-prefixed fields: no choice of owner and scope can collide with another's.
        message = b"".join(
            len(part).to_bytes(4, "big") + part for part in (scope.encode(), owner.encode(), body)
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
