"""Evaluation: mask and box AP over base / novel / all subsets equal pycocotools' own numbers, missing
subsets are None, results files are checked with one-line errors, and a model is evaluated in both settings."""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from presets import SHAPES
from xpl.cli import main
from xpl.data import rle
from xpl.eval.coco_eval import coco_ap, load_ground_truth, mask_ap, subset_metrics
from xpl.eval.open_vocab import evaluate_results_file, format_table

# Non-contiguous ids, as in COCO; 41 ("ring") has no instance in the ground truth.
CATEGORIES = [(3, "circle", "base"), (17, "square", "base"), (90, "star", "novel"), (41, "ring", "novel")]
SIZE = 40


def _blob(rng: np.random.Generator) -> np.ndarray:
    """A filled ellipse at a random place."""
    cy, cx = rng.integers(8, SIZE - 8, size=2)
    ry, rx = rng.integers(3, 8, size=2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _write_gt(folder: Path, *, with_split: bool = True) -> Path:
    rng = np.random.default_rng(3)
    images, annotations = [], []
    for image_id in (5, 8, 13):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": SIZE, "height": SIZE})
        for category_id in (3, 3, 17, 90):
            seg = rle.encode(_blob(rng))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "segmentation": seg, "area": rle.area(seg), "bbox": rle.bbox_xywh(seg),
                                "iscrowd": 0})
    categories = [{"id": i, "name": n, **({"split": s} if with_split else {})} for i, n, s in CATEGORIES]
    path = folder / ("gt.json" if with_split else "gt_nosplit.json")
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _write_vocab(folder: Path) -> Path:
    path = folder / "vocab.json"
    path.write_text(json.dumps({"categories": [{"id": i, "name": n, "split": s} for i, n, s in CATEGORIES]}))
    return path


def _gt_as_results(gt_path: Path) -> list[dict]:
    """Every ground-truth instance as a detection of score 1, without a box (derived from the mask)."""
    anns = json.loads(gt_path.read_text())["annotations"]
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": 1.0} for a in anns]


def _perturbed(gt_path: Path) -> list[dict]:
    """Drop every third instance, shift some masks and some boxes, relabel one, add scored false positives."""
    rng = np.random.default_rng(11)
    results = []
    for i, a in enumerate(json.loads(gt_path.read_text())["annotations"]):
        if i % 3 == 0:
            continue
        mask = rle.decode(a["segmentation"], SIZE, SIZE)
        if i % 4 == 1:
            mask = np.roll(mask, (2, 3), axis=(0, 1))
        record = {"image_id": a["image_id"], "category_id": 17 if i == 5 else a["category_id"],
                  "segmentation": rle.encode(mask), "score": float(rng.uniform(0.2, 1.0))}
        if i % 5 == 2:
            x, y, w, h = a["bbox"]
            record["bbox"] = [x + 4.0, y - 1.0, w, h + 2.0]
        results.append(record)
    for image_id in (5, 8, 13):
        for category_id in (3, 90, 41):
            seg = rle.encode(_blob(rng))
            results.append({"image_id": image_id, "category_id": category_id, "segmentation": seg,
                            "score": float(rng.uniform(0.0, 0.9))})
    return results


def _pycocotools(gt_path: Path, results: list[dict], cat_ids: list[int], iou_type: str) -> tuple[float, float]:
    """AP and AP50 (fractions) straight from COCOeval, in the standard result formats."""
    records = copy.deepcopy(results)
    for r in records:
        compressed = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
        if iou_type == "bbox":
            r.setdefault("bbox", list(mask_utils.toBbox(compressed)))
            del r["segmentation"]
        else:
            r.pop("bbox", None)
            r["segmentation"] = compressed
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(records), iouType=iou_type)
        evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


SUBSETS = {"base": [3, 17], "novel": [90, 41], "all": [3, 17, 90, 41]}


def test_ground_truth_as_predictions_scores_100_on_every_subset_with_instances(tmp_path):
    gt_path = _write_gt(tmp_path)
    metrics = subset_metrics(load_ground_truth(gt_path), _gt_as_results(gt_path),
                             {**SUBSETS, "no_instances": [41]})
    for subset in SUBSETS:
        for kind in ("mask", "box"):
            assert metrics[f"{subset}.{kind}_AP"] == 100.0
            assert metrics[f"{subset}.{kind}_AP50"] == 100.0
    assert {k: v for k, v in metrics.items() if k.startswith("no_instances.")} == {
        "no_instances.mask_AP": None, "no_instances.mask_AP50": None,
        "no_instances.box_AP": None, "no_instances.box_AP50": None}


