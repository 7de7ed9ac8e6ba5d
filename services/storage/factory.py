"""The one place the asset store is chosen and opened: its settings, read once, and every backend."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from services.environment import ConfigError, Environment
from services.storage.base import AssetStorage
from services.storage.local import LocalAssetStorage

_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{1,62}$")


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
    from services.storage.supabase import SupabaseAssetStorage

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
