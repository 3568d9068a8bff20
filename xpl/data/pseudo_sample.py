"""Decode the `pseudo.json` member that pseudo-labeling writes beside each labeled caption sample into
student targets, at the size the image was decoded to.

Only the instances' class, box and mask are read: the shards' other members (the img2dataset `.json`,
which in the shapes world carries the truth) never reach the student. Reasons a sample is skipped:
`missing_pseudo` (no member), `bad_pseudo` (not json, or a field missing or malformed; the reason names
it) and `no_instances` (nothing to learn from).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from PIL import Image

from xpl.data import rle

MEMBER = "pseudo.json"


@dataclass
class PseudoTargets:
    """Per instance: vocabulary category id, box (x1, y1, x2, y2) and bool mask in the decoded image's pixels."""

    category_ids: list[int]
    boxes: np.ndarray  # [N, 4] float32
    masks: np.ndarray  # [N, H, W] bool


class BadPseudo(ValueError):
    """A pseudo.json that cannot be used; the message names the field."""


def _field(instance: dict[str, Any], name: str, index: int) -> Any:
    if name not in instance:
        raise BadPseudo(f"instances[{index}].{name} missing")
    return instance[name]


def _mask(segmentation: Any, index: int, width: int, height: int) -> np.ndarray:
    """The instance's mask, resized (nearest) to `width` x `height` when stored at another size."""
    try:
        stored_h, stored_w = (int(v) for v in segmentation["size"])
        mask = rle.decode(segmentation, stored_h, stored_w)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadPseudo(f"instances[{index}].segmentation: {type(exc).__name__}: {exc}") from exc
    if (stored_w, stored_h) != (width, height):
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return mask


def decode_pseudo(data: bytes, width: int, height: int) -> PseudoTargets:
    """Targets for an image decoded at `width` x `height` from pseudo.json bytes; raises BadPseudo.

    Boxes (COCO `bbox`, x y w h) become x1 y1 x2 y2, scaled from the original size that pseudo.json records
    (`width`, `height`) and clipped.
    """
    try:
        record = json.loads(data)
        original = (float(record["width"]), float(record["height"]))
        instances = record["instances"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadPseudo(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(instances, list):
        raise BadPseudo("instances is not a list")
    scale = np.array([width / original[0], height / original[1]] * 2, dtype=np.float32)
    ids, boxes, masks = [], [], []
    for i, instance in enumerate(instances):
        try:
            xywh = np.asarray(_field(instance, "bbox", i), dtype=np.float32)
            ids.append(int(_field(instance, "category_id", i)))
        except (TypeError, ValueError) as exc:
            raise BadPseudo(f"instances[{i}]: {type(exc).__name__}: {exc}") from exc
        if xywh.shape != (4,):
            raise BadPseudo(f"instances[{i}].bbox must hold 4 numbers (x, y, width, height)")
        box = np.concatenate([xywh[:2], xywh[:2] + xywh[2:]])
        boxes.append(np.clip(box * scale, 0, [width, height, width, height]))
        masks.append(_mask(_field(instance, "segmentation", i), i, width, height))
    return PseudoTargets(ids, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                         np.asarray(masks, dtype=bool).reshape(-1, height, width))


def check_pseudo(members: dict[str, bytes], width: int, height: int) -> tuple[Optional[PseudoTargets], Optional[str]]:
    """(targets, None) for a usable sample, else (None, reason) with a reason of the module docstring."""
    if MEMBER not in members:
        return None, "missing_pseudo"
    try:
        targets = decode_pseudo(members[MEMBER], width, height)
    except BadPseudo as exc:
        return None, f"bad_pseudo: {exc}"
    if not targets.category_ids:
        return None, "no_instances"
    return targets, None