def test_perturbed_predictions_match_pycocotools(tmp_path):
    gt_path = _write_gt(tmp_path)
    results = _perturbed(gt_path)
    metrics = subset_metrics(load_ground_truth(gt_path), results, SUBSETS)
    for subset, ids in SUBSETS.items():
        for kind, iou_type in (("mask", "segm"), ("box", "bbox")):
            ap, ap50 = _pycocotools(gt_path, results, ids, iou_type)
            assert 0 < ap < 1 and 0 < ap50 <= 1
            assert abs(metrics[f"{subset}.{kind}_AP"] / 100 - ap) < 1e-6
            assert abs(metrics[f"{subset}.{kind}_AP50"] / 100 - ap50) < 1e-6
    # shifting a box changes box AP but not mask AP
    assert metrics["all.mask_AP"] != metrics["all.box_AP"]


def test_missing_subset_and_empty_results(tmp_path):
    gt = load_ground_truth(_write_gt(tmp_path))
    assert coco_ap(gt, [], [3, 17], "box") == {"AP": 0.0, "AP50": 0.0}
    assert coco_ap(gt, [], [41], "box") == {"AP": None, "AP50": None}
    assert coco_ap(gt, [], [], "mask") == {"AP": None, "AP50": None}


def test_mask_ap_keeps_its_contract(tmp_path):
    gt_path = _write_gt(tmp_path)
    results = _gt_as_results(gt_path)
    assert mask_ap(str(gt_path), results, [90]) == {"AP": 100.0, "AP50": 100.0, "detections": len(results)}
    assert mask_ap(str(gt_path), results, [41]) == {"AP": None, "AP50": None, "detections": len(results)}


def test_results_file_splits_from_vocab_or_ground_truth(tmp_path):
    gt_path, plain_gt = _write_gt(tmp_path), _write_gt(tmp_path, with_split=False)
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(_perturbed(gt_path)))
    from_gt = evaluate_results_file(gt_path, predictions)
    from_vocab = evaluate_results_file(plain_gt, predictions, _write_vocab(tmp_path))
    assert from_gt == from_vocab
    assert sorted(from_gt) == sorted(f"results.{s}.{k}_{m}" for s in SUBSETS for k in ("mask", "box")
                                     for m in ("AP", "AP50"))


def test_format_table_shows_missing_as_na():
    table = format_table({"generalized.novel.mask_AP50": 21.64, "generalized.novel.mask_AP": None,
                          "generalized.novel.box_AP50": 30.0, "generalized.novel.box_AP": 12.25})
    header, row = table.splitlines()
    assert header.split() == ["setting", "subset", "mask", "AP50", "mask", "AP", "box", "AP50", "box", "AP"]
    assert row.split() == ["generalized", "novel", "21.6", "n/a", "30.0", "12.2"]


def _tracking(tmp_path: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"output_dir={tmp_path / 'outputs'}"]


