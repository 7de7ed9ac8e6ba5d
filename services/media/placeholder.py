"""The calm picture a video or live preview shows when no generated image is there to show."""

from __future__ import annotations

import numpy as np
from PIL import Image


def placeholder_width(height_pixels: int) -> int:
    """The placeholder's width at `height_pixels`: 16:9, the shape of a landscape image's video, rounded to
    an even number as 4:2:0 chroma requires."""
    return round(height_pixels * 16 / 9 / 2) * 2


def paint_placeholder(width_pixels: int, height_pixels: int) -> Image.Image:
    """Paints a soft dusk gradient with a faint glow, darker at the top, with no hard edge anywhere."""
    rows = np.linspace(0.0, 1.0, height_pixels, dtype=np.float32)[:, None, None]
    top = np.array([27, 38, 59], dtype=np.float32)
    bottom = np.array([118, 106, 140], dtype=np.float32)
    picture = top + (bottom - top) * rows
    y, x = np.mgrid[0:height_pixels, 0:width_pixels].astype(np.float32)
    distance = np.hypot((x - width_pixels * 0.5) / width_pixels, (y - height_pixels * 0.62) / height_pixels)
    glow = np.exp(-((distance / 0.35) ** 2))[..., None]
    picture = picture + glow * np.array([70, 52, 40], dtype=np.float32)
    # Half a level of noise dithers the gradient so 8-bit video shows no banding; the fixed seed makes every
    # placeholder of a size the same picture.
    picture += np.random.default_rng(0).uniform(-0.5, 0.5, picture.shape).astype(np.float32)
    pixels = np.clip(np.round(picture), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)
