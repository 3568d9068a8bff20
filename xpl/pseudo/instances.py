"""The instance stage (CPU tasks): selected regions -> pasted, binarised, RLE-encoded pseudo instances.

Rows the teacher left pending carry a `Selection`; here they become `labeled` with their
pseudo.json, or `no_match` (every selected mask empty after binarisation). Other rows pass through.
Every decoded sample whose img2dataset json carries truth (the shapes world's `xpl` field) gets its
instances judged against it (`xpl.eval.pseudo_quality`); truth never enters pseudo.json.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from xpl.errors import DataError
from xpl.eval.pseudo_quality import judge_sample, read_truth
from xpl.pseudo.align import Selection, build_instances
from xpl.pseudo.rows import LABELED, NO_MATCH, PENDING, REJECTED, RESULT_SCHEMA, SAMPLE


def pseudo_json(row: dict[str, Any], instances: list[dict[str, Any]]) -> str:
    """The pseudo.json of one sample (what the student reads)."""
    return json.dumps(
        {"key": row["key"], "caption": row["caption"], "width": row["width"], "height": row["height"],
         "instances": instances},
        separators=(",", ":"),
    )


def judged_truth(row: dict[str, Any], instances: list[dict[str, Any]], ids_by_name: dict[str, int]) -> str | None:
    """The `truth` column of a decoded sample: its instances judged against the truth in its json
    (None when it carries none; {"error": ...} when that truth is malformed)."""
    if row["kind"] != SAMPLE or row["status"] == REJECTED or row["meta"] is None:
        return None
    try:
        meta = json.loads(row["meta"])
        truth = read_truth(meta, ids_by_name, where=row["key"]) if isinstance(meta, dict) else None
    except (ValueError, DataError) as exc:
        return json.dumps({"error": str(exc)})
    if truth is None:
        return None
    return json.dumps(judge_sample(instances, truth), separators=(",", ":"))


def instance_batch(batch: pa.Table, *, mask_threshold: float = 0.5, ids_by_name: dict[str, int] | None = None) -> pa.Table:
    """Build the pseudo instances of every pending row of a block; judge them where the sample has truth
    (`ids_by_name`: the vocabulary's class name -> id)."""
    names = ["key", "kind", "status", "caption", "width", "height", "scale", "selection", "meta"]
    rows = batch.select(names).to_pylist()
    new: dict[str, list[Any]] = {n: [] for n in ("status", "reason", "pseudo", "truth", "t_align", "t_encode")}
    reasons = batch.column("reason").to_pylist()
    pseudos = batch.column("pseudo").to_pylist()
    for row, reason, pseudo in zip(rows, reasons, pseudos):
        t_align = t_encode = 0.0
        status = row["status"]
        instances: list[dict[str, Any]] = []
        if row["kind"] == SAMPLE and status == PENDING and row["selection"] is not None:
            start = time.perf_counter()
            result = build_instances(Selection.from_bytes(row["selection"]), height=row["height"], width=row["width"],
                                     box_scale=row["scale"], mask_threshold=mask_threshold)
            middle = time.perf_counter()
            if result.instances:
                status, reason = LABELED, None
                instances = [i.to_json() for i in result.instances]
                pseudo = pseudo_json(row, instances)
            else:
                status, reason = NO_MATCH, result.reason
            t_align, t_encode = middle - start, time.perf_counter() - middle
        truth = judged_truth(row, instances, ids_by_name) if ids_by_name else None
        for name, value in (("status", status), ("reason", reason), ("pseudo", pseudo), ("truth", truth),
                            ("t_align", t_align), ("t_encode", t_encode)):
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
