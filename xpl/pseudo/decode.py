"""Validate and decode one caption sample for the teacher; bad input becomes a reason, never an error.

Checks, in order (the first failure is the sample's reason): an image member exists, a `.txt`
caption exists, is UTF-8 and not blank, the image header is readable and its pixel count is
within `max_pixels` (read from the header before any decoding, so a decompression bomb is never
decoded), the image decodes completely (a truncated JPEG fails here). Then the caption is matched
to the vocabulary; no match makes the sample `no_match`. The image is resized so its longer side is
`image_size` (JPEGs are decoded at reduced scale when that is enough, via PIL's draft mode).
"""

from __future__ import annotations

import io
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from xpl.pseudo.rows import NO_MATCH, PENDING, REJECTED, SAMPLE, SAMPLE_SCHEMA, table
from xpl.vocab import Category, Vocabulary

NO_VOCAB_WORDS = "no_vocab_words"
# As `xpl.data.captions.IMAGE_SUFFIXES`; not imported from there, which would load torch into
# every read and decode worker.
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
_VOCABS: dict[str, Vocabulary] = {}


@dataclass
class Decoded:
    """A sample ready for the teacher (`pixels` set, status pending) or a verdict without pixels."""

    status: str
    reason: Optional[str] = None
    caption: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    pixels: Optional[np.ndarray] = None  # uint8 HxWx3 for the teacher
    scale: float = 1.0  # original pixels per teacher pixel
    words: Optional[list[dict[str, Any]]] = None

    def row(self) -> dict[str, Any]:
        """The decoder's columns of a sample row (see `xpl.pseudo.rows.SAMPLE_SCHEMA`)."""
        out: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "caption": self.caption,
            "width": self.width,
            "height": self.height,
            "scale": self.scale,
            "words": json.dumps(self.words) if self.words is not None else None,
        }
        if self.pixels is not None:
            out.update(pixels=self.pixels.tobytes(), pix_h=self.pixels.shape[0], pix_w=self.pixels.shape[1])
        return out


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
    if image_size <= 0:
        return width, height
    scale = image_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_image(data: bytes, *, max_pixels: int,
                 image_size: int) -> tuple[Optional[np.ndarray], int, int, Optional[str]]:
    """(pixels resized for the teacher, original width, height, None) or (None, w, h, reason)."""
    width = height = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                return None, width, height, f"too_many_pixels: {width}x{height} > max_pixels {max_pixels}"
            target = _target_size(width, height, image_size)
            if img.format == "JPEG" and target != (width, height):
                img.draft("RGB", target)
            img = img.convert("RGB")
    except Image.DecompressionBombError as exc:
        return None, width, height, f"too_many_pixels: {exc}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        return None, width, height, f"corrupt_image: {type(exc).__name__}: {exc}"
    if img.size != target:
        img = img.resize(target, Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8), width, height, None


def decode_sample(members: dict[str, bytes], *, vocab: Vocabulary, max_pixels: int, image_size: int) -> Decoded:
    """Validate the members of one sample, match its caption and decode its image."""
    suffix = image_member(members)
    if suffix is None:
        return Decoded(REJECTED, "missing_image")
    caption, problem = read_caption(members)
    if problem is not None:
        return Decoded(REJECTED, problem)
    pixels, width, height, problem = decode_image(members[suffix], max_pixels=max_pixels, image_size=image_size)
    if problem is not None:
        return Decoded(REJECTED, problem, caption=caption, width=width or None, height=height or None)
    mentions = vocab.match(caption)
    if not mentions:
        return Decoded(NO_MATCH, NO_VOCAB_WORDS, caption=caption, width=width, height=height, words=[])
    words = [{"category_id": m.category_id, "name": m.name, "phrase": m.phrase} for m in mentions]
    scale = width / pixels.shape[1]
    return Decoded(PENDING, caption=caption, width=width, height=height, pixels=pixels, scale=scale, words=words)


def _vocabulary(vocab: dict[str, Any], digest: str) -> Vocabulary:
    """The vocabulary from its `to_json()` form (validated by the driver), built once per worker."""
    if digest not in _VOCABS:
        _VOCABS[digest] = Vocabulary([Category(c["id"], c["name"], tuple(c["synonyms"]), c["split"])
                                      for c in vocab["categories"]])
    return _VOCABS[digest]


def decode_batch(batch: pa.Table, *, vocab: dict[str, Any], vocab_digest: str, max_pixels: int,
                 image_size: int) -> pa.Table:
    """The pipeline's CPU stage: `decode_sample` on every pending sample row of a block."""
    voc = _vocabulary(vocab, vocab_digest)
    rows = batch.to_pylist()
    for row in rows:
        row["t_decode"] = 0.0
        if row["kind"] != SAMPLE or row["status"] != PENDING:
            continue
        start = time.perf_counter()
        members = {"txt": row["txt"]} if row["txt"] is not None else {}
        if row["image_name"]:
            members[row["image_name"]] = row["image"]
        row.update(decode_sample(members, vocab=voc, max_pixels=max_pixels, image_size=image_size).row())
        row["t_decode"] = time.perf_counter() - start
    return table(rows, SAMPLE_SCHEMA)
