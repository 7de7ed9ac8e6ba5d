"""Transcript and image generation behind caches, with the provider chosen by configuration."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from services.cache import InProcessCache
from services.content import painter, transcripts
from services.content.errors import InvalidInputError
from services.pause_marks import count_spoken_words
from services.storage import AssetStorage, new_key

# Bump when the offline composer's output changes, so cached scripts from an older composer are not reused.
TRANSCRIPT_PROMPT_VERSION = "offline-v1"
_SENTENCE_END = re.compile(r"(?<=[.!?\]])\s+")


class TranscriptProvider(Protocol):
    """Writes a meditation script from source content, streaming it in pieces."""

    @property
    def name(self) -> str:
        """What writes the scripts, for events and cache keys."""
        ...

    def stream(self, source_text: str) -> AsyncIterator[str]:
        """Yields consecutive pieces of the script."""
        ...


class ImageProvider(Protocol):
    """Makes a PNG image for a prompt."""

    @property
    def name(self) -> str:
        """What makes the images, for events and cache keys."""
        ...

    async def generate(self, prompt: str, width_pixels: int, height_pixels: int) -> bytes:
        """Returns PNG bytes."""
        ...


class OfflineTranscriptProvider:
    """The embedded composer: a deterministic script built from the conversation's own themes."""

    name = "offline"

    async def stream(self, source_text: str) -> AsyncIterator[str]:
        """Composes off the event loop, then yields the script sentence by sentence as a model would."""
        script = await asyncio.to_thread(transcripts.compose_meditation, source_text)
        pieces = _SENTENCE_END.split(script)
        for index, piece in enumerate(pieces):
            yield piece if index == len(pieces) - 1 else piece + " "


class OfflineImageProvider:
    """The embedded painter: a procedural landscape seeded from the prompt, painted in a worker process."""

    name = "offline"

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    async def generate(self, prompt: str, width_pixels: int, height_pixels: int) -> bytes:
        """Paints in the executor so the event loop keeps answering while it works."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, painter.paint_landscape, prompt, width_pixels, height_pixels
        )


@dataclass(frozen=True)
class TranscriptDelta:
    """More script text, continuing where the previous piece ended."""

    text: str


@dataclass(frozen=True)
class TranscriptResult:
    """The whole script."""

    text: str
    word_count: int
    is_cached: bool
    provider: str


@dataclass(frozen=True)
class GeneratedImage:
    """An image in asset storage."""

    storage_key: str
    uri: str
    width_pixels: int
    height_pixels: int
    is_cached: bool
    provider: str


class TranscriptGenerator:
    """Writes scripts through the provider, with a cache keyed by source content and prompt version."""

    def __init__(self, provider: TranscriptProvider, cache: InProcessCache) -> None:
        self._provider = provider
        self._cache = cache

    def cache_key(self, source_text: str) -> str:
        """The cache key: a hash of the source content, the provider and the prompt version."""
        digest = hashlib.sha256(source_text.encode()).hexdigest()
        return f"transcript:{self._provider.name}:{TRANSCRIPT_PROMPT_VERSION}:{digest}"

    async def generate(
        self, source_text: str, *, skip_cache: bool = False
    ) -> AsyncIterator[TranscriptDelta | TranscriptResult]:
        """Streams deltas while the provider writes, then the whole script; a hit yields only the result."""
        if not source_text.strip():
            raise InvalidInputError(
                "source_text", "is empty: collect source content from a conversation first"
            )
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        async def write() -> bytes:
            pieces: list[str] = []
            async for piece in self._provider.stream(source_text):
                pieces.append(piece)
                deltas.put_nowait(piece)
            return "".join(pieces).strip().encode()

        lookup = asyncio.create_task(
            self._cache.get_or_compute(self.cache_key(source_text), write, skip_cache=skip_cache)
        )
        lookup.add_done_callback(lambda _: deltas.put_nowait(None))
        try:
            while (piece := await deltas.get()) is not None:
                yield TranscriptDelta(piece)
            result = await lookup
        finally:
            if not lookup.done():
                lookup.cancel()
        text = result.value.decode()
        yield TranscriptResult(
            text=text,
            word_count=count_spoken_words(text),
            is_cached=result.is_cached,
            provider=self._provider.name,
        )


class ImageGenerator:
    """Makes and stores images through the provider, with a cache from prompt and size to storage key."""

    def __init__(self, provider: ImageProvider, cache: InProcessCache, storage: AssetStorage) -> None:
        self._provider = provider
        self._cache = cache
        self._storage = storage

    async def generate(
        self, prompt: str, width_pixels: int, height_pixels: int, *, skip_cache: bool = False
    ) -> GeneratedImage:
        """Returns the stored image for the prompt, making and storing it on a cache miss."""
        if not prompt.strip():
            raise InvalidInputError("prompt", "is empty: create an image prompt first")
        if (width_pixels, height_pixels) not in painter.SUPPORTED_SIZES:
            sizes = ", ".join(f"{w}x{h}" for w, h in sorted(painter.SUPPORTED_SIZES))
            raise InvalidInputError("width_pixels/height_pixels", f"use one of {sizes}")
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        cache_key = f"image:{self._provider.name}:{width_pixels}x{height_pixels}:{digest}"

        async def make() -> bytes:
            png = await self._provider.generate(prompt, width_pixels, height_pixels)
            stored = await self._storage.put_bytes(new_key("images", "png"), png, "image/png")
            return stored.key.encode()

        result = await self._cache.get_or_compute(cache_key, make, skip_cache=skip_cache)
        storage_key = result.value.decode()
        if result.is_cached and not await self._is_stored(storage_key):
            # The cache outlived the asset (storage was cleaned): make it again, never hand out a dead URI
            result = await self._cache.get_or_compute(cache_key, make, skip_cache=True)
            storage_key = result.value.decode()
        return GeneratedImage(
            storage_key=storage_key,
            uri=self._storage.uri(storage_key),
            width_pixels=width_pixels,
            height_pixels=height_pixels,
            is_cached=result.is_cached,
            provider=self._provider.name,
        )

    async def _is_stored(self, storage_key: str) -> bool:
        return await self._storage.exists(storage_key)
