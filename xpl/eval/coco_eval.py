"""COCO mask and box AP with pycocotools over chosen category subsets.

Ground truth is read once (`load_ground_truth`) and each (subset, mask|box) pair is one COCOeval run:
pycocotools' `accumulate` cannot take a category subset of an evaluation made over more categories.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from xpl.data import rle
from xpl.data.coco import CocoInstances, load_instances_json
from xpl.errors import DataError

IOU_TYPES = {"mask": "segm", "box": "bbox"}  # metric prefix -> COCOeval iouType
RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")
GT_KEYS = ("id", "image_id", "category_id", "segmentation", "bbox", "area")
MAX_DETECTIONS = 100  # per image, as COCO's AP counts them (maxDets=100)
SCORE_THRESHOLD = 0.05  # the usual test-time floor of Mask R-CNN evaluations


Vocabularies = Mapping[str, tuple[list[int], torch.Tensor]]  # name -> (category ids, [C, D] class embeddings)


@torch.no_grad()
def predict_masks(model: torch.nn.Module, dataset: CocoInstances, vocabularies: Vocabularies, *,
                  batch_size: int = 8, device: str | torch.device = "cpu", max_detections: int = MAX_DETECTIONS,
                  score_threshold: float = SCORE_THRESHOLD) -> dict[str, list[dict[str, Any]]]:
    """COCO result records (RLE mask, xywh box, score) of `model` on `dataset` under each vocabulary: labels
    1..C of vocabulary `name` map to its category ids. One backbone and RPN pass per image serves every
    vocabulary (`OpenVocabMaskRCNN.detect_each`).

    Up to `max_detections` per image scoring at least `score_threshold` (COCO's AP counts up to 100 per image;
    the model's own defaults, meant for pictures, keep fewer), the model's settings restored afterwards.
    """
    model.eval()
    heads = model.roi_heads
    kept = heads.detections_per_img, heads.score_thresh
    heads.detections_per_img, heads.score_thresh = max_detections, score_threshold
    try:
        return _predict(model, dataset, vocabularies, batch_size, device)
    finally:
        heads.detections_per_img, heads.score_thresh = kept


@torch.no_grad()
def _predict(model: torch.nn.Module, dataset: CocoInstances, vocabularies: Vocabularies, batch_size: int,
             device: str | torch.device) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in vocabularies}
    embeddings = [emb for _, emb in vocabularies.values()]
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = model.detect_each([img.to(device) for img, _ in items], embeddings)
        for (name, (category_ids, _)), per_image in zip(vocabularies.items(), outputs):
            for (_, target), out in zip(items, per_image):
                results[name] += _records(target["image_id"], out, category_ids)
    return results


def _records(image_id: int, out: Mapping[str, torch.Tensor], category_ids: list[int]) -> list[dict[str, Any]]:
    """One image's detections as COCO result records."""
    masks = (out["masks"][:, 0] >= 0.5).cpu().numpy()
    records = []
    for mask, box, label, score in zip(masks, out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
        x0, y0, x1, y1 = box
        records.append({"image_id": image_id, "category_id": category_ids[label - 1], "segmentation": rle.encode(mask),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    return records


def load_ground_truth(gt_json: str | Path) -> COCO:
    """The pycocotools index of a COCO instances json; DataError naming the file and field when unusable."""
    content = load_instances_json(gt_json)
    for i, ann in enumerate(content["annotations"]):
        missing = [key for key in GT_KEYS if key not in ann]
        if missing:
            raise DataError(f"{gt_json}: annotations[{i}] lacks {', '.join(repr(k) for k in missing)}")
    gt = COCO()
    gt.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def check_results(gt: COCO, results: Sequence[Any], source: str | Path, gt_source: str | Path) -> None:
    """Raise DataError naming `source`, the record and the field when a result cannot be evaluated on `gt`."""
    images, categories = set(gt.getImgIds()), set(gt.getCatIds())
    for i, record in enumerate(results):
        if not isinstance(record, Mapping):
            raise DataError(f"{source}: results[{i}] is not an object")
        missing = [key for key in RESULT_KEYS if key not in record]
        if missing:
            raise DataError(f"{source}: results[{i}] lacks {', '.join(repr(k) for k in missing)}")
        segmentation = record["segmentation"]
        if not isinstance(segmentation, Mapping) or not {"size", "counts"} <= set(segmentation):
            raise DataError(f"{source}: results[{i}].segmentation is not a COCO RLE (an object with size and counts)")
        if record["category_id"] not in categories:
            raise DataError(f"{source}: results[{i}].category_id={record['category_id']!r} is not a category "
                            f"of the ground truth {gt_source}")
        if record["image_id"] not in images:
            raise DataError(f"{source}: results[{i}].image_id={record['image_id']!r} is not an image "
                            f"of the ground truth {gt_source}")


def _as_result(record: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A fresh record (loadRes writes into it) in COCO's result format for `kind`; a record without `bbox`
    is boxed by its mask's tight box."""
    base = {"image_id": record["image_id"], "category_id": record["category_id"], "score": float(record["score"])}
    if kind == "mask":
        return {**base, "segmentation": dict(record["segmentation"])}
    box = record.get("bbox")
    return {**base, "bbox": [float(v) for v in box] if box else rle.bbox_xywh(record["segmentation"])}


def _percent(stat: float) -> Optional[float]:
    """A COCOeval summary value in %; its -1 (nothing to evaluate) is None, never 0."""
    return None if stat < 0 else float(stat * 100)


def coco_ap(gt: COCO, results: Sequence[Mapping[str, Any]], category_ids: Iterable[int],
            kind: str = "mask") -> dict[str, Optional[float]]:
    """AP and AP50 (in %) of `results` over `category_ids`, for masks (`kind="mask"`) or boxes ("box").

    None (missing, not 0.0) when the ground truth has no non-crowd instance of these categories, since
    nothing can be measured there; 0.0 when it has some but nothing was detected.
    """
    cat_ids = sorted(set(category_ids))
    instances = gt.loadAnns(gt.getAnnIds(catIds=cat_ids)) if cat_ids else []
    if not any(not ann.get("iscrowd", 0) for ann in instances):
        return {"AP": None, "AP50": None}
    if not results:
        return {"AP": 0.0, "AP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes([_as_result(r, kind) for r in results]), iouType=IOU_TYPES[kind])
        evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"AP": _percent(evaluator.stats[0]), "AP50": _percent(evaluator.stats[1])}


def subset_metrics(gt: COCO, results: Sequence[Mapping[str, Any]],
                   subsets: Mapping[str, Iterable[int]]) -> dict[str, Optional[float]]:
    """`<subset>.<mask|box>_<AP|AP50>` (in %, None when missing) for each named category subset."""
    return {f"{name}.{kind}_{stat}": value for name, ids in subsets.items() for kind in IOU_TYPES
            for stat, value in coco_ap(gt, results, list(ids), kind).items()}


def mask_ap(gt_json: str | Path, results: list[dict[str, Any]],
            category_ids: Iterable[int]) -> dict[str, Optional[float] | int]:
    """Mask AP and AP50 (in %) over `category_ids` (see `coco_ap`), and the number of detections."""
    return {**coco_ap(load_ground_truth(gt_json), results, category_ids, "mask"), "detections": len(results)}
