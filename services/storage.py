"""Asset storage: server-made keys, atomic writes, and URIs that clients can fetch."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
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

    async def put_file(self, key: str, source_path: Path, content_type: str) -> StoredAsset:
        """Stores a local file under `key`."""
        ...

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredAsset:
        """Stores bytes under `key`."""
        ...

    async def local_path(self, key: str) -> Path:
        """Returns a local path holding the asset, fetching it first if storage is remote."""
        ...

    async def exists(self, key: str) -> bool:
        """Returns whether an asset is stored under `key`."""
        ...

    def uri(self, key: str) -> str:
        """Returns the URI clients fetch the asset from."""
        ...


class LocalAssetStorage:
    """Keeps assets in a folder; the embedded default for a single machine."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        self._root.mkdir(parents=True, exist_ok=True)

    @property
    def root(self) -> Path:
        """The folder assets are kept in."""
        return self._root

    def _path(self, key: str) -> Path:
        return self._root / validate_key(key)

    async def put_file(self, key: str, source_path: Path, content_type: str) -> StoredAsset:
        """Copies (or, on the same filesystem, moves) a file into storage atomically."""
        target = self._path(key)
        size_bytes = await asyncio.to_thread(_install_file, source_path, target)
        return StoredAsset(key=key, uri=self.uri(key), size_bytes=size_bytes, content_type=content_type)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredAsset:
        """Writes bytes into storage atomically."""
        target = self._path(key)
        await asyncio.to_thread(_write_atomically, target, data)
        return StoredAsset(key=key, uri=self.uri(key), size_bytes=len(data), content_type=content_type)

    async def local_path(self, key: str) -> Path:
        """Returns the asset's own path; it must exist."""
        path = self._path(key)
        if not await asyncio.to_thread(path.is_file):
            raise AssetMissingError(key)
        return path

    async def exists(self, key: str) -> bool:
        """Returns whether the asset's file exists."""
        return await asyncio.to_thread(self._path(key).is_file)

    def uri(self, key: str) -> str:
        """A file URI: clients on this machine read it directly."""
        return self._path(key).as_uri()


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _install_file(source: Path, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target.stat().st_size
