"""The picture of image-to-video requests: `image`'s encoded bytes, bounded before any decoding, or `image_rgb`'s
[height, width, 3] UINT8 pixels; either way a PIL RGB image, as diffusers' pipelines take it.

The byte size is checked first, then the header's width x height (Pillow reads only the header when it opens an
image), and only then are the pixels decoded: a small file that claims a huge picture (a decompression bomb) is
refused without its pixels. Only PNG, JPEG and WebP are opened.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from wan22_triton.errors import RequestError
from wan22_triton.request.contract import IMAGE, IMAGE_RGB

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image

    from wan22_triton.manifest import Limits

FORMATS = ("PNG", "JPEG", "WEBP")


def decode_image(data: bytes, limits: Limits) -> Image:
    """An RGB PIL image (as diffusers' `load_image` gives), or RequestError naming what is wrong."""
    from PIL import Image as PILImage, UnidentifiedImageError

    if len(data) > limits.max_image_bytes:
        raise RequestError(f"'{IMAGE}' is {len(data)} bytes; the limit is {limits.max_image_bytes} bytes", IMAGE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, PILImage.DecompressionBombError, PILImage.DecompressionBombWarning, OSError):
        raise RequestError(f"'{IMAGE}' must be a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image; these bytes are "
                           "not one", IMAGE) from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise RequestError(f"'{IMAGE}' is {width}x{height} pixels; the limit is {limits.max_image_pixels} pixels", IMAGE)
    try:
        image.load()
    except (OSError, ValueError) as e:  # truncated or corrupt pixel data
        raise RequestError(f"'{IMAGE}' could not be decoded ({image.format}): {e}", IMAGE) from None
    return image.convert("RGB")


def rgb_image(pixels: np.ndarray, limits: Limits) -> Image:
    """`image_rgb`'s array as a PIL RGB image, or RequestError naming what is wrong."""
    from PIL import Image as PILImage

    if pixels.ndim != 3 or pixels.shape[-1] != 3 or 0 in pixels.shape:
        raise RequestError(f"'{IMAGE_RGB}' must be [height, width, 3], got shape {list(pixels.shape)}", IMAGE_RGB)
    height, width, _ = pixels.shape
    if width * height > limits.max_image_pixels:
        raise RequestError(f"'{IMAGE_RGB}' is {width}x{height} pixels; the limit is {limits.max_image_pixels} pixels", IMAGE_RGB)
    return PILImage.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
