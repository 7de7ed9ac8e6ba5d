"""Asset storage in a local folder, with atomic writes: the embedded default for a single machine."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from services import metrics
from services.storage.base import AssetMissingError, StoredAsset, validate_key


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

    async def put_file(
        self, key: str, source_path: Path, content_type: str, *, signed: bool = True, read_back: bool = False
    ) -> StoredAsset:
        """Copies (or, on the same filesystem, moves) a file into storage atomically; it is local already,
        whether or not it is read back."""
        target = self._path(key)
        size_bytes = await asyncio.to_thread(_install_file, source_path, target)
        metrics.record_upload("local", key, size_bytes)
        return StoredAsset(key=key, uri=self.uri(key), size_bytes=size_bytes, content_type=content_type)

    async def put_bytes(
        self, key: str, data: bytes, content_type: str, *, signed: bool = True, read_back: bool = False
    ) -> StoredAsset:
        """Writes bytes into storage atomically."""
        target = self._path(key)
        await asyncio.to_thread(_write_atomically, target, data)
        metrics.record_upload("local", key, len(data))
        return StoredAsset(key=key, uri=self.uri(key), size_bytes=len(data), content_type=content_type)

    async def put_mutable_bytes(
        self, key: str, data: bytes, content_type: str, *, signed: bool = True
    ) -> StoredAsset:
        """Replaces the file atomically: a reader sees the old version or the new one, never half of one.
        A local file's URI costs nothing, so it is always given, `signed` or not."""
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

    async def delete(self, key: str) -> bool:
        """Removes the asset's file, if it is there."""
        path = self._path(key)

        def remove() -> bool:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(remove)

    async def prefix_size(self, prefix: str) -> int:
        """Adds up the sizes of the folder's files."""
        folder = self._path(prefix)

        def measure() -> int:
            if not folder.is_dir():
                return 0
            return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())

        return await asyncio.to_thread(measure)

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

    async def signed_uris(self, keys: Sequence[str]) -> list[str]:
        """The file URIs of the keys whose files exist, in order; an empty string for any other."""

        def existing() -> list[str]:
            return [self.uri(key) if self._path(key).is_file() else "" for key in keys]

        return await asyncio.to_thread(existing)


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
