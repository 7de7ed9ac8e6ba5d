"""Tests of the offline procedural painter: sizes, determinism, variety, mood and a sound tonal range."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from services.content.painter import paint_landscape
from services.image_sizes import SUPPORTED_SIZES_PIXELS

SAMPLE_PROMPTS = (
    "Serene mountain lake at sunset with gentle ripples",
    "Moonlit calm sea under stars, quiet night",
    "Peaceful zen garden with flowing water and soft sunlight",
    "sunny morning meadow",
    "quiet pine forest with mountain peaks at dawn",
    "",
    "静かな呼吸 ☯",
)


@functools.cache
def _painted(prompt: str, width_pixels: int = 1792, height_pixels: int = 1024) -> bytes:
    # Painting takes a few hundred milliseconds; several tests look at the same images.
    return paint_landscape(prompt, width_pixels, height_pixels)


def _decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _pixels(png: bytes) -> npt.NDArray[np.float32]:
    return np.asarray(_decoded(png), dtype=np.float32)


def _luminance(png: bytes) -> npt.NDArray[np.float32]:
    # Rec. 709 weights: how bright a person perceives each pixel to be.
    weights = np.array((0.2126, 0.7152, 0.0722), dtype=np.float32)
    return np.asarray(_pixels(png) @ weights, dtype=np.float32)


@pytest.mark.parametrize(("width_pixels", "height_pixels"), sorted(SUPPORTED_SIZES_PIXELS))
def test_each_supported_size_gives_an_rgb_png_of_exactly_that_size(
    width_pixels: int, height_pixels: int
) -> None:
    image = _decoded(_painted(SAMPLE_PROMPTS[0], width_pixels, height_pixels))

    assert image.format == "PNG"
    assert image.mode == "RGB"
    assert image.size == (width_pixels, height_pixels)


def test_the_same_prompt_and_size_give_identical_bytes() -> None:
    first = paint_landscape(SAMPLE_PROMPTS[1], 1024, 1024)
    second = paint_landscape(SAMPLE_PROMPTS[1], 1024, 1024)

    assert first == second


def test_another_process_with_another_hash_seed_paints_identical_bytes() -> None:
    # Worker processes each salt hash() differently; the painter must not depend on it.
    script = (
        "import hashlib, sys\n"
        "from services.content.painter import paint_landscape\n"
        "png = paint_landscape(sys.argv[1], 1024, 1024)\n"
        "print(hashlib.sha256(png).hexdigest())\n"
    )
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}
    completed = subprocess.run(
        [sys.executable, "-c", script, SAMPLE_PROMPTS[2]],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        timeout=60,
    )

    expected = hashlib.sha256(paint_landscape(SAMPLE_PROMPTS[2], 1024, 1024)).hexdigest()
    assert completed.stdout.strip() == expected


@pytest.mark.parametrize(
    ("first_prompt", "second_prompt"),
    [
        ("Calm mountain lake at dawn", "Still mountain lake at dawn"),
        ("Serene mountain lake at sunset with gentle ripples", "Moonlit calm sea under stars, quiet night"),
        ("moonlit night lake", "deep sleep"),
        ("", " "),
    ],
)
def test_different_prompts_give_visibly_different_images(first_prompt: str, second_prompt: str) -> None:
    difference = np.abs(_pixels(_painted(first_prompt)) - _pixels(_painted(second_prompt)))

    # Out of 255: well above dither (about 1) and far above what the eye can tell apart.
    assert float(difference.mean()) > 5.0


def test_a_moonlit_night_lake_is_darker_than_a_sunny_morning_meadow() -> None:
    night = _luminance(_painted("moonlit night lake"))
    morning = _luminance(_painted("sunny morning meadow"))

    assert float(night.mean()) + 50.0 < float(morning.mean())


@pytest.mark.parametrize(
    ("width_pixels", "height_pixels"), [(1024, 1792), (512, 512), (1920, 1080), (0, 0), (-1024, 1024)]
)
def test_an_unsupported_size_raises_value_error(width_pixels: int, height_pixels: int) -> None:
    with pytest.raises(ValueError, match="unsupported image size"):
        paint_landscape("a quiet lake", width_pixels, height_pixels)


@pytest.mark.parametrize("prompt", SAMPLE_PROMPTS)
def test_every_image_has_detail_and_no_large_clipped_areas(prompt: str) -> None:
    pixels = _pixels(_painted(prompt))
    luminance = _luminance(_painted(prompt))

    assert float(luminance.std()) > 12.0
    crushed_fraction = float((pixels.max(axis=-1) <= 4.0).mean())
    blown_out_fraction = float((pixels.min(axis=-1) >= 251.0).mean())
    assert crushed_fraction < 0.01
    assert blown_out_fraction < 0.01


def test_a_night_prompt_paints_a_dark_sky_with_a_few_bright_points() -> None:
    luminance = _luminance(_painted("Moonlit calm sea under stars, quiet night"))
    top_band = luminance[: luminance.shape[0] // 5]

    assert float(np.median(top_band)) < 60.0
    # Stars (and perhaps the moon) stand well above the dark sky around them.
    assert int((top_band > float(np.median(top_band)) + 60.0).sum()) > 20
