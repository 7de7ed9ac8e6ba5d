"""Local asset storage: server-made keys, atomic writes, no way out of the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.storage import AssetMissingError, LocalAssetStorage, StorageKeyError, new_key, validate_key


@pytest.mark.parametrize("key", ["../x", "/abs/path", "a/../../b", "UPPER/case", "", "a//b", "a/b/"])
def test_keys_that_could_escape_or_are_malformed_are_refused(key: str) -> None:
    with pytest.raises(StorageKeyError):
        validate_key(key)


def test_new_keys_are_unique_and_valid() -> None:
    keys = {new_key("videos/0123456789abcdef", "quick.mp4") for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert validate_key(key) == key


async def test_put_then_read_back_under_the_root(tmp_path: Path) -> None:
    storage = LocalAssetStorage(tmp_path)
    stored = await storage.put_bytes("images/a.png", b"png-bytes", "image/png")
    path = await storage.local_path("images/a.png")
    assert path.read_bytes() == b"png-bytes"
    assert path.is_relative_to(tmp_path)
    assert stored.uri == path.as_uri()
    assert await storage.exists("images/a.png")
    assert not list(tmp_path.rglob("*.partial"))


async def test_missing_asset_is_reported(tmp_path: Path) -> None:
    storage = LocalAssetStorage(tmp_path)
    assert not await storage.exists("images/none.png")
    with pytest.raises(AssetMissingError):
        await storage.local_path("images/none.png")
