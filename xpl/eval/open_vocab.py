"""Open-vocabulary evaluation: mask and box AP on base, novel and all categories, in the paper's two settings.

Generalized: one classifier over every vocabulary name (base + novel); one prediction pass, scored on the
base, novel and all subsets. Constrained: a classifier over one split's names only, scored on that split;
one pass per split. Metrics are flat, `<setting>.<subset>.<mask|box>_<AP|AP50>` in %, None where the
ground truth has no instance of the subset. A COCO results file is scored on the same subsets under the
setting name `results` (how its classifier was built is not known).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from pycocotools.coco import COCO

from xpl.data.coco import CocoInstances
from xpl.errors import DataError
from xpl.eval.coco_eval import check_results, load_ground_truth, predict_masks, subset_metrics
from xpl.jsonfile import read_json
from xpl.text import TextEncoder
from xpl.vocab import Vocabulary

SUBSETS = ("base", "novel", "all")
COLUMNS = (("mask_AP50", "mask AP50"), ("mask_AP", "mask AP"), ("box_AP50", "box AP50"), ("box_AP", "box AP"))


def split_ids(vocab: Vocabulary) -> dict[str, list[int]]:
    """Category ids of the base, novel and all subsets, in vocabulary order."""
    return {subset: [c.id for c in vocab.split(subset)] for subset in SUBSETS}


def _prefixed(setting: str, metrics: Mapping[str, Optional[float]]) -> dict[str, Optional[float]]:
    return {f"{setting}.{key}": value for key, value in metrics.items()}


def evaluate_model(model: torch.nn.Module, vocab: Vocabulary, encoder: TextEncoder, gt_json: str | Path,
                   image_dir: str | Path, *, batch_size: int = 8, device: str | torch.device = "cpu",
                   classes: Sequence[str] = ()) -> dict[str, Optional[float]]:
    """Generalized (base, novel, all, and each of `classes` by name) and constrained (base, novel) mask and box AP
    of `model` on a COCO split."""
    gt = load_ground_truth(gt_json)
    dataset = CocoInstances(gt_json, image_dir, category_ids=vocab.ids)
    subsets = split_ids(vocab)
    classifiers = {"all": subsets["all"], **{split: subsets[split] for split in ("base", "novel") if subsets[split]}}
    vocabularies = {name: (ids, model.embed_names(encoder, [vocab.by_id(i).name for i in ids]))
                    for name, ids in classifiers.items()}
    results = predict_masks(model, dataset, vocabularies, batch_size=batch_size, device=device)
    named = {name: [vocab.by_name(name).id] for name in classes}
    metrics = _prefixed("generalized", subset_metrics(gt, results["all"], {**subsets, **named}))
    for split in ("base", "novel"):
        metrics |= _prefixed("constrained", subset_metrics(gt, results.get(split, []), {split: subsets[split]}))
    return metrics


def ground_truth_vocabulary(gt: COCO, gt_source: str | Path) -> Vocabulary:
    """The categories of a ground-truth json that carry a `split` field, as a vocabulary."""
    records = [c for c in gt.dataset["categories"] if "split" in c]
    if not records:
        raise DataError(f"{gt_source}: no category has a 'split' field (base/novel); pass a vocabulary file "
                        "(--vocab, e.g. the vocab.json `xpl synth` writes)")
    return Vocabulary.from_records(records, gt_source)


def evaluate_results_file(gt_json: str | Path, predictions: str | Path,
                          vocab_path: str | Path | None = None) -> dict[str, Optional[float]]:
    """Mask and box AP of a COCO results json (RLE masks) on base, novel and all, as `results.<subset>.*`.

    The splits come from `vocab_path` (a vocabulary json) or else from the ground truth's categories.
    """
    gt = load_ground_truth(gt_json)
    results = read_json(predictions, "results file")
    if not isinstance(results, list):
        raise DataError(f"{predictions}: expected a list of COCO result records, got {type(results).__name__}")
    check_results(gt, results, predictions, gt_json)
    vocab = Vocabulary.load(vocab_path) if vocab_path is not None else ground_truth_vocabulary(gt, gt_json)
    unknown = sorted(set(vocab.ids) - set(gt.getCatIds()))
    if unknown:
        raise DataError(f"{vocab_path}: category ids {unknown} are not categories of the ground truth {gt_json}")
    return _prefixed("results", subset_metrics(gt, results, split_ids(vocab)))


def format_table(metrics: Mapping[str, Optional[float]]) -> str:
    """Metrics as a table: one row per setting and subset, columns mask AP50, mask AP, box AP50, box AP (in %)."""
    rows: dict[tuple[str, str], dict[str, Optional[float]]] = {}
    for key, value in metrics.items():
        setting, subset, column = key.split(".")
        rows.setdefault((setting, subset), {})[column] = value
    width = max([len("setting"), *(len(s) for s, _ in rows)])
    lines = [f"{'setting':<{width}}  {'subset':<6}" + "".join(f"  {title:>9}" for _, title in COLUMNS)]
    for (setting, subset), values in rows.items():
        cells = ["n/a" if values.get(col) is None else f"{values[col]:.1f}" for col, _ in COLUMNS]
        lines.append(f"{setting:<{width}}  {subset:<6}" + "".join(f"  {cell:>9}" for cell in cells))
    return "\n".join(lines)
