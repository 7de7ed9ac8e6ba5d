"""A cached transcript or image entry that cannot be served is evicted and made again, not served for the
rest of its TTL, and the log names its key, never its text."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from PIL import Image

from services.cache.in_process import InProcessCache
from services.content.generation import ImageGenerator, TranscriptGenerator, TranscriptResult
from services.image_sizes import LANDSCAPE_SIZE_PIXELS
from services.storage.local import LocalAssetStorage

SOURCE = "User: The garden was quiet after the rain, and I sat there a long while."
SCRIPT = "Settle into your seat. Breathe in slowly. And breathe out, letting the day go."
PROMPT = "a quiet garden after rain, soft light"
WIDTH, HEIGHT = LANDSCAPE_SIZE_PIXELS


class ScriptProvider:
    """Writes SCRIPT, counting how often it is asked."""

    name = "scripted"
    cache_identity = "v1"

    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, source_text: str) -> AsyncIterator[str]:
        self.calls += 1
        yield SCRIPT


class PngProvider:
    """Makes a small PNG of the size asked, counting how often it is asked."""

    name = "png"
    cache_identity = "v1"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, prompt: str, width_pixels: int, height_pixels: int) -> bytes:
        self.calls += 1
        out = io.BytesIO()
        Image.new("RGB", (width_pixels, height_pixels), (90, 120, 150)).save(out, format="PNG")
        return out.getvalue()


def _value(value: bytes) -> Callable[[], Awaitable[bytes]]:
    async def compute() -> bytes:
        return value

    return compute


async def _script(transcripts: TranscriptGenerator) -> TranscriptResult:
    [result] = [event async for event in transcripts.generate(SOURCE) if isinstance(event, TranscriptResult)]
    return result


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xfe\x00not text", b"Relax. Visit www.spam.example tonight."],
    ids=["not-utf8", "fails-the-checks"],
)
async def test_a_poisoned_cached_transcript_is_evicted_and_written_again(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    cache = InProcessCache(ttl_seconds=3600)
    provider = ScriptProvider()
    transcripts = TranscriptGenerator(provider, cache)
    key = transcripts.cache_key(SOURCE)
    await cache.get_or_compute(key, _value(garbage))

    result = await _script(transcripts)

    assert (result.text, result.is_cached, provider.calls) == (SCRIPT, False, 1)
    assert cache.get(key) == SCRIPT.encode()
    assert (await _script(transcripts)).is_cached  # the good script is served from then on
    assert provider.calls == 1
    [line] = [record.getMessage() for record in caplog.records if "evicted" in record.getMessage()]
    assert key in line
    assert "spam" not in line and "not text" not in line


@pytest.mark.parametrize(
    "garbage",
    [
        b"{not json",
        b'{"key": "images/x.png"}',
        b'{"key": "images/x.png", "width": "wide", "height": 1}',
        b"[]",
    ],
    ids=["bad-json", "missing-fields", "mistyped-field", "not-an-object"],
)
async def test_an_unparseable_cached_image_entry_is_evicted_and_made_again(
    garbage: bytes, storage: LocalAssetStorage, caplog: pytest.LogCaptureFixture
) -> None:
    cache = InProcessCache(ttl_seconds=3600)
    provider = PngProvider()
    images = ImageGenerator(provider, cache, storage)
    first = await images.generate(PROMPT, WIDTH, HEIGHT)
    await cache.forget(first.cache_key)
    await cache.get_or_compute(first.cache_key, _value(garbage))

    image = await images.generate(PROMPT, WIDTH, HEIGHT)

    assert not image.is_cached and provider.calls == 2
    assert (image.width_pixels, image.height_pixels) == (WIDTH, HEIGHT)
    assert await storage.exists(image.storage_key)
    assert (await images.generate(PROMPT, WIDTH, HEIGHT)).is_cached
    [line] = [record.getMessage() for record in caplog.records if "evicted" in record.getMessage()]
    assert first.cache_key in line
    assert PROMPT not in line


async def test_a_cached_image_that_does_not_decode_is_evicted_and_made_again(
    storage: LocalAssetStorage, caplog: pytest.LogCaptureFixture
) -> None:
    cache = InProcessCache(ttl_seconds=3600)
    provider = PngProvider()
    images = ImageGenerator(provider, cache, storage)
    first = await images.generate(PROMPT, WIDTH, HEIGHT)
    # The stored file was damaged (truncated) after it was cached.
    damaged = await storage.local_path(first.storage_key)
    damaged.write_bytes(damaged.read_bytes()[:64])

    image = await images.generate(PROMPT, WIDTH, HEIGHT)

    assert not image.is_cached and provider.calls == 2
    assert image.storage_key != first.storage_key
    assert (await images.generate(PROMPT, WIDTH, HEIGHT)).storage_key == image.storage_key
    [line] = [record.getMessage() for record in caplog.records if "evicted" in record.getMessage()]
    assert first.cache_key in line and "does not decode" in line
