"""The row formats that flow between the pseudo-labeling stages, as explicit Arrow schemas.

Every stage returns a `pyarrow.Table` with one of these schemas, so blocks always agree on their
columns and types (a batch of only rejected rows has null pixels, not a differently typed column).

Row kinds: "sample" (one input key) and "end" (one per input shard, last, with `count` = the
number of sample rows the reader emitted for that shard; the shard is assembled when all of them
have been written). `index` orders a shard's rows as they were read. Statuses: "pending" (to be
labeled by the teacher), "labeled", "no_match", "rejected" (bad input; `reason` says why).

Only Arrow columns cross stages: no per-row json or npz. Caption words and the teacher's chosen
regions are list columns; only the chosen regions' mask tiles travel from the teacher to the writer.
No row carries timings: `xpl.pseudo.profile` adds them when a run is profiled.
"""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

SAMPLE = "sample"
END = "end"

PENDING = "pending"
LABELED = "labeled"
NO_MATCH = "no_match"
REJECTED = "rejected"
STATUSES = (LABELED, NO_MATCH, REJECTED)

_COMMON = [
    ("key", pa.string()),
    ("url", pa.string()),
    ("shard", pa.string()),
    ("kind", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("count", pa.int64()),
    ("index", pa.int64()),  # position in the input shard: samples 0..n-1, the end row n
    ("image_name", pa.string()),  # the image member's suffix, e.g. "jpg"
    ("image", pa.binary()),  # original image bytes, unchanged
    ("txt", pa.binary()),  # original caption bytes
    ("meta", pa.binary()),  # original img2dataset .json bytes, if any
    ("caption", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
]

_WORD = [("category_id", pa.int64()), ("name", pa.string()), ("phrase", pa.string())]
# Caption words matched to the vocabulary, per row, with how many objects each names (`Mention.count`).
CAPTION_WORDS = pa.list_(pa.struct([*_WORD, ("count", pa.int32())]))
# The word of each chosen region (a word naming several objects may have several regions).
WORDS = pa.list_(pa.struct(_WORD))

# Reader and decoder output: raw members; after decoding also pixels and matched words.
SAMPLE_SCHEMA = pa.schema(
    _COMMON
    + [
        ("pixels", pa.binary()),  # RGB uint8, pix_h x pix_w x 3, resized for the teacher
        ("pix_h", pa.int32()),
        ("pix_w", pa.int32()),
        ("scale", pa.float64()),  # original pixels per teacher pixel
        ("words", CAPTION_WORDS),
    ]
)

# Teacher output per pending row: the chosen regions of `xpl.pseudo.choice.Selection`, flat, in the
# teacher's pixels; boxes are K x 4 and mask tiles K x M x M box-relative probabilities (M = mask_side).
SELECTION = [
    ("sel_words", WORDS),
    ("sel_scores", pa.list_(pa.float32())),
    ("sel_region_scores", pa.list_(pa.float32())),
    ("sel_boxes", pa.list_(pa.float32())),
    ("sel_masks", pa.list_(pa.float32())),
    ("sel_mask_side", pa.int32()),
    ("sel_tight", pa.bool_()),
]

# Teacher output: pixels dropped, each kept word's best region in the `SELECTION` columns
# (`xpl.pseudo.selection_columns`; null for rows the teacher did not label).
RESULT_SCHEMA = pa.schema(
    _COMMON
    + [
        ("scale", pa.float64()),
        *SELECTION,
        ("teacher_node", pa.string()),  # Ray node id of the actor that ran the row's teacher batch
    ]
)

# Writer output: one row per part (the rows of one input shard in one block).
PART_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("url", pa.string()),
        ("first", pa.int64()),  # the smallest row index in the part: parts are joined in this order
        ("tar", pa.string()),  # the part's tar of labeled samples; null when it has none
        ("records", pa.string()),  # json list of the part's manifest records, in row order
        ("expected", pa.int64()),  # the shard's sample count, when the part holds its end row
        ("failure", pa.string()),  # the shard's reader failed (end row's reason)
    ]
)


def table(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing columns are null) as a table of exactly `schema`."""
    rows = list(rows)
    return pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)

