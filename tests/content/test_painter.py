"""The offline painter: calm landscapes at the supported sizes, seeded by the prompt."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.content.painter import SUPPORTED_SIZES, paint_landscape, paint_placeholder

LAKE = "Serene mountain lake at sunset with gentle ripples"
NIGHT = "Moonlit calm sea under stars, quiet night"
MORNING = "Sunny spring meadow at sunrise, morning light"


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "RGB"
        return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize("size", sorted(SUPPORTED_SIZES))
def test_each_supported_size_is_a_png_of_exactly_that_size(size: tuple[int, int]) -> None:
    with Image.open(io.BytesIO(paint_landscape(LAKE, *size))) as image:
        assert image.format == "PNG"
        assert image.size == size


def test_the_same_prompt_paints_the_same_bytes() -> None:
    assert paint_landscape(LAKE, 1024, 1024) == paint_landscape(LAKE, 1024, 1024)


def test_different_prompts_paint_visibly_different_scenes() -> None:
    difference = np.abs(
        pixels(paint_landscape(LAKE, 1024, 1024)) - pixels(paint_landscape(NIGHT, 1024, 1024))
    )
    assert difference.mean() > 20


def test_a_night_prompt_is_darker_than_a_morning_prompt() -> None:
    night = pixels(paint_landscape(NIGHT, 1024, 1024)).mean()
    morning = pixels(paint_landscape(MORNING, 1024, 1024)).mean()
    assert night < morning - 30


def test_a_landscape_has_structure_and_no_blown_out_areas() -> None:
    image = pixels(paint_landscape(LAKE, 1792, 1024))
    luminance = image.mean(axis=2)
    assert luminance.std() > 10
    assert (luminance < 2).mean() < 0.01
    assert (luminance > 253).mean() < 0.01


def test_unsupported_size_is_refused() -> None:
    with pytest.raises(ValueError, match="1792"):
        paint_landscape(LAKE, 640, 480)


def test_placeholder_has_the_requested_size() -> None:
    with Image.open(io.BytesIO(paint_placeholder(1280, 720))) as image:
        assert image.size == (1280, 720)
