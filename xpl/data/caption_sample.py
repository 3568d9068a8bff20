"""Validate and decode one caption sample (its tar members): the one sample check of both stages that read
caption shards, with one set of reason names.

Checks, in order (the first failure is the sample's reason): an image member exists
(`missing_image`), a `.txt` caption exists (`missing_caption`), is UTF-8 (`caption_not_utf8`) and not
blank (`empty_caption`), the image header is readable and its pixel count is within `max_pixels`
(`too_many_pixels`, read from the header before any decoding, so a decompression bomb is never
decoded), the image decodes completely (`corrupt_image`; a truncated JPEG fails here). A larger image
is shrunk so its longer side is `image_size`, never enlarged: the detector's own transform scales it
to its input size (JPEGs are decoded at reduced scale when that is enough, via PIL's draft mode).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
MAX_PIXELS = 40_000_000


@dataclass
class CaptionSample:
    """A checked sample: `pixels` (uint8 HxWx3, resized) when good, else `reason`; the caption and the
    original size as far as they could be read."""

    reason: Optional[str] = None
    caption: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    pixels: Optional[np.ndarray] = None


def image_member(members: dict[str, bytes]) -> Optional[str]:
    """The suffix of the sample's image member, if any."""
    return next((s for s in IMAGE_SUFFIXES if s in members), None)


def read_caption(members: dict[str, bytes]) -> tuple[Optional[str], Optional[str]]:
    """(caption, None) or (None, reason)."""
    if "txt" not in members:
        return None, "missing_caption"
    try:
        caption = members["txt"].decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"caption_not_utf8: {exc.reason} at byte {exc.start}"
    caption = caption.strip()
    if not caption:
        return None, "empty_caption"
    return caption, None


def _target_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    if image_size <= 0 or max(width, height) <= image_size:
        return width, height
    scale = image_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)  # orientations whose displayed image is the stored one turned a quarter


def decode_image(data: bytes, *, max_pixels: int,
                 image_size: int) -> tuple[Optional[np.ndarray], int, int, Optional[str]]:
    """(pixels with the longer side at most `image_size` (0: as stored), original width, height, None)
    or (None, w, h, reason). Sizes and pixels are the image as displayed: an EXIF orientation is applied."""
    width = height = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            turned = img.getexif().get(EXIF_ORIENTATION, 1) in QUARTER_TURNS
            width, height = img.size[::-1] if turned else img.size
            if width * height > max_pixels:
                return None, width, height, f"too_many_pixels: {width}x{height} > max_pixels {max_pixels}"
            target = _target_size(width, height, image_size)
            if img.format == "JPEG" and target != (width, height):
                img.draft("RGB", target[::-1] if turned else target)
            img = ImageOps.exif_transpose(img).convert("RGB")
    except Image.DecompressionBombError as exc:
        return None, width, height, f"too_many_pixels: {exc}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        # in-memory bytes: PIL reports a cut or garbled image as OSError / SyntaxError / ValueError
        return None, width, height, f"corrupt_image: {type(exc).__name__}: {exc}"
    if img.size != target:
        img = img.resize(target, Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8), width, height, None


def check_sample(members: dict[str, bytes], *, image_size: int, max_pixels: int = MAX_PIXELS) -> CaptionSample:
    """Run the checks of the module docstring on one sample's members; decode its image when they pass."""
    suffix = image_member(members)
    if suffix is None:
        return CaptionSample("missing_image")
    caption, problem = read_caption(members)
    if problem is not None:
        return CaptionSample(problem)
    pixels, width, height, problem = decode_image(members[suffix], max_pixels=max_pixels, image_size=image_size)
    return CaptionSample(problem, caption, width or None, height or None, pixels)
