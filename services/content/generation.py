"""Transcript and image generation behind caches, with the provider chosen by configuration."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from services import metrics, tracing
from services.cache.base import CacheResult, ResultCache
from services.content import painter, script_composer
from services.content.errors import InvalidInputError
from services.content.spoken_safety import (
    CRISIS_REASON_CONVERSATION,
    CRISIS_REASON_SCRIPT,
    DEFAULT_CRISIS_RESOURCE_TEXT,
    ScriptLength,
    ScriptRefusal,
    SpokenOutcome,
    check_sentence,
    compose_grounding_script,
    is_within_length,
    signals_crisis,
)
from services.image_sizes import SUPPORTED_SIZES_PIXELS, describe_supported_sizes
from services.openai_api import ProviderCallError, ProviderFailureKind
from services.script_marks import count_spoken_words
from services.sentences import SentenceSplitter, split_sentences
from services.storage.base import AssetStorage, new_key

logger = logging.getLogger(__name__)

# Bump when the offline composer's output changes, so scripts cached from an older composer are not reused.
OFFLINE_COMPOSER_VERSION = "offline-v3"
# What `provider` names when the listener hears the grounding script rather than a written meditation.
GROUNDING_PROVIDER = "grounding"


class TranscriptProvider(Protocol):
    """Writes a meditation script from source content, streaming it in pieces."""

    @property
    def name(self) -> str:
        """What writes the scripts, for events."""
        ...

    @property
    def cache_identity(self) -> str:
        """What, besides the source, decides the script (model, prompt version): part of the cache key."""
        ...

    def stream(self, source_text: str) -> AsyncIterator[str]:
        """Yields consecutive pieces of the script; raises ProviderCallError when the provider fails."""
        ...


class ImageProvider(Protocol):
    """Makes a PNG image for a prompt."""

    @property
    def name(self) -> str:
        """What makes the images, for events."""
        ...

    @property
    def cache_identity(self) -> str:
        """What, besides the prompt, decides the image (model, size): part of the cache key."""
        ...

    async def generate(self, prompt: str, width_pixels: int, height_pixels: int) -> bytes:
        """Returns PNG bytes in the requested shape; raises ProviderCallError when the provider fails."""
        ...


class OfflineTranscriptProvider:
    """The embedded composer: a deterministic script built from the conversation's own themes."""

    name = "offline"
    cache_identity = OFFLINE_COMPOSER_VERSION

    async def stream(self, source_text: str) -> AsyncIterator[str]:
        """Composes off the event loop, then yields the script sentence by sentence as a model would."""
        script = await asyncio.to_thread(script_composer.compose_meditation, source_text)
        pieces = split_sentences(script)
        for index, piece in enumerate(pieces):
            yield piece if index == len(pieces) - 1 else piece + " "


class OfflineImageProvider:
    """The embedded painter: a procedural landscape seeded from the prompt, painted in a worker process."""

    name = "offline"
    cache_identity = "painter-v1"

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
class TranscriptRestart:
    """The text streamed so far is void: the provider failed, and the fallback writes the script afresh."""

    reason: str


@dataclass(frozen=True)
class TranscriptResult:
    """The whole script."""

    text: str
    word_count: int
    is_cached: bool
    provider: str
    fallback_reason: str = ""
    # CRISIS_GROUNDING when the conversation or the written script signalled a risk of suicide or
    # self-harm, and the text is the grounding script; `outcome_reason` then says which of the two.
    spoken_outcome: SpokenOutcome = SpokenOutcome.ORDINARY
    outcome_reason: str = ""
    # The transcripts cache's key the text is kept under; empty when it is not cached (the grounding script).
    cache_key: str = ""


@dataclass(frozen=True)
class GeneratedImage:
    """An image in asset storage."""

    storage_key: str
    width_pixels: int
    height_pixels: int
    is_cached: bool
    provider: str
    fallback_reason: str = ""
    # The images cache's key that points at `storage_key`.
    cache_key: str = ""


TranscriptEvent = TranscriptDelta | TranscriptRestart | TranscriptResult


