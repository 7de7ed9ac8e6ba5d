"""Asset storage on both planes: the local folder (embedded default) and Supabase Storage (production)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.environment import ConfigError, Environment
from services.storage.base import (
    AssetMissingError,
    AssetStorage,
    StorageKeyError,
    StorageUnavailableError,
    new_key,
    validate_key,
)
from services.storage.factory import read_storage_settings
from services.storage.local import LocalAssetStorage
from services.storage.supabase import SupabaseAssetStorage
from tests.servers.supabase_storage import SupabaseStorageServer

SERVICE_KEY = "service-role-test-key"


@dataclass
class Store:
    """A store under test and, for Supabase, the server behind it."""

    storage: AssetStorage
    server: SupabaseStorageServer | None


@pytest.fixture(params=["local", "supabase"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, SupabaseStorageServer | None]]:
    """Which store, and a Supabase-compatible server on 127.0.0.1 when it is Supabase."""
    if request.param == "local":
        yield "local", None
        return
    server = SupabaseStorageServer(tmp_path / "supabase", service_key=SERVICE_KEY)
    server.start()
    try:
        yield "supabase", server
    finally:
        server.stop()


@pytest.fixture
async def store(backend: tuple[str, SupabaseStorageServer | None], tmp_path: Path) -> AsyncIterator[Store]:
    """The store, made inside the test's loop and closed after it."""
    _, server = backend
    if server is None:
        yield Store(LocalAssetStorage(tmp_path / "local"), None)
        return
    remote = await SupabaseAssetStorage.create(
        server.url,
        SERVICE_KEY,
        "stillpoint",
        cache_dir=tmp_path / "cache",
        signed_url_expiry_seconds=60,
    )
    try:
        yield Store(remote, server)
    finally:
        await remote.aclose()


@pytest.mark.parametrize("key", ["../x", "/abs/path", "a/../../b", "UPPER/case", "", "a//b", "a/b/"])
def test_keys_that_could_escape_or_are_malformed_are_refused(key: str) -> None:
    with pytest.raises(StorageKeyError):
        validate_key(key)


def test_new_keys_are_unique_and_valid() -> None:
    keys = {new_key("videos/0123456789abcdef", "quick.mp4") for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert validate_key(key) == key


async def test_bytes_and_files_come_back_identical(store: Store, tmp_path: Path) -> None:
    video = tmp_path / "video.mp4"
    video.write_bytes(bytes(range(256)) * 4000)
    stored_file = await store.storage.put_file("videos/abc/1.quick.mp4", video, "video/mp4")
    stored_bytes = await store.storage.put_bytes("images/a.png", b"png-bytes", "image/png")
    assert stored_file.size_bytes == video.stat().st_size
    assert (await store.storage.local_path(stored_file.key)).read_bytes() == video.read_bytes()
    assert (await store.storage.local_path(stored_bytes.key)).read_bytes() == b"png-bytes"
    assert not list(tmp_path.rglob("*.partial"))


async def test_signed_uri_fetches_the_asset_without_credentials(store: Store) -> None:
    await store.storage.put_bytes("narrations/abc/n.wav", b"RIFF-narration", "audio/wav")
    uri = await store.storage.signed_uri("narrations/abc/n.wav")
    assert await asyncio.to_thread(_fetch, uri) == b"RIFF-narration"


async def test_existence_and_missing_assets_are_reported(store: Store) -> None:
    assert not await store.storage.exists("images/none.png")
    with pytest.raises(AssetMissingError):
        await store.storage.local_path("images/none.png")
    await store.storage.put_bytes("images/some.png", b"x", "image/png")
    assert await store.storage.exists("images/some.png")


async def test_delete_removes_one_asset_and_deleting_a_missing_one_is_not_an_error(store: Store) -> None:
    await store.storage.put_bytes("images/0123456789abcdef.png", b"png", "image/png")
    await store.storage.put_bytes("images/fedcba9876543210.png", b"png", "image/png")

    assert await store.storage.delete("images/0123456789abcdef.png")

    assert not await store.storage.exists("images/0123456789abcdef.png")
    assert await store.storage.exists("images/fedcba9876543210.png")
    assert not await store.storage.delete("images/0123456789abcdef.png")


async def test_prefix_size_adds_up_one_folder_alone(store: Store) -> None:
    await store.storage.put_bytes("videos/0123456789abcdef/a.mp4", b"x" * 1000, "video/mp4")
    await store.storage.put_bytes("videos/0123456789abcdef/b.mp4", b"x" * 234, "video/mp4")
    await store.storage.put_bytes("videos/fedcba9876543210/c.mp4", b"x" * 99, "video/mp4")

    assert await store.storage.prefix_size("videos/0123456789abcdef") == 1234
    assert await store.storage.prefix_size("videos/00000000000000aa") == 0


@pytest.fixture
async def supabase_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A Supabase store alone, for what only Supabase has: HTTP headers and refused overwrites."""
    with SupabaseStorageServer(tmp_path / "supabase", service_key=SERVICE_KEY) as server:
        remote = await SupabaseAssetStorage.create(
            server.url, SERVICE_KEY, "stillpoint", cache_dir=tmp_path / "c"
        )
        try:
            yield Store(remote, server)
        finally:
            await remote.aclose()


async def test_supabase_objects_carry_content_type_and_long_cache_headers(supabase_store: Store) -> None:
    store = supabase_store
    assert store.server is not None
    await store.storage.put_bytes("videos/abc/2.enhanced.mp4", b"mp4", "video/mp4")
    stored = store.server.stored_object("stillpoint", "videos/abc/2.enhanced.mp4")
    assert stored is not None
    assert stored.content_type == "video/mp4"
    assert "31536000" in stored.cache_control


async def test_supabase_never_overwrites_an_existing_key(supabase_store: Store) -> None:
    store = supabase_store
    await store.storage.put_bytes("images/once.png", b"first", "image/png")
    with pytest.raises(StorageUnavailableError, match=r"already exists|Duplicate"):
        await store.storage.put_bytes("images/once.png", b"second", "image/png")
    assert (await store.storage.local_path("images/once.png")).read_bytes() == b"first"


async def test_concurrent_downloads_of_one_key_share_one_copy(store: Store) -> None:
    await store.storage.put_bytes("images/shared.png", b"shared", "image/png")
    paths = await asyncio.gather(*(store.storage.local_path("images/shared.png") for _ in range(5)))
    assert len(set(paths)) == 1


def test_supabase_settings_fail_fast_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SUPABASE_URL"):
        read_storage_settings(Environment({"STILLPOINT_STORAGE": "supabase"}), tmp_path)
    with pytest.raises(ConfigError, match="SUPABASE_KEY"):
        read_storage_settings(
            Environment({"STILLPOINT_STORAGE": "supabase", "SUPABASE_URL": "https://p.supabase.co"}), tmp_path
        )
    settings = read_storage_settings(
        Environment(
            {
                "STILLPOINT_STORAGE": "supabase",
                "SUPABASE_URL": "https://p.supabase.co",
                "SUPABASE_KEY": "eyJsecret",
            }
        ),
        tmp_path,
    )
    assert "eyJsecret" not in repr(settings)
    assert settings.bucket == "stillpoint"


def _fetch(uri: str) -> bytes:
    with urllib.request.urlopen(uri, timeout=10) as response:
        data: bytes = response.read()
    return data