def test_cli_results_file_mode_writes_metrics(tmp_path, capsys):
    gt_path = _write_gt(tmp_path, with_split=False)
    predictions = tmp_path / "preds.json"
    predictions.write_text(json.dumps(_gt_as_results(gt_path)))
    out = tmp_path / "eval"
    code = main(["evaluate", "--gt", str(gt_path), "--predictions", str(predictions), "--vocab",
                 str(_write_vocab(tmp_path)), "--out", str(out), *_tracking(tmp_path)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == 12 and all(v == 100.0 for v in metrics.values())
    assert (out / "metrics.txt").read_text().splitlines()[1].split() == ["results", "base", *["100.0"] * 4]
    assert "results  all" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("missing_predictions", "nowhere.json: results file not found"),
    ("missing_gt", "gt_missing.json: file not found"),
    ("unknown_category", "results[0].category_id=999 is not a category of the ground truth"),
    ("no_split", "no category has a 'split' field"),
    ("no_score", "results[0] lacks 'score'"),
])
def test_cli_results_file_errors_are_one_line(tmp_path, capsys, case, message):
    gt_path = _write_gt(tmp_path, with_split=case != "no_split")
    results = _gt_as_results(gt_path)
    if case == "unknown_category":
        results[0]["category_id"] = 999
    if case == "no_score":
        del results[0]["score"]
    predictions = tmp_path / "preds.json"
    predictions.write_text(json.dumps(results))
    args = {"--gt": str(gt_path), "--predictions": str(predictions)}
    if case == "missing_predictions":
        args["--predictions"] = str(tmp_path / "nowhere.json")
    if case == "missing_gt":
        args["--gt"] = str(tmp_path / "gt_missing.json")
    code = main(["evaluate", *(x for kv in args.items() for x in kv), *_tracking(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_needs_exactly_one_of_checkpoint_and_predictions(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", *_tracking(tmp_path)])
    assert stopped.value.code == 2
    assert "one of the arguments --checkpoint --predictions is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", "m.pt", "--predictions", "r.json", *_tracking(tmp_path)])
    assert "not allowed with argument --checkpoint" in capsys.readouterr().err


def test_model_evaluation_in_both_settings(tmp_path, shapes_world, random_teacher):
    from xpl.config import load_config
    from xpl.stages.evaluate import run_evaluate

    cfg = load_config(SHAPES, [f"data.root={shapes_world}", *_tracking(tmp_path)])
    result = run_evaluate(cfg, checkpoint=random_teacher)
    metrics = result["metrics"]
    expected = [f"generalized.{s}.{k}_{m}" for s in ("base", "novel", "all") for k in ("mask", "box")
                for m in ("AP", "AP50")]
    expected += [f"constrained.{s}.{k}_{m}" for s in ("base", "novel") for k in ("mask", "box") for m in ("AP", "AP50")]
    assert sorted(metrics) == sorted(expected)
    assert all(v is not None and 0.0 <= v <= 100.0 for v in metrics.values())  # both splits have val instances
    folder = Path(result["out"])
    assert folder == tmp_path / "outputs" / "evaluate" / f"{random_teacher.parent.name}-model"
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result["mlflow_run_id"]).data.metrics
    assert logged == pytest.approx(metrics)


def test_predictions_keep_up_to_100_per_image_and_leave_the_models_settings(shapes_world, random_teacher):
    """COCO's AP counts up to 100 detections per image: the model's own cap (10, for pictures) must not apply."""
    from xpl.data.coco import CocoInstances
    from xpl.eval.coco_eval import predict_masks
    from xpl.model.checkpoint import load_model

    model = load_model(random_teacher, map_location="cpu")
    model.roi_heads.score_thresh = 0.0
    own = torch.nn.functional.normalize(torch.randn(12, 384), dim=1)
    model.set_class_embeddings(own)
    dataset = CocoInstances(shapes_world / "coco" / "instances_val.json", shapes_world / "coco" / "val")
    vocab = {"all": (list(range(1, 13)), own)}
    subset = torch.utils.data.Subset(dataset, [0, 1])
    per_image = Counter(r["image_id"] for r in predict_masks(model, subset, vocab, score_threshold=0.0)["all"])
    capped = Counter(r["image_id"] for r in predict_masks(model, subset, vocab, max_detections=10,
                                                          score_threshold=0.0)["all"])
    assert max(per_image.values()) > 10 and max(capped.values()) <= 10
    assert (model.roi_heads.detections_per_img, model.roi_heads.score_thresh) == (10, 0.0)


def test_one_backbone_pass_serves_each_vocabulary_as_a_pass_of_its_own(shapes_world, random_teacher):
    from xpl.data.coco import CocoInstances
    from xpl.eval.coco_eval import predict_masks
    from xpl.model.checkpoint import load_model

    model = load_model(random_teacher, map_location="cpu")
    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(5, 384), dim=1)
    dataset = torch.utils.data.Subset(CocoInstances(shapes_world / "coco" / "instances_val.json",
                                                    shapes_world / "coco" / "val"), [0, 1, 2])
    vocabularies = {"all": ([1, 2, 3, 4, 5], embeddings), "some": ([2, 5], embeddings[[1, 4]])}
    together = predict_masks(model, dataset, vocabularies, batch_size=2, score_threshold=0.0)
    for name, vocabulary in vocabularies.items():
        alone = predict_masks(model, dataset, {name: vocabulary}, batch_size=2, score_threshold=0.0)[name]
        assert together[name] == alone and alone
    assert model.class_embeddings.shape[0] == 0  # the model's own vocabulary (none) is kept
