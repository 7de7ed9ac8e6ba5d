"""Short-lived signed links to assets in the embedded local storage, and the one place their notation lives.

A link names one asset for one owner until a moment:

    {public base}/{expiry}.{owner}.{scope}.{signature}/{storage key}

- `expiry` is a Unix time in seconds; the link is refused from then on.
- `owner` is the owner the gateway minted the link for (base64url, unpadded), so a link is always someone's.
- `scope` is `f` (the link reaches exactly this key) or `d` (every asset directly in the key's folder). A live
  HLS playlist gets `d`: it names its segments by relative name, and a browser resolves those against the
  playlist's own URL, so they arrive with the playlist's token and need no signature of their own.
- `signature` is HMAC-SHA256 over all of it (base64url, unpadded), keyed by `STILLPOINT_MEDIA_URL_SECRET`.

The token sits in the path, not the query, exactly so that relative references keep it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote, unquote

from services.storage.base import StorageKeyError, validate_key

# What a token looks like: four dot-separated fields, none empty.
_TOKEN_FIELDS: Final = 4
_FILE_SCOPE: Final = "f"
_FOLDER_SCOPE: Final = "d"
# Keys whose link reaches their folder: a playlist and the segments it names beside itself.
_FOLDER_SCOPED_SUFFIXES: Final = (".m3u8",)
# The shortest secret accepted from configuration (bytes): HMAC-SHA256 keys shorter than this are guessable.
MIN_SECRET_BYTES: Final = 32
_GENERATED_SECRET_BYTES: Final = 32


@dataclass(frozen=True)
class LinkGrant:
    """What a verified link allows: reading `storage_key`, on behalf of `owner`, until `expires_at`."""

    storage_key: str
    owner: str
    expires_at: int


class MediaLinkSigner:
    """Mints and checks links; both ends live in the media service, which alone knows the secret."""

    def __init__(
        self,
        secret: bytes,
        public_base_url: str,
        lifetime_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the media link secret must be at least {MIN_SECRET_BYTES} bytes")
        if lifetime_seconds < 1:
            raise ValueError("a media link must live at least a second")
        self._secret = secret
        self._base = public_base_url.rstrip("/")
        self._lifetime_seconds = lifetime_seconds
        self._clock = clock

    @property
    def public_base_url(self) -> str:
        """Where clients reach the media endpoint (the edge's address, or the media service's own)."""
        return self._base

    def link(self, storage_key: str, owner: str) -> str:
        """A link to `storage_key` for `owner`, valid for the signer's lifetime from now."""
        validate_key(storage_key)
        if not owner:
            raise ValueError("a media link is always minted for an owner")
        expires_at = math.ceil(self._clock()) + self._lifetime_seconds
        scope = _FOLDER_SCOPE if storage_key.endswith(_FOLDER_SCOPED_SUFFIXES) else _FILE_SCOPE
        owner_field = _encode(owner.encode())
        signature = self._sign(expires_at, owner_field, scope, _scope_of(storage_key, scope))
        return f"{self._base}/{expires_at}.{owner_field}.{scope}.{signature}/{quote(storage_key, safe='/')}"

    def verify(self, token: str, quoted_key: str) -> LinkGrant | None:
        """The grant a request path's token and key carry, or None for anything not minted here and unexpired
        (a forged, altered or expired token, a key outside its scope, a key that is no storage key)."""
        fields = token.split(".")
        if len(fields) != _TOKEN_FIELDS or not all(fields):
            return None
        expiry_field, owner_field, scope, signature = fields
        if scope not in (_FILE_SCOPE, _FOLDER_SCOPE) or not expiry_field.isdigit():
            return None
        storage_key = unquote(quoted_key)
        try:
            validate_key(storage_key)
        except StorageKeyError:
            return None
        # Belt and braces over validate_key: nothing that normalises elsewhere reaches the disk.
        if posixpath.normpath(storage_key) != storage_key:
            return None
        if scope == _FOLDER_SCOPE and posixpath.dirname(storage_key) == "":
            return None
        expires_at = int(expiry_field)
        expected = self._sign(expires_at, owner_field, scope, _scope_of(storage_key, scope))
        if not hmac.compare_digest(expected, signature):
            return None
        if self._clock() >= expires_at:
            return None
        try:
            owner = _decode(owner_field).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return LinkGrant(storage_key=storage_key, owner=owner, expires_at=expires_at)

    def seconds_left(self, grant: LinkGrant) -> int:
        """How long the grant's link still works: what a cache may keep what it fetched."""
        return max(0, grant.expires_at - math.ceil(self._clock()))

    def _sign(self, expires_at: int, owner_field: str, scope: str, signed_scope: str) -> str:
        message = f"stillpoint-media-link-v1\n{expires_at}\n{owner_field}\n{scope}\n{signed_scope}".encode()
        return _encode(hmac.new(self._secret, message, hashlib.sha256).digest())


def _scope_of(storage_key: str, scope: str) -> str:
    """What the signature covers: the key itself, or its folder (with the trailing slash)."""
    return storage_key if scope == _FILE_SCOPE else posixpath.dirname(storage_key) + "/"


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise ValueError("not base64url") from error


def load_or_create_secret(path: Path) -> bytes:
    """The embedded default's secret: made on first run and kept (owner-only) under var/, so replicas sharing
    the folder and restarts agree on it. Two replicas starting at once agree too: only one creation wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secrets.token_hex(_GENERATED_SECRET_BYTES))
    # A creator's write may still be landing; a short secret is never used.
    for _ in range(50):
        text = path.read_text().strip()
        if len(text) >= 2 * _GENERATED_SECRET_BYTES:
            return text.encode()
        time.sleep(0.02)
    raise ValueError(f"{path} holds no media link secret: delete it to make a new one")
