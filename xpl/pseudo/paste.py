"""Pseudo instances from a selection: the chosen masks pasted into the original image, binarised, RLE-encoded.

CPU work at the original image size, run where the pseudo-labels are written (`xpl.pseudo.writer`), so the
teacher actor spends its time on the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from xpl.data import rle
from xpl.pseudo.choice import BELOW_THRESHOLD, RegionChoice, RegionsLike, Selection, Word, select_regions

EMPTY_MASK = "empty_mask"  # every chosen mask is empty once binarised (the sample is then `no_match`)


@dataclass(frozen=True)
class PseudoInstance:
    """One pseudo-labeled object: box xyxy and mask in the original image's pixels."""

    category_id: int
    name: str
    phrase: str
    box: tuple[float, float, float, float]
    segmentation: dict[str, Any]  # COCO RLE, `counts` as str
    align_score: float
    mask_score: float
    region_score: float

    def to_json(self) -> dict[str, Any]:
        x0, y0, x1, y1 = self.box
        return {
            "category_id": self.category_id,
            "name": self.name,
            "phrase": self.phrase,
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "segmentation": self.segmentation,
            "area": rle.area(self.segmentation),
            "align_score": round(self.align_score, 5),
            "mask_score": round(self.mask_score, 5),
            "region_score": round(self.region_score, 5),
        }


@dataclass(frozen=True)
class Alignment:
    """The pseudo instances of one image, or (when there are none) why not."""

    instances: list[PseudoInstance]
    reason: Optional[str] = None


def paste_masks(mask_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[K, M, M] box-relative probabilities -> [K, H, W] probabilities in the image (torchvision)."""
    if mask_probs.shape[0] == 0:
        return torch.zeros(0, height, width)
    return paste_masks_in_image(mask_probs[:, None].float(), boxes.float(), (height, width))[:, 0]


def build_instances(
    selection: Selection, *, height: int, width: int, mask_threshold: float, box_scale: float = 1.0
) -> Alignment:
    """Paste the selected masks into the `height` x `width` original image, binarise, encode as RLE.

    `box_scale` maps the teacher's box coordinates to original pixels (original / teacher input,
    for an image resized before the teacher). The mask score is the mean mask probability over
    the binarised mask. A word whose pasted mask is empty after binarisation gives no instance.
    The instance box is the selection's box, or the mask's tight box for a grown selection.
    """
    if not selection.words:
        return Alignment([], selection.reason or BELOW_THRESHOLD)
    boxes = torch.from_numpy(selection.boxes).float() * box_scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    probs = paste_masks(torch.from_numpy(selection.mask_probs), boxes, height, width).numpy()
    instances = []
    for (category_id, name, phrase), score, region_score, box, prob in zip(
        selection.words, selection.scores.tolist(), selection.region_scores.tolist(), boxes.tolist(), probs
    ):
        mask = prob >= mask_threshold
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            continue
        if selection.tight_boxes:
            box = [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
        instances.append(
            PseudoInstance(
                category_id=int(category_id),
                name=name,
                phrase=phrase,
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                segmentation=rle.encode(mask),
                align_score=float(score),
                mask_score=float(prob[mask].mean()),
                region_score=float(region_score),
            )
        )
    return Alignment(instances, None if instances else EMPTY_MASK)


def align_image(words: Sequence[Word], regions: RegionsLike, choice: RegionChoice, *, height: int, width: int,
                box_scale: float = 1.0) -> Alignment:
    """Pseudo instances for one image of `height` x `width` original pixels (select, then build)."""
    return build_instances(select_regions(words, regions, choice), height=height, width=width, box_scale=box_scale,
                           mask_threshold=choice.mask_threshold)
