"""Validate and decode one caption sample for the teacher; bad input becomes a reason, never an error.

The checks are the shared ones of `xpl.data.caption_sample` (the first failure is the sample's
reason). Then the caption is matched to the vocabulary; no match makes the sample `no_match`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from xpl.data.caption_sample import check_sample
from xpl.pseudo.rows import NO_MATCH, PENDING, REJECTED, SAMPLE, SAMPLE_SCHEMA, table
from xpl.vocab import Category, Vocabulary

NO_VOCAB_WORDS = "no_vocab_words"
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
            "words": self.words,
        }
        if self.pixels is not None:
            out.update(pixels=self.pixels.tobytes(), pix_h=self.pixels.shape[0], pix_w=self.pixels.shape[1])
        return out


def decode_sample(members: dict[str, bytes], *, vocab: Vocabulary, max_pixels: int, image_size: int) -> Decoded:
    """Validate the members of one sample, match its caption and decode its image."""
    checked = check_sample(members, image_size=image_size, max_pixels=max_pixels)
    caption, width, height, pixels = checked.caption, checked.width, checked.height, checked.pixels
    if checked.reason is not None:
        return Decoded(REJECTED, checked.reason, caption=caption, width=width, height=height)
    mentions = vocab.match(caption)
    if not mentions:
        return Decoded(NO_MATCH, NO_VOCAB_WORDS, caption=caption, width=width, height=height, words=[])
    words = [{"category_id": m.category_id, "name": m.name, "phrase": m.phrase, "count": m.count} for m in mentions]
    scale = width / pixels.shape[1]
    return Decoded(PENDING, caption=caption, width=width, height=height, pixels=pixels, scale=scale, words=words)


def _vocabulary(vocab: dict[str, Any], digest: str) -> Vocabulary:
    """The vocabulary from its `to_json()` form (validated by the driver), built once per worker."""
    if digest not in _VOCABS:
        _VOCABS[digest] = Vocabulary([Category(c["id"], c["name"], tuple(c["synonyms"]), c["split"])
                                      for c in vocab["categories"]])
    return _VOCABS[digest]


# The columns `decode_batch` sets; the others pass through untouched (image bytes included).
DECODED = ("status", "reason", "caption", "width", "height", "pixels", "pix_h", "pix_w", "scale", "words")


def decode_batch(batch: pa.Table, *, vocab: dict[str, Any], vocab_digest: str, max_pixels: int,
                 image_size: int) -> pa.Table:
    """The pipeline's CPU stage: `decode_sample` on every pending sample row of a block."""
    voc = _vocabulary(vocab, vocab_digest)
    todo = batch.select(["kind", "status", "image_name", "image", "txt"]).to_pylist()
    old = batch.select([n for n in DECODED if n in batch.column_names]).to_pylist()
    for row, values in zip(todo, old):
        if row["kind"] != SAMPLE or row["status"] != PENDING:
            continue
        members = {"txt": row["txt"]} if row["txt"] is not None else {}
        if row["image_name"]:
            members[row["image_name"]] = row["image"]
        values.update(decode_sample(members, vocab=voc, max_pixels=max_pixels, image_size=image_size).row())
    new = table(old, pa.schema([SAMPLE_SCHEMA.field(n) for n in DECODED]))
    return pa.Table.from_arrays([new.column(f.name) if f.name in DECODED else batch.column(f.name)
                                 for f in SAMPLE_SCHEMA], schema=SAMPLE_SCHEMA)