class TranscriptGenerator:
    """Writes scripts through the provider, with a cache keyed by source content, model and prompt version.

    Nothing is spoken unchecked (spoken_safety): a source that signals a risk of suicide or self-harm gets
    the grounding script without the provider being asked; a written script is released sentence by sentence
    only once each sentence passes the check. A crisis signal in the script voids what was streamed
    (TranscriptRestart) and ends in the grounding script; any other refusal is a failure of the provider.
    With a fallback, a failed provider call is announced (TranscriptRestart) and the fallback writes the
    script instead; its result is cached under the fallback's own key, never under the failed provider's.
    """

    def __init__(
        self,
        provider: TranscriptProvider,
        cache: ResultCache,
        fallback: TranscriptGenerator | None = None,
        *,
        crisis_resource_text: str = DEFAULT_CRISIS_RESOURCE_TEXT,
    ) -> None:
        self._provider = provider
        self._cache = cache
        self._fallback = fallback
        self._crisis_resource_text = crisis_resource_text

    async def forget(self, cache_key: str) -> bool:
        """Forgets a cached script (its fallback shares the cache); returns whether one was cached."""
        return await self._cache.forget(cache_key)

    def cache_key(self, source_text: str) -> str:
        """The cache key: a hash of the source content, the provider and what decides its output."""
        digest = hashlib.sha256(source_text.encode()).hexdigest()
        return f"transcript:{self._provider.name}:{self._provider.cache_identity}:{digest}"

    async def generate(
        self, source_text: str, *, skip_cache: bool = False, is_crisis: bool = False
    ) -> AsyncIterator[TranscriptEvent]:
        """Streams deltas while the provider writes, then the whole script; a hit yields only the result.

        `is_crisis` says the whole conversation signalled a risk (CollectSourceContent's finding), which the
        source text, a cut of it, may no longer show."""
        if not source_text.strip():
            raise InvalidInputError(
                "source_text", "is empty: collect source content from a conversation first"
            )
        if is_crisis or await asyncio.to_thread(signals_crisis, source_text):
            async for event in self._grounding(CRISIS_REASON_CONVERSATION):
                yield event
            return
        failure: ProviderCallError | None = None
        try:
            async for event in self._generate(source_text, skip_cache):
                yield event
        except _CrisisInScriptError:
            yield TranscriptRestart(reason=CRISIS_REASON_SCRIPT)
            async for event in self._grounding(CRISIS_REASON_SCRIPT):
                yield event
            return
        except ProviderCallError as error:
            if self._fallback is None:
                raise
            failure = error
        if failure is None or self._fallback is None:
            return
        logger.warning("transcript provider %s failed, using the fallback: %s", self._provider.name, failure)
        metrics.record_fallback(self._provider.name, "transcript")
        yield TranscriptRestart(reason=failure.message)
        async for event in self._fallback.generate(source_text, skip_cache=skip_cache):
            if isinstance(event, TranscriptResult):
                event = dataclasses.replace(event, fallback_reason=failure.message)
            yield event

    async def _grounding(self, reason: str) -> AsyncIterator[TranscriptEvent]:
        """Streams the grounding script sentence by sentence, as a written script would arrive."""
        sentences = split_sentences(compose_grounding_script(self._crisis_resource_text))
        pieces = [sentence + " " for sentence in sentences[:-1]] + sentences[-1:]
        for piece in pieces:
            yield TranscriptDelta(piece)
        # As the offline composer's pieces do, the deltas add up to exactly the script.
        script = "".join(pieces)
        yield TranscriptResult(
            text=script,
            word_count=count_spoken_words(script),
            is_cached=False,
            provider=GROUNDING_PROVIDER,
            spoken_outcome=SpokenOutcome.CRISIS_GROUNDING,
            outcome_reason=reason,
        )

    async def _generate(self, source_text: str, skip_cache: bool) -> AsyncIterator[TranscriptEvent]:
        cache_key = self.cache_key(source_text)
        result: CacheResult | None = None
        # At most twice: a poisoned cached script is evicted and written afresh.
        for is_rewrite in (False, True):
            async for item in self._written_or_cached(source_text, cache_key, skip_cache or is_rewrite):
                if isinstance(item, CacheResult):
                    result = item
                else:
                    yield item
            assert result is not None  # the lookup's result is always the last item
            if not result.is_cached:
                break
            # Cached before this check existed, by a replica with another list, or damaged: checked all
            # the same, and never served when it fails.
            poison = await asyncio.to_thread(_poison_in_script, result.value, self._provider.name)
            if poison is None:
                break
            await self._evict(cache_key, poison)
        assert result is not None
        text = result.value.decode()
        yield TranscriptResult(
            text=text,
            word_count=count_spoken_words(text),
            is_cached=result.is_cached,
            provider=self._provider.name,
            cache_key=cache_key,
        )

    async def _evict(self, cache_key: str, why: str) -> None:
        """Forgets a poisoned entry, logging its key (a hash of the source), never its text."""
        logger.warning("transcripts cache: evicted %s (%s); writing it again", cache_key, why)
        await self._cache.forget(cache_key)

    async def _written_or_cached(
        self, source_text: str, cache_key: str, skip_cache: bool
    ) -> AsyncIterator[TranscriptDelta | CacheResult]:
        """The cached script, or the provider's checked deltas as it writes; the lookup's result last."""
        deltas: asyncio.Queue[str | None] = asyncio.Queue()
        provider_name = self._provider.name

        async def write() -> bytes:
            pieces: list[str] = []
            splitter = SentenceSplitter()
            # Written but not yet released: only whole sentences that pass the check reach the narrator,
            # as the very text written (paragraph breaks included), so the deltas add up to the script.
            held = ""
            length = ScriptLength()
            # A refused script counts as the call's failure (rejected): the provider wrote it.
            with (
                metrics.provider_call(provider_name, "transcript"),
                tracing.provider_call(provider_name, "transcript"),
            ):
                async for piece in self._provider.stream(source_text):
                    pieces.append(piece)
                    length.add_written(piece)
                    held += piece
                    for sentence in splitter.feed(piece):
                        _check_sentence(sentence, provider_name)
                        end = held.index(sentence) + len(sentence)
                        length.add_released(held[:end])
                        deltas.put_nowait(held[:end])
                        held = held[end:]
                    if not length.is_within(held):
                        raise _refused(ScriptRefusal.TOO_LONG, provider_name)
                for sentence in splitter.finish():
                    _check_sentence(sentence, provider_name)
            if held.strip():
                deltas.put_nowait(held)
            return "".join(pieces).strip().encode()

        lookup = asyncio.create_task(self._cache.get_or_compute(cache_key, write, skip_cache=skip_cache))
        lookup.add_done_callback(lambda _: deltas.put_nowait(None))
        try:
            while (piece := await deltas.get()) is not None:
                yield TranscriptDelta(piece)
            result = await lookup
        finally:
            if not lookup.done():
                lookup.cancel()
        yield result


