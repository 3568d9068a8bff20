"""COCO run-length encoding helpers: one place that turns masks into json and back."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode a boolean HxW mask as a json-ready COCO RLE (`counts` is a str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode(segmentation: dict[str, Any] | list[list[float]], height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to a bool HxW mask."""
    if isinstance(segmentation, list):  # polygons, as in real COCO non-crowd annotations
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def area(rle: dict[str, Any]) -> int:
    """Pixel count of an RLE produced by `encode`."""
    return int(mask_utils.area(_compressed(rle)))


def bbox_xywh(rle: dict[str, Any]) -> list[float]:
    """Tight COCO box [x, y, w, h] of an RLE produced by `encode`."""
    return [float(v) for v in mask_utils.toBbox(_compressed(rle))]


def _compressed(rle: dict[str, Any]) -> dict[str, Any]:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def encode_uncompressed(mask: np.ndarray) -> dict[str, Any]:
    """Encode a boolean HxW mask as COCO's uncompressed RLE, the form COCO stores crowd annotations in:
    `counts` is a list of run lengths in column-major order, starting with a (possibly empty) run of zeros."""
    flat = mask.astype(bool).flatten(order="F")
    edges = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = [0] * bool(flat.size and flat[0]) + [int(n) for n in np.diff(edges)]
    return {"counts": counts, "size": [int(s) for s in mask.shape]}
