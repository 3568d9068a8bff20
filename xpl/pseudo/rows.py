"""The row formats that flow between the pseudo-labeling stages, as explicit Arrow schemas.

Every stage returns a `pyarrow.Table` with one of these schemas, so blocks always agree on their
columns and types (a batch of only rejected rows has null pixels, not a differently typed column).

Row kinds: "sample" (one input key) and "end" (one per input shard, last, with `count` = the
number of sample rows the reader emitted for that shard; the writer closes a shard when it has
seen them all). Statuses: "pending" (to be labeled by the teacher), "labeled", "no_match",
"rejected" (bad input; `reason` says why).
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

# Seconds each stage spent, spread over the rows it handled.
TIMINGS = ("t_read", "t_decode", "t_teacher", "t_align", "t_encode", "t_write")
# CPU seconds of the teacher actor's thread (beside its wall seconds `t_teacher`): on a busy CPU
# machine the gap is time spent waiting for a core, on a GPU the CPU part is the host's work.
TEACHER_CPU = "t_teacher_cpu"

_COMMON = [
    ("key", pa.string()),
    ("url", pa.string()),
    ("shard", pa.string()),
    ("kind", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("count", pa.int64()),
    ("image_name", pa.string()),  # the image member's suffix, e.g. "jpg"
    ("image", pa.binary()),  # original image bytes, unchanged
    ("txt", pa.binary()),  # original caption bytes
    ("meta", pa.binary()),  # original img2dataset .json bytes, if any
    ("caption", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
]

# Reader and decoder output: raw members; after decoding also pixels and matched words.
SAMPLE_SCHEMA = pa.schema(
    _COMMON
    + [
        ("pixels", pa.binary()),  # RGB uint8, pix_h x pix_w x 3, resized for the teacher
        ("pix_h", pa.int32()),
        ("pix_w", pa.int32()),
        ("scale", pa.float64()),  # original pixels per teacher pixel
        ("words", pa.string()),  # json list of {"category_id", "name", "phrase"}
        ("t_read", pa.float64()),
        ("t_decode", pa.float64()),
    ]
)

# Teacher output (pixels dropped, each word's best region in `selection`) and, after the
# instance stage, the final rows (`selection` null, pseudo.json in `pseudo`).
RESULT_SCHEMA = pa.schema(
    _COMMON
    + [
        ("scale", pa.float64()),
        ("selection", pa.binary()),  # xpl.pseudo.align.Selection.to_bytes() of pending rows
        ("pseudo", pa.string()),  # pseudo.json text for labeled rows
        ("truth", pa.string()),  # json: pseudo instances judged against the sample's own truth, if it has any
        ("t_read", pa.float64()),
        ("t_decode", pa.float64()),
        ("t_teacher", pa.float64()),
        ("t_teacher_cpu", pa.float64()),
        ("t_align", pa.float64()),
        ("t_encode", pa.float64()),
        ("teacher_begin", pa.float64()),  # wall clock (epoch s) when the row's teacher batch began
        ("teacher_end", pa.float64()),  # ... and when it was done
        ("teacher_node", pa.string()),  # Ray node id of the actor that ran the row's teacher batch
    ]
)

# Writer output: one row per finished output shard.
SHARD_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("url", pa.string()),
        ("samples", pa.int64()),
        ("labeled", pa.int64()),
        ("no_match", pa.int64()),
        ("rejected", pa.int64()),
        ("instances", pa.int64()),
        ("timings", pa.string()),  # json {stage: seconds summed over the shard's rows}
        ("teacher_begin", pa.float64()),  # earliest teacher batch start of the shard's rows (epoch s)
        ("teacher_end", pa.float64()),  # latest teacher batch end
        ("failure", pa.string()),  # set when the shard's reader failed: dropped, retried by the next run
    ]
)


def table(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing columns are null) as a table of exactly `schema`."""
    rows = list(rows)
    return pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)
