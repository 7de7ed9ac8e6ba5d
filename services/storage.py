"""Asset storage: server-made keys, atomic writes, and URIs that clients can fetch."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.environment import ConfigError, Environment

# Keys are made by the servers, never taken from clients, and this pattern is checked again on every use
# so that no key can step outside the storage root.
_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_.-]*)*$")


_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{1,62}$")


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

    async def put_mutable_bytes(self, key: str, data: bytes, content_type: str) -> StoredAsset:
        """Writes an object meant to be rewritten in place, such as a live playlist; never cached long."""
        ...

    async def local_path(self, key: str) -> Path:
        """Returns a local path holding the asset, fetching it first if storage is remote."""
        ...

    async def exists(self, key: str) -> bool:
        """Returns whether an asset is stored under `key`."""
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

    async def put_mutable_bytes(self, key: str, data: bytes, content_type: str) -> StoredAsset:
        """Replaces the file atomically: a reader sees the old version or the new one, never half of one."""
        return await self.put_bytes(key, data, content_type)

    async def local_path(self, key: str) -> Path:
        """Returns the asset's own path; it must exist."""
        path = self._path(key)
        if not await asyncio.to_thread(path.is_file):
            raise AssetMissingError(key)
        return path

    async def exists(self, key: str) -> bool:
        """Returns whether the asset's file exists."""
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete_prefix(self, prefix: str) -> int:
        """Removes the folder's files (and the folder)."""
        folder = self._path(prefix)

        def remove() -> int:
            if not folder.is_dir():
                return 0
            count = sum(1 for path in folder.iterdir() if path.is_file())
            shutil.rmtree(folder)
            return count

        return await asyncio.to_thread(remove)

    def uri(self, key: str) -> str:
        """A file URI: clients on this machine read it directly."""
        return self._path(key).as_uri()

    async def signed_uri(self, key: str) -> str:
        """The file URI: a local file needs no signature."""
        return self.uri(key)


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


@dataclass(frozen=True)
class StorageSettings:
    """Which asset store to use and how to reach it; read once at start-up."""

    kind: str
    local_root: Path
    supabase_url: str = ""
    supabase_key: str = ""
    bucket: str = "stillpoint"
    signed_url_expiry_seconds: int = 3600
    cache_dir: Path | None = None

    def __repr__(self) -> str:
        # Settings may reach a log line or a traceback: never show the service key.
        return (
            f"StorageSettings(kind={self.kind!r}, bucket={self.bucket!r}, supabase_url={self.supabase_url!r})"
        )


def read_storage_settings(environment: Environment, var_root: Path) -> StorageSettings:
    """STILLPOINT_STORAGE=local (a folder, the default) or supabase (SUPABASE_URL, SUPABASE_KEY, bucket)."""
    kind = environment.choice("STILLPOINT_STORAGE", "local", ("local", "supabase"))
    local_root = environment.directory("STILLPOINT_STORAGE_DIR", var_root / "storage")
    if kind == "local":
        return StorageSettings(kind=kind, local_root=local_root)
    url = environment.text("SUPABASE_URL", "")
    key = environment.text("SUPABASE_KEY", "")
    if not url.startswith(("https://", "http://")):
        raise ConfigError("SUPABASE_URL must be the project URL, such as https://<project>.supabase.co")
    if not key:
        raise ConfigError("SUPABASE_KEY is not set: STILLPOINT_STORAGE=supabase needs the service key")
    bucket = environment.text("STILLPOINT_SUPABASE_BUCKET", "stillpoint")
    if not _BUCKET_PATTERN.fullmatch(bucket):
        raise ConfigError(f"STILLPOINT_SUPABASE_BUCKET={bucket!r} is not a bucket name (a-z, 0-9, - and _)")
    return StorageSettings(
        kind=kind,
        local_root=local_root,
        supabase_url=url.rstrip("/"),
        supabase_key=key,
        bucket=bucket,
        signed_url_expiry_seconds=environment.integer(
            "STILLPOINT_SIGNED_URL_EXPIRY_SECONDS", 3600, minimum=60, maximum=7 * 24 * 3600
        ),
        cache_dir=environment.directory("STILLPOINT_STORAGE_CACHE_DIR", var_root / "storage-cache"),
    )


@asynccontextmanager
async def open_asset_storage(settings: StorageSettings) -> AsyncIterator[AssetStorage]:
    """The process's one store, made inside the running loop and closed on the way out."""
    if settings.kind == "local":
        yield LocalAssetStorage(settings.local_root)
        return
    # Imported here: the Supabase client is only loaded by processes that use it.
    from services.supabase_storage import SupabaseAssetStorage

    remote = await SupabaseAssetStorage.create(
        settings.supabase_url,
        settings.supabase_key,
        settings.bucket,
        cache_dir=settings.cache_dir or settings.local_root,
        signed_url_expiry_seconds=settings.signed_url_expiry_seconds,
    )
    try:
        yield remote
    finally:
        await remote.aclose()
