"""The instance stage (CPU tasks): selected regions -> pasted, binarised, RLE-encoded pseudo instances.

Rows the teacher left pending carry a `Selection`; here they become `labeled` with their
pseudo.json, or `no_match` (every selected mask empty after binarisation). Other rows pass through.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from xpl.pseudo.align import Selection, build_instances
from xpl.pseudo.rows import LABELED, NO_MATCH, PENDING, RESULT_SCHEMA, SAMPLE


def pseudo_json(row: dict[str, Any], instances: list[dict[str, Any]]) -> str:
    """The pseudo.json of one sample (what the student reads)."""
    return json.dumps(
        {"key": row["key"], "caption": row["caption"], "width": row["width"], "height": row["height"],
         "instances": instances},
        separators=(",", ":"),
    )


def instance_batch(batch: pa.Table, *, mask_threshold: float = 0.5) -> pa.Table:
    """Build the pseudo instances of every pending row of a block."""
    names = ["key", "kind", "status", "caption", "width", "height", "scale", "selection"]
    rows = batch.select(names).to_pylist()
    new: dict[str, list[Any]] = {n: [] for n in ("status", "reason", "pseudo", "t_align", "t_encode")}
    reasons = batch.column("reason").to_pylist()
    pseudos = batch.column("pseudo").to_pylist()
    for row, reason, pseudo in zip(rows, reasons, pseudos):
        t_align = t_encode = 0.0
        status = row["status"]
        if row["kind"] == SAMPLE and status == PENDING and row["selection"] is not None:
            start = time.perf_counter()
            result = build_instances(Selection.from_bytes(row["selection"]), height=row["height"], width=row["width"],
                                     box_scale=row["scale"], mask_threshold=mask_threshold)
            middle = time.perf_counter()
            if result.instances:
                status, reason = LABELED, None
                pseudo = pseudo_json(row, [i.to_json() for i in result.instances])
            else:
                status, reason = NO_MATCH, result.reason
            t_align, t_encode = middle - start, time.perf_counter() - middle
        for name, value in (("status", status), ("reason", reason), ("pseudo", pseudo), ("t_align", t_align),
                            ("t_encode", t_encode)):
            new[name].append(value)
    columns = []
    for field in RESULT_SCHEMA:
        if field.name == "selection":
            columns.append(pa.nulls(len(batch), type=field.type))
        elif field.name in new:
            columns.append(pa.array(new[field.name], type=field.type))
        else:
            columns.append(batch.column(field.name))
    return pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)
