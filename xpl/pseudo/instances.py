"""Selected regions -> pasted, binarised, RLE-encoded pseudo instances, and their judgement against truth.

Run by the writer (`xpl.pseudo.writer`) on each row as it arrives, so masks are pasted once, at the
original image size, right where they are written. A pending row with a `Selection` becomes
`labeled` with its pseudo.json, or `no_match` (every selected mask empty after binarisation); other
rows keep their status. Every decoded sample whose img2dataset json carries truth (the shapes
world's `xpl` field) gets its instances judged against it (`xpl.eval.pseudo_quality`); truth never
enters pseudo.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from xpl.errors import DataError
from xpl.eval.pseudo_quality import judge_sample, read_truth
from xpl.pseudo.choice import Selection
from xpl.pseudo.paste import build_instances
from xpl.pseudo.rows import LABELED, NO_MATCH, PENDING, REJECTED, SAMPLE


@dataclass
class Labeled:
    """A sample row's outcome: status, reason, instances (pseudo.json records), the pseudo.json text and
    the judged truth (None without truth)."""

    status: str
    reason: Optional[str]
    instances: list[dict[str, Any]] = field(default_factory=list)
    pseudo: Optional[str] = None
    truth: Optional[dict[str, Any]] = None


def pseudo_json(row: dict[str, Any], instances: list[dict[str, Any]]) -> str:
    """The pseudo.json of one sample (what the student reads)."""
    return json.dumps(
        {"key": row["key"], "caption": row["caption"], "width": row["width"], "height": row["height"],
         "instances": instances},
        separators=(",", ":"),
    )


def judged_truth(row: dict[str, Any], instances: list[dict[str, Any]],
                 ids_by_name: dict[str, int]) -> Optional[dict[str, Any]]:
    """A decoded sample's instances judged against the truth in its json (None when it carries none;
    {"error": ...} when that truth is malformed)."""
    if row["kind"] != SAMPLE or row["status"] == REJECTED or row["meta"] is None:
        return None
    try:
        meta = json.loads(row["meta"])
        truth = read_truth(meta, ids_by_name, where=row["key"]) if isinstance(meta, dict) else None
    except (ValueError, DataError) as exc:
        return {"error": str(exc)}
    if truth is None:
        return None
    return judge_sample(instances, truth)


def label_row(row: dict[str, Any], selection: Optional[Selection], *, mask_threshold: float,
              ids_by_name: Optional[dict[str, int]] = None) -> Labeled:
    """Build the pseudo instances of a sample row from its selection; judge them where the sample has
    truth (`ids_by_name`: the vocabulary's class name -> id)."""
    out = Labeled(row["status"], row["reason"])
    if row["status"] == PENDING and selection is not None:
        result = build_instances(selection, height=row["height"], width=row["width"], box_scale=row["scale"],
                                 mask_threshold=mask_threshold)
        if result.instances:
            out.status, out.reason = LABELED, None
            out.instances = [i.to_json() for i in result.instances]
            out.pseudo = pseudo_json(row, out.instances)
        else:
            out.status, out.reason = NO_MATCH, result.reason
    if ids_by_name:
        out.truth = judged_truth(row, out.instances, ids_by_name)
    return out
