"""`Selection`s as Arrow columns (`xpl.pseudo.rows.SELECTION`) and back: the teacher-to-writer hand-off.

Numbers travel as flat float32 list columns, built from one concatenated numpy array per column and
read back as numpy slices of one array per column: no per-row serialisation. A row without a selection is null.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from xpl.pseudo.choice import Selection
from xpl.pseudo.rows import SELECTION

_TYPES = dict(SELECTION)


def _floats(parts: Sequence[Optional[np.ndarray]]) -> pa.Array:
    """A list<float32> array of the flattened `parts` (None: a null row)."""
    sizes = [0 if p is None else p.size for p in parts]
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    present = [p.reshape(-1) for p in parts if p is not None]
    values = np.concatenate(present).astype(np.float32, copy=False) if present else np.zeros(0, np.float32)
    nulls = pa.array([p is None for p in parts], type=pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), type=_TYPES["sel_scores"], mask=nulls)


def selection_columns(selections: Sequence[Optional[Selection]]) -> dict[str, pa.Array]:
    """The SELECTION columns of one row per entry (None: no selection)."""
    words = [None if s is None else [{"category_id": c, "name": n, "phrase": p} for c, n, p in s.words]
             for s in selections]
    return {
        "sel_words": pa.array(words, type=_TYPES["sel_words"]),
        "sel_scores": _floats([None if s is None else s.scores for s in selections]),
        "sel_region_scores": _floats([None if s is None else s.region_scores for s in selections]),
        "sel_boxes": _floats([None if s is None else s.boxes for s in selections]),
        "sel_masks": _floats([None if s is None else s.mask_probs for s in selections]),
        "sel_mask_side": pa.array([None if s is None else s.mask_probs.shape[-1] for s in selections],
                                  type=_TYPES["sel_mask_side"]),
        "sel_tight": pa.array([None if s is None else s.tight_boxes for s in selections], type=_TYPES["sel_tight"]),
    }


def _rows(column: pa.ChunkedArray) -> list[Optional[np.ndarray]]:
    """Per row, a numpy view of a list<float32> column's values (None where null); one copy per chunk
    makes them writable (torch takes them as they are)."""
    out: list[Optional[np.ndarray]] = []
    for chunk in column.chunks:
        values = chunk.values.to_numpy(zero_copy_only=False).copy()
        offsets = chunk.offsets.to_numpy()
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        out.extend(values[offsets[i]:offsets[i + 1]] if valid[i] else None for i in range(len(chunk)))
    return out


def read_selections(table: pa.Table) -> list[Optional[Selection]]:
    """The `Selection` of every row (None where the row has none, or the table no SELECTION columns)."""
    if "sel_words" not in table.column_names:
        return [None] * len(table)
    words = table.column("sel_words").to_pylist()
    scores, region_scores = _rows(table.column("sel_scores")), _rows(table.column("sel_region_scores"))
    boxes, masks = _rows(table.column("sel_boxes")), _rows(table.column("sel_masks"))
    sides, tight = table.column("sel_mask_side").to_pylist(), table.column("sel_tight").to_pylist()
    out: list[Optional[Selection]] = []
    for i, row_words in enumerate(words):
        if row_words is None:
            out.append(None)
            continue
        k, side = len(row_words), sides[i]
        out.append(Selection(
            words=[(w["category_id"], w["name"], w["phrase"]) for w in row_words],
            scores=scores[i], boxes=boxes[i].reshape(k, 4), mask_probs=masks[i].reshape(k, side, side),
            region_scores=region_scores[i], tight_boxes=bool(tight[i]),
        ))
    return out
