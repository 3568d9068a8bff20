"""Pseudo-label quality against the truth a caption sample carries (the shapes world's `xpl` json field).

Pure functions, no Ray and no model. Per sample, `judge_sample` marks each pseudo instance:
- right: some object of the named class has box IoU >= `iou` with it (precision counts these);
- covered: matched one-to-one (highest alignment score first) to an object of its class that is
  present and mentioned in the caption (recall counts these);
- mask IoU with the best-overlapping object of its class, where the truth has masks;
- chance: the share of the image's objects that belong to the named class, i.e. the precision a
  random pick among the image's objects would have for that word.
Recall's denominator is every object whose class the caption mentions and that is in the image,
whether or not the vocabulary matcher found the mention. `quality_report` sums judged samples per
class, per split (base / novel) and overall, and draws the precision / kept-share curve over the
alignment-score threshold. Real data carries no truth: `read_truth` returns None and nothing is judged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from xpl.errors import DataError

SPLITS = ("base", "novel", "all")


@dataclass(frozen=True)
class TruthObject:
    """One object in the image: class id, box xyxy and (where known) its visible mask as COCO RLE."""

    category_id: int
    box: tuple[float, float, float, float]
    segmentation: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class SampleTruth:
    """What is in a caption image and which of its classes the caption mentions."""

    objects: list[TruthObject]
    mentioned: frozenset[int]  # category ids named by the caption (present or not)

    @property
    def present_mentioned(self) -> Counter[int]:
        """Objects per class that is both in the image and mentioned (recall's denominator)."""
        return Counter(o.category_id for o in self.objects if o.category_id in self.mentioned)


def read_truth(meta: Mapping[str, Any], ids_by_name: Mapping[str, int], *, where: str = "sample") -> Optional[SampleTruth]:
    """The truth of one sample from its img2dataset json, or None when it carries none.

    `ids_by_name` maps class names to vocabulary ids. A malformed `xpl` field raises DataError
    naming the sample and the field.
    """
    truth = meta.get("xpl")
    if truth is None:
        return None
    try:
        objects = [
            TruthObject(ids_by_name[o["category"]], _xyxy(o["bbox"]), o.get("segmentation"))
            for o in truth["objects"]
        ]
        mentioned = frozenset(ids_by_name[m["category"]] for m in truth["mentions"])
    except KeyError as exc:
        raise DataError(f"{where}: json field 'xpl' lacks key or names an unknown class: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: json field 'xpl' is malformed: {exc}") from exc
    return SampleTruth(objects, mentioned)


def _xyxy(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in bbox)
    return (x, y, x + w, y + h)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (0 when they do not overlap)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    """IoU of two COCO RLE masks of the same image."""
    from pycocotools import mask as mask_utils

    compressed = [{"size": m["size"], "counts": m["counts"].encode("ascii") if isinstance(m["counts"], str)
                   else m["counts"]} for m in (a, b)]
    return float(mask_utils.iou([compressed[0]], [compressed[1]], [0])[0][0])


def judge_sample(instances: Sequence[Mapping[str, Any]], truth: SampleTruth, *, iou: float = 0.5) -> dict[str, Any]:
    """Judge one sample's pseudo instances (pseudo.json records: category_id, bbox xywh, align_score,
    segmentation) against its truth; json-ready, in the instances' order.

    Returns {"present": {class id: objects present and mentioned}, "judged": [[right, covered,
    mask_iou or None, chance], ...]}.
    """
    total = len(truth.objects)
    per_class = Counter(o.category_id for o in truth.objects)
    present = truth.present_mentioned
    judged: list[list[Any]] = [[] for _ in instances]
    taken: set[int] = set()
    order = sorted(range(len(instances)), key=lambda i: -float(instances[i].get("align_score", 0.0)))
    for i in order:
        inst = instances[i]
        cid, box = int(inst["category_id"]), _xyxy(inst["bbox"])
        same = [(j, o) for j, o in enumerate(truth.objects) if o.category_id == cid]
        overlaps = [(box_iou(box, o.box), j, o) for j, o in same]
        right = any(v >= iou for v, _, _ in overlaps)
        free = [(v, j) for v, j, _ in overlaps if v >= iou and j not in taken and cid in present]
        covered = bool(free)
        if covered:
            taken.add(max(free)[1])
        masks = [mask_iou(inst["segmentation"], o.segmentation) for _, _, o in overlaps
                 if o.segmentation is not None and inst.get("segmentation") is not None]
        best_mask = round(max(masks), 4) if masks else None
        chance = per_class[cid] / total if total else 0.0
        judged[i] = [int(right), int(covered), best_mask, round(chance, 4)]
    return {"present": {str(k): v for k, v in sorted(present.items())}, "judged": judged}


@dataclass
class _Tally:
    instances: int = 0
    right: int = 0
    covered: int = 0
    present: int = 0
    chance: float = 0.0
    mask_iou: float = 0.0
    mask_judged: int = 0

    def summary(self) -> dict[str, Optional[float]]:
        """Precision, recall, chance precision and mean mask IoU (None where undefined) plus counts."""
        n = self.instances
        return {
            "instances": n,
            "present": self.present,
            "precision": self.right / n if n else None,
            "recall": self.covered / self.present if self.present else None,
            "chance": self.chance / n if n else None,
            "mask_iou": self.mask_iou / self.mask_judged if self.mask_judged else None,
        }


def quality_report(records: Iterable[Mapping[str, Any]], names: Mapping[int, str], splits: Mapping[int, str],
                   *, thresholds: int = 41) -> Optional[dict[str, Any]]:
    """Per-class, per-split and overall quality from manifest records that carry `truth`; None if none do.

    Each record has `categories` and `align_scores` (its instances, possibly empty) and `truth`
    (`judge_sample` output, or {"error": ...} for a sample whose truth was malformed: counted in
    `truth_errors`). `curve` gives, per split, precision, recall and the share of
    instances kept when only alignment scores >= each threshold are kept.
    """
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    scored: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    judged_samples = truth_errors = 0
    for record in records:
        truth = record.get("truth")
        if truth is None:
            continue
        if "error" in truth:
            truth_errors += 1
            continue
        judged_samples += 1
        for cid, n in truth["present"].items():
            for key in (names[int(cid)], splits[int(cid)], "all"):
                tallies[key].present += n
        for cid, score, (right, covered, miou, chance) in zip(record.get("categories", []),
                                                              record.get("align_scores", []), truth["judged"]):
            for key in (names[cid], splits[cid], "all"):
                t = tallies[key]
                t.instances += 1
                t.right += right
                t.covered += covered
                t.chance += chance
                if miou is not None:
                    t.mask_iou += miou
                    t.mask_judged += 1
            for key in (splits[cid], "all"):
                scored[key].append((float(score), right, covered))
    if not judged_samples and not truth_errors:
        return None
    classes = {names[c]: {"split": splits[c], **tallies[names[c]].summary()} for c in names}
    return {
        "samples": judged_samples,
        "truth_errors": truth_errors,
        "splits": {s: tallies[s].summary() for s in SPLITS},
        "classes": classes,
        "curve": {s: threshold_curve(scored[s], tallies[s].present, thresholds) for s in SPLITS},
    }


def threshold_curve(scored: Sequence[tuple[float, int, int]], present: int, points: int = 41) -> list[dict[str, float]]:
    """Precision, recall and kept share when keeping instances with score >= t, for `points` thresholds
    spread over the scores' quantiles (highest first is not implied: ascending t)."""
    if not scored:
        return []
    scores = np.array([s for s, _, _ in scored])
    right = np.array([r for _, r, _ in scored])
    covered = np.array([c for _, _, c in scored])
    out = []
    for t in np.unique(np.quantile(scores, np.linspace(0, 1, points), method="lower")):
        keep = scores >= t
        kept = int(keep.sum())
        out.append({
            "threshold": round(float(t), 5),
            "kept": round(kept / len(scores), 4),
            "precision": round(float(right[keep].mean()), 4),
            "recall": round(float(covered[keep].sum() / present), 4) if present else None,
        })
    return out


def format_report(report: dict[str, Any]) -> str:
    """The quality table as text: one line per split, then per class."""
    def cell(v: Optional[float]) -> str:
        return "   -" if v is None else f"{v:4.2f}"

    errors = f", {report['truth_errors']} with malformed truth" if report["truth_errors"] else ""
    lines = [f"pseudo-label quality on {report['samples']} samples with truth{errors} "
             "(right: box IoU >= 0.5 with an object of the named class)",
             f"{'':>10} {'inst':>6} {'prec':>5} {'recall':>6} {'chance':>6} {'maskIoU':>7}"]
    rows = [(s, report["splits"][s]) for s in SPLITS]
    rows += [(f"{name}{'*' if v['split'] == 'novel' else ''}", v) for name, v in report["classes"].items()]
    for name, v in rows:
        lines.append(f"{name:>10} {v['instances']:>6} {cell(v['precision']):>5} {cell(v['recall']):>6} "
                     f"{cell(v['chance']):>6} {cell(v['mask_iou']):>7}")
    lines.append("(* novel class)")
    return "\n".join(lines)

