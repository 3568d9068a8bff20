"""Known-answer tests of the pseudo-label quality metric (constructed instances and truth)."""

from __future__ import annotations

import numpy as np
import pytest

from xpl.data import rle
from xpl.errors import DataError
from xpl.eval.pseudo_quality import (box_iou, format_report, judge_sample, mask_iou, quality_report, read_truth,
                                     threshold_curve)

IDS = {"circle": 1, "square": 2, "moon": 3}
NAMES = {1: "circle", 2: "square", 3: "moon"}
SPLITS = {1: "base", 2: "base", 3: "novel"}


def _mask(x0: int, y0: int, x1: int, y1: int, size: int = 20) -> dict:
    m = np.zeros((size, size), dtype=bool)
    m[y0:y1, x0:x1] = True
    return rle.encode(m)


def _meta(objects: list[tuple[str, list[float]]], mentioned: list[tuple[str, bool]], masks: bool = True) -> dict:
    objs = []
    for name, (x, y, w, h) in objects:
        o = {"category": name, "colour": "red", "bbox": [x, y, w, h]}
        if masks:
            o["segmentation"] = _mask(int(x), int(y), int(x + w), int(y + h))
        objs.append(o)
    return {"xpl": {"objects": objs, "mentions": [{"category": n, "present": p} for n, p in mentioned]}}


def _inst(cid: int, box: list[float], score: float, mask: bool = True) -> dict:
    x, y, w, h = box
    out = {"category_id": cid, "bbox": box, "align_score": score}
    if mask:
        out["segmentation"] = _mask(int(x), int(y), int(x + w), int(y + h))
    return out


def test_box_and_mask_iou_known_values() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert mask_iou(_mask(0, 0, 10, 10), _mask(5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_read_truth_absent_and_malformed() -> None:
    assert read_truth({"caption": "a cat"}, IDS) is None
    truth = read_truth(_meta([("circle", [0, 0, 5, 5])], [("circle", True), ("moon", False)]), IDS)
    assert truth is not None and truth.mentioned == {1, 3} and truth.objects[0].box == (0, 0, 5, 5)
    with pytest.raises(DataError, match="k9.*xpl.*'triangle'"):
        read_truth(_meta([("triangle", [0, 0, 5, 5])], []), IDS, where="k9")


def test_judge_sample_right_covered_mask_and_chance() -> None:
    # Two circles and a square; the caption names circle, square and a moon that is not in the image.
    meta = _meta([("circle", [0, 0, 10, 10]), ("circle", [10, 10, 10, 10]), ("square", [0, 10, 5, 5])],
                 [("circle", True), ("square", True), ("moon", False)])
    truth = read_truth(meta, IDS)
    instances = [
        _inst(1, [0, 0, 10, 10], 0.9),   # right circle, exact
        _inst(1, [1, 0, 10, 10], 0.5),   # right box (IoU 0.82) but on the same circle: not covered again
        _inst(2, [10, 10, 10, 10], 0.7),  # "square" on the second circle: wrong
        _inst(3, [0, 10, 5, 5], 0.3),    # "moon" (absent) on the square: wrong
    ]
    out = judge_sample(instances, truth)
    assert out["present"] == {"1": 2, "2": 1}
    right, covered, mious, chances = zip(*out["judged"])
    assert right == (1, 1, 0, 0)
    assert covered == (1, 0, 0, 0)
    assert mious[0] == 1.0 and mious[1] == pytest.approx(90 / 110, abs=1e-4)
    assert mious[2] == pytest.approx(0.0) and mious[3] is None  # no moon in the truth
    assert chances == (pytest.approx(2 / 3, abs=1e-4), pytest.approx(2 / 3, abs=1e-4),
                       pytest.approx(1 / 3, abs=1e-4), 0.0)


def test_judge_sample_higher_score_takes_the_object_first() -> None:
    truth = read_truth(_meta([("circle", [0, 0, 10, 10])], [("circle", True)]), IDS)
    out = judge_sample([_inst(1, [1, 0, 10, 10], 0.2), _inst(1, [0, 0, 10, 10], 0.8)], truth)
    assert [j[1] for j in out["judged"]] == [0, 1]


def test_judge_sample_without_masks_in_truth() -> None:
    truth = read_truth(_meta([("moon", [0, 0, 4, 4])], [("moon", True)], masks=False), IDS)
    out = judge_sample([_inst(3, [0, 0, 4, 4], 1.0)], truth)
    assert out["judged"] == [[1, 1, None, 1.0]]


def _record(instances: list[dict], meta: dict) -> dict:
    truth = read_truth(meta, IDS)
    return {"categories": [i["category_id"] for i in instances], "align_scores": [i["align_score"] for i in instances],
            "truth": judge_sample(instances, truth)}


def test_quality_report_per_class_split_and_overall() -> None:
    a = _record([_inst(1, [0, 0, 10, 10], 0.9), _inst(3, [10, 10, 5, 5], 0.2)],
                _meta([("circle", [0, 0, 10, 10]), ("moon", [0, 10, 5, 5])], [("circle", True), ("moon", True)]))
    b = _record([_inst(3, [0, 0, 6, 6], 0.8)],
                _meta([("moon", [0, 0, 6, 6]), ("square", [10, 10, 5, 5])], [("moon", True), ("square", True)]))
    real_data = {"categories": [1], "align_scores": [0.5]}  # no truth: not judged
    broken = {"truth": {"error": "k3: json field 'xpl' is malformed"}}
    report = quality_report([a, b, real_data, broken], NAMES, SPLITS)
    assert report["samples"] == 2 and report["truth_errors"] == 1
    novel, base, overall = report["splits"]["novel"], report["splits"]["base"], report["splits"]["all"]
    assert (novel["instances"], novel["precision"], novel["recall"], novel["present"]) == (2, 0.5, 0.5, 2)
    assert novel["chance"] == pytest.approx((0.5 + 0.5) / 2)
    assert (base["instances"], base["precision"], base["recall"], base["present"]) == (1, 1.0, 0.5, 2)
    assert overall["precision"] == pytest.approx(2 / 3) and overall["recall"] == pytest.approx(2 / 4)
    assert report["classes"]["square"]["precision"] is None and report["classes"]["square"]["recall"] == 0.0
    assert report["classes"]["moon"]["mask_iou"] == pytest.approx(0.5)  # 1.0 and 0.0
    text = format_report(report)
    assert "moon*" in text and "novel" in text and "1 with malformed truth" in text
    assert quality_report([real_data], NAMES, SPLITS) is None


def test_threshold_curve_known_points() -> None:
    scored = [(0.1, 0, 0), (0.2, 1, 1), (0.3, 0, 0), (0.4, 1, 1)]
    curve = threshold_curve(scored, present=4, points=4)
    assert [p["threshold"] for p in curve] == [0.1, 0.2, 0.3, 0.4]
    assert [p["kept"] for p in curve] == [1.0, 0.75, 0.5, 0.25]
    assert [p["precision"] for p in curve] == [0.5, pytest.approx(2 / 3, abs=1e-4), 0.5, 1.0]
    assert [p["recall"] for p in curve] == [0.5, 0.5, 0.25, 0.25]
    assert threshold_curve([], present=3) == []
