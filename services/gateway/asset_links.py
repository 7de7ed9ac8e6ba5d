"""Asset URIs are made for the reader when a meditation or its events are read, never stored.

The job store and the event log keep storage keys. Whenever a client is handed an asset — an event replayed
or followed live, a meditation got, listed or cancelled — the media service makes its URI then (signed and
short-lived where storage signs, as Supabase Storage does), so a stream resumed a day later gets URIs that
work, and a URI never outlives the reader's access in a database or a log.

A value with a scheme (`file://`, `https://`) was stored before keys were: it is handed out as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from services.gateway.events import AssetEvent, Event, SequencedEvent, SubtitledEvent
from services.gateway.models import Meditation
from services.gateway.ports import MediaPort

_MEDITATION_ASSETS = (
    ("image_storage_key", "image_uri"),
    ("narration_storage_key", "narration_uri"),
    ("quick_video_storage_key", "quick_video_uri"),
    ("enhanced_video_storage_key", "enhanced_video_uri"),
)


class AssetLinks:
    """Makes asset URIs for a reader, through the media service (which holds storage's credentials)."""

    def __init__(self, media: MediaPort | None) -> None:
        # Without media (tests of the job machinery alone) nothing is signed: URIs stay empty.
        self._media = media

    async def for_event(self, recorded: SequencedEvent, owner: str) -> SequencedEvent:
        """The event with its asset's URI made now for `owner`; any other event as it is."""
        [linked] = await self.for_events([recorded], owner)
        return linked

    async def for_events(self, events: Sequence[SequencedEvent], owner: str) -> list[SequencedEvent]:
        """The events with their assets' URIs made now for `owner`, in one request for them all (a replayed
        page)."""
        keys = [key for recorded in events for key in _asset_keys(recorded.event)]
        uris = dict(zip(keys, await self._uris(keys, owner), strict=True)) if keys else {}
        return [
            recorded
            if (linked := _linked(recorded.event, uris)) is recorded.event
            else dataclasses.replace(recorded, event=linked)
            for recorded in events
        ]

    async def for_meditations(self, meditations: Sequence[Meditation], owner: str) -> list[Meditation]:
        """`owner`'s meditations with their assets' URIs made now, in one request for them all."""
        keys = [
            getattr(meditation, key_field)
            for meditation in meditations
            for key_field, _ in _MEDITATION_ASSETS
            if getattr(meditation, key_field)
        ]
        uris = dict(zip(keys, await self._uris(keys, owner), strict=True)) if keys else {}
        return [
            dataclasses.replace(
                meditation,
                **{
                    uri_field: uris.get(getattr(meditation, key_field), "")
                    for key_field, uri_field in _MEDITATION_ASSETS
                },
            )
            for meditation in meditations
        ]

    async def _uris(self, storage_keys: list[str], owner: str) -> list[str]:
        unique = [key for key in dict.fromkeys(storage_keys) if not _is_stored_uri(key)]
        signed = (
            dict(zip(unique, await self._media.asset_uris(unique, owner), strict=True))
            if (unique and self._media is not None)
            else {}
        )
        return [key if _is_stored_uri(key) else signed.get(key, "") for key in storage_keys]


def _asset_keys(event: Event) -> list[str]:
    """The storage keys an event names with no URI yet: its asset's, and the subtitles' beside a narration
    or video. A live event may come with its URI, made for its owner as it happened (the live playlist's,
    by media): an event is only ever read by its owner."""
    keys = [event.storage_key] if isinstance(event, AssetEvent) and not event.uri else []
    if isinstance(event, SubtitledEvent) and not event.subtitles_uri:
        keys.append(event.subtitles_storage_key)
    return [key for key in keys if key]


def _linked(event: Event, uris: dict[str, str]) -> Event:
    """The event with the URIs of the assets it names; the same event when it names none, or came with
    them."""
    if isinstance(event, SubtitledEvent) and event.subtitles_storage_key and not event.subtitles_uri:
        event = dataclasses.replace(event, subtitles_uri=uris[event.subtitles_storage_key])
    if isinstance(event, AssetEvent) and event.storage_key and not event.uri:
        event = dataclasses.replace(event, uri=uris[event.storage_key])
    return event


def _is_stored_uri(value: str) -> bool:
    return "://" in value
