"""COCO mask AP with pycocotools over a chosen set of categories."""

from __future__ import annotations

import contextlib
import io
from typing import Any, Iterable

import numpy as np
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


def mask_ap(gt_json: str, results: list[dict[str, Any]], category_ids: Iterable[int]) -> dict[str, float]:
    """Mask AP and AP50 (in %) over `category_ids`; 0.0 when there are no detections at all."""
    cat_ids = sorted(category_ids)
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        dt = gt.loadRes([{**r, "segmentation": dict(r["segmentation"])} for r in results])
        evaluator = COCOeval(gt, dt, iouType="segm")
        evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = np.asarray(evaluator.stats)
    return {"AP": float(max(stats[0], 0.0) * 100), "AP50": float(max(stats[1], 0.0) * 100), "detections": len(results)}
