"""COCO mask AP with pycocotools over a chosen set of categories."""

from __future__ import annotations

import contextlib
import io
from typing import Any, Iterable, Optional

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from xpl.data import rle
from xpl.data.coco import CocoInstances


@torch.no_grad()
def predict_masks(model: torch.nn.Module, dataset: CocoInstances, category_ids: list[int], *,
                  batch_size: int = 8, device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """COCO result records (RLE masks) of `model` on `dataset`; labels 1..C map to `category_ids`.

    The model's class embeddings must already be those of `category_ids`, in that order.
    """
    model.eval()
    results: list[dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = model([img.to(device) for img, _ in items])
        for (_, target), out in zip(items, outputs):
            masks = (out["masks"][:, 0] >= 0.5).cpu().numpy()
            for mask, label, score in zip(masks, out["labels"].tolist(), out["scores"].tolist()):
                results.append({"image_id": target["image_id"], "category_id": category_ids[label - 1],
                                "segmentation": rle.encode(mask), "score": float(score)})
    return results


def _percent(stat: float) -> Optional[float]:
    """A COCOeval summary value in %; its -1 (nothing to evaluate) is None, never 0."""
    return None if stat < 0 else float(stat * 100)


def mask_ap(gt_json: str, results: list[dict[str, Any]],
            category_ids: Iterable[int]) -> dict[str, Optional[float] | int]:
    """Mask AP and AP50 (in %) over `category_ids`, and the number of detections.

    AP is None (missing, not 0.0) when the ground truth has no instance of these categories: COCOeval
    reports -1 then, as nothing can be measured. With ground truth but no detections it is 0.0.
    """
    cat_ids = sorted(category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        if not results:
            value = 0.0 if gt.getAnnIds(catIds=cat_ids, iscrowd=False) else None
            return {"AP": value, "AP50": value, "detections": 0}
        dt = gt.loadRes([{**r, "segmentation": dict(r["segmentation"])} for r in results])
        evaluator = COCOeval(gt, dt, iouType="segm")
        evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"AP": _percent(stats[0]), "AP50": _percent(stats[1]), "detections": len(results)}
