"""Decodes image bytes from outside (a provider's answer) within a pixel budget checked before decoding."""

from __future__ import annotations

import io
import warnings

from PIL import Image

# The largest image the content service decodes: 4096 x 4096 (64 MiB as RGBA). Providers answer with
# 1-4 megapixels; Pillow's own default (89 megapixels, an error only at twice that) is far too generous.
MAX_IMAGE_PIXELS = 4096 * 4096
# What image providers answer with. Pillow's other decoders (EPS runs Ghostscript, for one) are never
# offered untrusted bytes.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


class ImageRejectedError(Exception):
    """The bytes are not an image we decode: unreadable, of another format, or over the pixel budget."""


def enforce_decoding_limits() -> None:
    """Process-wide, once at start-up (before any thread runs): every `Image.open` in the process refuses
    images over the budget, and Pillow's decompression-bomb warning is raised as an error, not logged."""
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def as_rgb_png(raw: bytes) -> bytes:
    """Returns the image as an RGB PNG (the bytes themselves when they already are one).

    The dimensions come from the header, which `Image.open` reads alone; only an image within the budget
    is decoded, so a small file that claims to unpack to gigabytes costs nothing."""
    try:
        with Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageRejectedError(
                    f"the image is {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS} pixels"
                )
            image.load()
            if image.format == "PNG" and image.mode == "RGB":
                return raw
            converted = image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Raised by Image.open itself, from the header, under the process-wide limit.
        raise ImageRejectedError(f"the image is over the pixel limit ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejectedError(f"the image could not be read ({type(error).__name__})") from None
    output = io.BytesIO()
    converted.save(output, format="PNG")
    return output.getvalue()