class _CrisisInScriptError(Exception):
    """The written script itself signals a risk of suicide or self-harm."""


def _refused(refusal: ScriptRefusal, provider_name: str) -> ProviderCallError:
    return ProviderCallError(
        ProviderFailureKind.REJECTED,
        f"the script {provider_name} wrote was refused before narration: {refusal.value}",
    )


def _check_sentence(sentence: str, provider_name: str) -> None:
    verdict = check_sentence(sentence)
    if verdict.is_crisis:
        raise _CrisisInScriptError
    if verdict.refusal is not None:
        raise _refused(verdict.refusal, provider_name)


def _check_script(text: str, provider_name: str) -> None:
    if not is_within_length(text):
        raise _refused(ScriptRefusal.TOO_LONG, provider_name)
    for sentence in split_sentences(text):
        _check_sentence(sentence, provider_name)


def _poison_in_script(value: bytes, provider_name: str) -> str | None:
    """Why a cached script must not be served (it does not decode, or fails the script checks), or None.
    The reason never quotes the script."""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return "not UTF-8"
    try:
        _check_script(text, provider_name)
    except _CrisisInScriptError:
        return "it signals a crisis"
    except ProviderCallError as error:
        return error.message
    return None


class ImageGenerator:
    """Makes and stores images through the provider, with a cache from prompt, model and size to the asset.

    With a fallback, a failed provider call makes the fallback paint the image, reported with the reason.
    """

    def __init__(
        self,
        provider: ImageProvider,
        cache: ResultCache,
        storage: AssetStorage,
        fallback: ImageGenerator | None = None,
    ) -> None:
        self._provider = provider
        self._cache = cache
        self._storage = storage
        self._fallback = fallback

    async def erase(self, cache_key: str, storage_key: str) -> bool:
        """Forgets a cached image (its fallback shares the cache) and deletes its file; returns whether the
        entry was cached. The entry goes first: it must never point at a deleted file."""
        is_forgotten = await self._cache.forget(cache_key)
        await self._storage.delete(storage_key)
        return is_forgotten

    async def generate(
        self, prompt: str, width_pixels: int, height_pixels: int, *, skip_cache: bool = False
    ) -> GeneratedImage:
        """Returns the stored image for the prompt, making and storing it on a cache miss."""
        if not prompt.strip():
            raise InvalidInputError("prompt", "is empty: create an image prompt first")
        if (width_pixels, height_pixels) not in SUPPORTED_SIZES_PIXELS:
            raise InvalidInputError("width_pixels/height_pixels", f"use one of {describe_supported_sizes()}")
        try:
            return await self._generate(prompt, width_pixels, height_pixels, skip_cache)
        except ProviderCallError as error:
            if self._fallback is None:
                raise
            logger.warning("image provider %s failed, using the fallback: %s", self._provider.name, error)
            metrics.record_fallback(self._provider.name, "image")
            image = await self._fallback.generate(prompt, width_pixels, height_pixels, skip_cache=skip_cache)
            return dataclasses.replace(image, fallback_reason=error.message)

    async def _generate(
        self, prompt: str, width_pixels: int, height_pixels: int, skip_cache: bool
    ) -> GeneratedImage:
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        identity = f"{self._provider.name}:{self._provider.cache_identity}"
        cache_key = f"image:{identity}:{width_pixels}x{height_pixels}:{digest}"

        async def make() -> bytes:
            with (
                metrics.provider_call(self._provider.name, "image"),
                tracing.provider_call(self._provider.name, "image"),
            ):
                png = await self._provider.generate(prompt, width_pixels, height_pixels)
            # A provider may answer in its own size for the shape asked: record what really came back.
            width, height = await asyncio.to_thread(_png_size, png)
            # Unsigned: the gateway signs each reader's URI when it hands the image out.
            stored = await self._storage.put_bytes(new_key("images", "png"), png, "image/png", signed=False)
            return json.dumps({"key": stored.key, "width": width, "height": height}).encode()

        result = await self._cache.get_or_compute(cache_key, make, skip_cache=skip_cache)
        entry = _image_entry(result.value)
        if result.is_cached:
            poison = await self._poison_in_entry(entry)
            if poison is not None:
                # Never served for the rest of its TTL: forgotten, and the image made again.
                logger.warning("images cache: evicted %s (%s); making it again", cache_key, poison)
                await self._cache.forget(cache_key)
                result = await self._cache.get_or_compute(cache_key, make, skip_cache=True)
                entry = _image_entry(result.value)
        if entry is None:
            raise ValueError(f"images cache: {cache_key} holds no image entry")  # made just now: a bug
        return GeneratedImage(
            storage_key=entry.storage_key,
            width_pixels=entry.width_pixels,
            height_pixels=entry.height_pixels,
            is_cached=result.is_cached,
            provider=self._provider.name,
            cache_key=cache_key,
        )

    async def _poison_in_entry(self, entry: _ImageEntry | None) -> str | None:
        """Why a cached image entry must not be served, or None."""
        if entry is None:
            return "not an image entry"
        if not await self._storage.exists(entry.storage_key):
            # The cache outlived the asset (storage was cleaned): never hand out a dead URI.
            return "its image is no longer stored"
        path = await self._storage.local_path(entry.storage_key)
        if not await asyncio.to_thread(_is_decodable_image, path):
            return "its image does not decode"
        return None


@dataclass(frozen=True)
class _ImageEntry:
    """What the images cache keeps for a prompt: where the image is, and its size."""

    storage_key: str
    width_pixels: int
    height_pixels: int


def _image_entry(value: bytes) -> _ImageEntry | None:
    """The cached entry, or None when it is not one (bad JSON, a missing or mistyped field)."""
    try:
        entry = json.loads(value)
        key, width, height = entry["key"], entry["width"], entry["height"]
    except (ValueError, TypeError, KeyError):
        return None
    if not (isinstance(key, str) and key and isinstance(width, int) and isinstance(height, int)):
        return None
    return _ImageEntry(storage_key=key, width_pixels=width, height_pixels=height)


def _is_decodable_image(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return True


def _png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
    return width, height
