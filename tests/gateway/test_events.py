"""How events are stored: an asset by its storage key alone, and older logs that stored URIs still read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.gateway.asset_links import AssetLinks
from services.gateway.events import (
    Accepted,
    ImageReady,
    PlaylistReady,
    VideoQuality,
    VideoReady,
    decode_event,
    encode_event,
)

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def test_an_asset_event_is_stored_with_its_key_and_never_a_uri() -> None:
    event = VideoReady(
        quality=VideoQuality.QUICK,
        storage_key="videos/0123456789abcdef/a.quick.mp4",
        duration_seconds=60.0,
        size_bytes=1000,
        width_pixels=1280,
        height_pixels=720,
        encoder="libx264",
    )
    stored = json.loads(encode_event(1.5, event))
    assert stored["event"]["storage_key"] == event.storage_key
    assert "uri" not in stored["event"]
    assert decode_event(3, NOW, encode_event(1.5, event)).event == event
    with pytest.raises(ValueError, match="storage key only"):
        encode_event(
            1.5,
            ImageReady(
                storage_key="images/a.png",
                width_pixels=1,
                height_pixels=1,
                is_cached=False,
                uri="https://elsewhere.example/a.png",
            ),
        )


async def test_an_event_logged_with_a_uri_before_keys_is_read_with_that_uri() -> None:
    legacy = json.dumps(
        {
            "kind": "image_ready",
            "elapsed_seconds": 2.0,
            "event": {
                "uri": "file:///var/storage/images/a.png",
                "width_pixels": 8,
                "height_pixels": 8,
                "is_cached": False,
                "provider": "offline",
                "fallback_reason": "",
            },
        }
    ).encode()
    read = await AssetLinks(media=None).for_event(decode_event(4, NOW, legacy), "alice")
    assert isinstance(read.event, ImageReady)
    assert read.event.uri == "file:///var/storage/images/a.png"


class CountingSigner:
    """Signs keys as `signed:<key>`, counting requests; a key it was told is gone gets an empty URI."""

    def __init__(self, gone: frozenset[str] = frozenset()) -> None:
        self.requests: list[list[str]] = []
        self.owners: list[str] = []
        self._gone = gone

    async def asset_uris(self, storage_keys: list[str], owner: str) -> list[str]:
        self.requests.append(list(storage_keys))
        self.owners.append(owner)
        return ["" if key in self._gone else f"signed:{key}" for key in storage_keys]


async def test_a_replayed_page_is_signed_in_one_request() -> None:
    events = [
        decode_event(1, NOW, encode_event(0.0, ImageReady("images/a.png", 8, 8, is_cached=False))),
        decode_event(2, NOW, encode_event(0.1, Accepted(meditation="meditations/x", conversation="c"))),
        decode_event(3, NOW, encode_event(0.2, PlaylistReady("live/x/p.m3u8"))),
        decode_event(4, NOW, encode_event(0.3, PlaylistReady("live/x/gone.m3u8"))),
    ]
    signer = CountingSigner(gone=frozenset({"live/x/gone.m3u8"}))

    linked = await AssetLinks(media=signer).for_events(events, "alice")  # type: ignore[arg-type]

    assert len(signer.requests) == 1
    assert signer.owners == ["alice"]
    assert [getattr(event.event, "uri", None) for event in linked] == [
        "signed:images/a.png",
        None,
        "signed:live/x/p.m3u8",
        "",
    ]
