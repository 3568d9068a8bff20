"""COCO mask AP: COCOeval's -1 (no ground truth for the categories) is missing, never 0.0."""

import json

import numpy as np
import pytest

from xpl.data import rle
from xpl.eval.coco_eval import mask_ap


def test_ap_without_ground_truth_is_missing_not_zero(tmp_path):
    mask = np.zeros((16, 16), dtype=bool)
    mask[2:10, 3:12] = True
    seg = rle.encode(mask)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg, "area": rle.area(seg),
                         "bbox": rle.bbox_xywh(seg), "iscrowd": 0}],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "heart"}]}))
    results = [{"image_id": 1, "category_id": c, "segmentation": seg, "score": 0.9} for c in (1, 2)]
    assert mask_ap(str(gt), results, [1]) == {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0),
                                              "detections": 2}
    assert mask_ap(str(gt), results, [2]) == {"AP": None, "AP50": None, "detections": 2}
    assert mask_ap(str(gt), [], [1]) == {"AP": 0.0, "AP50": 0.0, "detections": 0}
    assert mask_ap(str(gt), [], [2]) == {"AP": None, "AP50": None, "detections": 0}
