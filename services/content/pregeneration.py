"""Pre-generation (from the reference pipeline's plan): common image prompts cached, now or nightly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.content.errors import InvalidInputError
from services.content.generation import GeneratedImage, ImageGenerator
from services.content.image_prompts import all_image_prompts

logger = logging.getLogger(__name__)
MAX_PROMPTS = 500


@dataclass(frozen=True)
class PregeneratedImage:
    """One prompt's cached image."""

    prompt: str
    image: GeneratedImage


def read_prompt_list(path: Path | None) -> list[str]:
    """The prompts to pre-generate: one per line of `path` (blank lines and # comments skipped), or every
    prompt the offline prompt builder can produce."""
    if path is None:
        return all_image_prompts()
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


async def pregenerate_images(
    images: ImageGenerator, prompts: Sequence[str], width_pixels: int, height_pixels: int
) -> AsyncIterator[PregeneratedImage]:
    """Makes each prompt's image, one at a time (this is background work), and reports it."""
    if len(prompts) > MAX_PROMPTS:
        raise InvalidInputError("prompts", f"has {len(prompts)} entries; send at most {MAX_PROMPTS}")
    for prompt in prompts:
        image = await images.generate(prompt, width_pixels, height_pixels)
        yield PregeneratedImage(prompt=prompt, image=image)


def seconds_until_hour(hour_utc: int, now: datetime) -> float:
    """Seconds from `now` to the next time the UTC clock shows `hour_utc`:00."""
    target = now.astimezone(UTC).replace(hour=hour_utc, minute=0, second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


async def pregenerate_off_peak(
    images: ImageGenerator,
    prompts: Sequence[str],
    *,
    hour_utc: int,
    sizes: Sequence[tuple[int, int]],
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Runs forever: once a day at `hour_utc`, renders every prompt at every size into the cache."""
    while True:
        await asyncio.sleep(seconds_until_hour(hour_utc, clock()))
        logger.info("off-peak pre-generation of %d prompts starts", len(prompts))
        made = 0
        for width, height in sizes:
            try:
                async for _ in pregenerate_images(images, prompts, width, height):
                    made += 1
            except Exception:
                # A failed night must not stop the next one; the service itself is unaffected.
                logger.exception("off-peak pre-generation failed")
        logger.info("off-peak pre-generation done: %d images", made)
