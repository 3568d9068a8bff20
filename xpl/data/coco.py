"""COCO-format instance segmentation as a torch Dataset in torchvision detection format."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from xpl.data import rle
from xpl.errors import DataError
from xpl.jsonfile import read_json

REQUIRED_KEYS = ("images", "annotations", "categories")


def load_instances_json(json_path: str | Path) -> dict[str, Any]:
    """Read a COCO instances json, raising DataError that names the file and the problem."""
    path = Path(json_path)
    content = read_json(path, "file")
    if not isinstance(content, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(content).__name__}")
    for key in REQUIRED_KEYS:
        if key not in content:
            raise DataError(f"{path.name}: missing key '{key}' ({path})")
    return content


class CocoInstances(torch.utils.data.Dataset):
    """Images with instance masks, as `(image, target)` pairs for torchvision's Mask R-CNN.

    `image` is float32 CHW in [0, 1]; `target` has `boxes` (float [N, 4] xyxy), `labels`
    (int64, 1 + index of the category id in `category_ids`; 0 is background), `masks`
    (uint8 [N, H, W]) and `image_id`. Crowd annotations, degenerate boxes (w or h < 1) and
    annotations of categories outside `category_ids` are left out; images without
    annotations are kept (empty tensors), as unlabeled regions still shape training.

    `image_dir` defaults to `<json folder>/<info.image_dir>` (the shapes world writes it).
    `category_ids` defaults to every category id that has an annotation, sorted.
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path | None = None,
                 category_ids: list[int] | None = None) -> None:
        self.json_path = Path(json_path)
        content = load_instances_json(self.json_path)
        self.image_dir = Path(image_dir) if image_dir is not None else self._default_image_dir(content)
        self.images: list[dict[str, Any]] = content["images"]
        self.categories = {c["id"]: c for c in content["categories"]}
        self._anns: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in content["annotations"]:
            self._anns[ann["image_id"]].append(ann)
        if category_ids is None:
            category_ids = sorted({a["category_id"] for a in content["annotations"]})
        unknown = sorted(set(category_ids) - set(self.categories))
        if unknown:
            raise DataError(f"{self.json_path.name}: category ids {unknown} are not in 'categories'")
        self.category_ids = list(category_ids)
        self._label = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

    def _default_image_dir(self, content: dict[str, Any]) -> Path:
        folder = content.get("info", {}).get("image_dir")
        if folder is None:
            raise DataError(f"{self.json_path.name}: no 'info.image_dir' in the json; pass image_dir explicitly")
        return self.json_path.parent / folder

    @property
    def image_ids(self) -> list[int]:
        return [img["id"] for img in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        info = self.images[index]
        image = self._read_image(info)
        height, width = image.shape[1:]
        boxes, labels, masks = [], [], []
        for ann in self._anns.get(info["id"], []):
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w < 1 or h < 1 or ann["category_id"] not in self._label:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self._label[ann["category_id"]])
            masks.append(rle.decode(ann["segmentation"], height, width))
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks
            else torch.zeros((0, height, width), dtype=torch.uint8),
            "image_id": int(info["id"]),
        }
        return image, target

    def _read_image(self, info: dict[str, Any]) -> torch.Tensor:
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as img:  # as displayed, as COCO's width and height are
                array = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"{path}: image not found (listed in {self.json_path.name})") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from exc
        if array.shape[:2] != (info["height"], info["width"]):
            raise DataError(f"{path}: image is {array.shape[1]}x{array.shape[0]} but "
                            f"{self.json_path.name} says {info['width']}x{info['height']}")
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
