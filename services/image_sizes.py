"""The two shapes a generated image comes in, in pixels; every other size is refused."""

from __future__ import annotations

from typing import Final

# DALL-E 3's own sizes, which the offline painter and every video profile were built around.
LANDSCAPE_SIZE_PIXELS: Final = (1792, 1024)
SQUARE_SIZE_PIXELS: Final = (1024, 1024)
SUPPORTED_SIZES_PIXELS: Final[frozenset[tuple[int, int]]] = frozenset(
    {LANDSCAPE_SIZE_PIXELS, SQUARE_SIZE_PIXELS}
)


def describe_size(size_pixels: tuple[int, int]) -> str:
    """`1792x1024`: how a size is written in messages and help text."""
    width, height = size_pixels
    return f"{width}x{height}"


def describe_supported_sizes() -> str:
    """Every supported size, for a message that refuses another one."""
    return ", ".join(describe_size(size) for size in sorted(SUPPORTED_SIZES_PIXELS))
