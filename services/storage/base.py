"""What every asset store offers: the AssetStorage protocol, server-made keys, and every storage error."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Keys are made by the servers, never taken from clients, and this pattern is checked again on every use
# so that no key can step outside the storage root.
_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_.-]*)*$")


class StorageKeyError(ValueError):
    """A storage key is malformed or would leave the storage root."""


class AssetMissingError(LookupError):
    """No asset is stored under a key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no asset is stored under {key!r}")
        self.key = key


class StorageUnavailableError(Exception):
    """A remote store (Supabase Storage) refused or failed a request.

    The message says what went wrong and never names the asset key, a signed token or the service key.
    """

    def __init__(self, message: str, status_code: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        # Storage's own status (its body's `statusCode`, e.g. 403, 409), None when no answer came.
        self.status_code = status_code
        # Storage's error name (e.g. "Duplicate", "Unauthorized"), None when no answer came.
        self.reason = reason


@dataclass(frozen=True)
class StoredAsset:
    """An asset in storage."""

    key: str
    uri: str
    size_bytes: int
    content_type: str


def new_key(prefix: str, extension: str) -> str:
    """Makes a fresh key under `prefix`; new keys rather than overwrites keep caches and CDNs honest."""
    key = f"{prefix}/{secrets.token_hex(8)}.{extension}"
    validate_key(key)
    return key


def validate_key(key: str) -> str:
    """Returns `key` if it is a well-formed relative key, else raises StorageKeyError."""
    if not _KEY_PATTERN.fullmatch(key) or ".." in key:
        raise StorageKeyError(f"malformed storage key {key!r}")
    return key


class AssetStorage(Protocol):
    """Where images, narrations and videos are kept."""

    # With `signed=False` a remote store skips signing the new asset (a request of its own) and returns an
    # empty `uri`: for callers that sign many assets at once with `signed_uris`, or need no URI at all.
    # With `read_back=True` a remote store keeps a copy where `local_path` finds it: for an asset this
    # process reads again soon (the narration its renders copy), which then costs no download.

    async def put_file(
        self, key: str, source_path: Path, content_type: str, *, signed: bool = True, read_back: bool = False
    ) -> StoredAsset:
        """Stores a local file under `key`."""
        ...

    async def put_bytes(
        self, key: str, data: bytes, content_type: str, *, signed: bool = True, read_back: bool = False
    ) -> StoredAsset:
        """Stores bytes under `key`."""
        ...

    async def put_mutable_bytes(
        self, key: str, data: bytes, content_type: str, *, signed: bool = True
    ) -> StoredAsset:
        """Writes an object meant to be rewritten in place, such as a live playlist; never cached long."""
        ...

    async def local_path(self, key: str) -> Path:
        """Returns a local path holding the asset, fetching it first if storage is remote."""
        ...

    async def exists(self, key: str) -> bool:
        """Returns whether an asset is stored under `key`."""
        ...

    async def delete(self, key: str) -> bool:
        """Removes the asset under `key`; returns whether there was one. Deleting a missing asset is not an
        error, so a retried deletion converges."""
        ...

    async def prefix_size(self, prefix: str) -> int:
        """The total size in bytes of every asset directly under `prefix` (one job's folder); 0 when empty."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Removes every asset directly under `prefix` (a cancelled job's folder); returns how many."""
        ...

    def uri(self, key: str) -> str:
        """Returns the URI clients fetch the asset from."""
        ...

    async def signed_uri(self, key: str) -> str:
        """Returns a URI clients can fetch the asset from now; a remote store signs it for a limited time."""
        ...

    async def signed_uris(self, keys: Sequence[str]) -> list[str]:
        """`signed_uri` for many keys at once, in order; an empty string for a key with no asset (deleted)."""
        ...
