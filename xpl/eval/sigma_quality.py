"""What the robust student's sigma says of its pseudo labels, against the truth of the shapes world's caption samples.

Each pseudo instance of a caption sample that carries truth is matched as pseudo-label precision counts it
(`xpl.eval.pseudo_quality`): the object of its class with the best box IoU, at least 0.5. In the instance's own
box, on the mask head's M x M grid, a pixel is wrong where the pseudo mask and the matched object's visible
mask differ, and every pixel of an instance that matches no object of its class is wrong. Reported per split
and per class: the AUROC of sigma for wrong pixels (1: sigma ranks every wrong pixel above every right one,
0.5: chance) and the Spearman correlation between an instance's mean sigma and its mask IoU with the truth
(0 when unmatched; negative: noisier instances get larger sigma). `measure` runs a student over pseudo-labeled
shards; the statistics are pure functions.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection.roi_heads import project_masks_on_boxes

from xpl.data import rle
from xpl.data.caption_sample import check_sample
from xpl.data.captions import expand_urls
from xpl.data.corrupt import Corruption
from xpl.data.pseudo_sample import MEMBER, BadPseudo, decode_pseudo
from xpl.data.tar_records import iter_tar_records, open_shard
from xpl.eval.pseudo_quality import SampleTruth, box_iou, read_truth
from xpl.vocab import Vocabulary


@dataclass
class InstanceNoise:
    """One pseudo instance: its class, sigma and wrongness on its box grid ([M, M]), its mask IoU with the truth,
    and what a picture of it needs (the image crop is cut later)."""

    category_id: int
    sigma: np.ndarray
    wrong: np.ndarray
    mask_iou: float
    pseudo: np.ndarray
    truth: np.ndarray
    image: np.ndarray
    box: tuple[float, float, float, float]

    @property
    def mean_sigma(self) -> float:
        return float(self.sigma.mean())


def match_objects(instances: Sequence[Mapping[str, Any]], truth: SampleTruth, *, iou: float = 0.5) -> list[Optional[int]]:
    """For each pseudo instance (pseudo.json record: category_id, bbox xywh in original pixels), the index of the
    truth object of its class with the best box IoU when it reaches `iou`, else None."""
    matched: list[Optional[int]] = []
    for inst in instances:
        x, y, w, h = (float(v) for v in inst["bbox"])
        scored = [(box_iou((x, y, x + w, y + h), o.box), j) for j, o in enumerate(truth.objects)
                  if o.category_id == int(inst["category_id"])]
        best = max(scored, default=(0.0, None))
        matched.append(best[1] if best[0] >= iou else None)
    return matched


def auroc(scores: np.ndarray, positive: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of `scores` for the `positive` entries; None when only one kind is present."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, scores))


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Spearman's rank correlation; None with fewer than 3 values or when either side is constant."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def summarize(instances: Sequence[InstanceNoise]) -> dict[str, Any]:
    """AUROC of sigma for wrong pixels, Spearman(mean sigma, mask IoU), counts, the wrong pixels' share and the
    mean sigma on wrong and right pixels, over `instances`."""
    if not instances:
        return {"instances": 0, "auroc": None, "spearman": None, "wrong_share": None, "sigma_wrong": None,
                "sigma_right": None}
    sigma = np.concatenate([i.sigma.ravel() for i in instances])
    wrong = np.concatenate([i.wrong.ravel() for i in instances])
    return {"instances": len(instances), "auroc": auroc(sigma, wrong),
            "spearman": spearman([i.mean_sigma for i in instances], [i.mask_iou for i in instances]),
            "wrong_share": float(wrong.mean()),
            "sigma_wrong": float(sigma[wrong].mean()) if wrong.any() else None,
            "sigma_right": float(sigma[~wrong].mean()) if (~wrong).any() else None}


def report(instances: Sequence[InstanceNoise], vocab: Vocabulary) -> dict[str, Any]:
    """`summarize` over all instances, per split and per class (by name)."""
    splits = {c.id: c.split for c in vocab.categories}
    out: dict[str, Any] = {"splits": {"all": summarize(instances)}, "classes": {}}
    for split in ("base", "novel"):
        out["splits"][split] = summarize([i for i in instances if splits[i.category_id] == split])
    for category in vocab.categories:
        chosen = [i for i in instances if i.category_id == category.id]
        if chosen:
            out["classes"][category.name] = summarize(chosen)
    return out


def _samples(urls: list[str], image_size: int, ids_by_name: Mapping[str, int],
             skipped: Counter[str]) -> Iterator[tuple[Any, ...]]:
    """(key, image CHW float, its original (H, W), pseudo targets, pseudo.json instances, truth) of each labeled
    sample with truth; what cannot be used is counted in `skipped` by reason, as the student's reader counts it."""
    for url in urls:
        with open_shard(url) as stream:
            for record in iter_tar_records(stream):
                members = record.members
                if record.error is not None or MEMBER not in members or "json" not in members:
                    skipped["unreadable" if record.error is not None else "no_pseudo_or_truth"] += 1
                    continue
                truth = read_truth(json.loads(members["json"]), ids_by_name, where=f"{url}:{record.key}")
                checked = check_sample(members, image_size=image_size)
                if truth is None or checked.pixels is None:
                    skipped["no_truth" if truth is None else checked.reason or "no_image"] += 1
                    continue
                height, width = checked.pixels.shape[:2]
                try:
                    pseudo = decode_pseudo(members[MEMBER], width, height)
                except BadPseudo:
                    skipped["bad_pseudo"] += 1
                    continue
                if not pseudo.category_ids:
                    skipped["no_instances"] += 1
                    continue
                yield (record.key, torch.from_numpy(checked.pixels.copy()).permute(2, 0, 1).float().div_(255),
                       (checked.height, checked.width), pseudo, json.loads(members[MEMBER])["instances"], truth)


def _truth_mask(truth: SampleTruth, index: Optional[int], original: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The matched object's visible mask at the decoded `size` (H, W); all zeros when unmatched."""
    if index is None or truth.objects[index].segmentation is None:
        return np.zeros(size, dtype=bool)
    mask = rle.decode(truth.objects[index].segmentation, *original)
    if mask.shape != size:
        mask = np.array(Image.fromarray(mask).resize(size[::-1], Image.NEAREST))
    return mask


def measure(student: Any, pseudo_shards: str | list[str], vocab: Vocabulary, *, image_size: int,
            max_samples: int, corrupt: Optional[Corruption] = None) -> tuple[list[InstanceNoise], Counter[str]]:
    """Sigma of `student` (a `xpl.model.student.RobustStudent`, eval mode) on the instances of up to `max_samples`
    pseudo-labeled samples with truth, each pixel judged right or wrong (module docstring), and the samples
    skipped by reason. With `corrupt` (the noise study) the pseudo masks are corrupted as the student saw them."""
    ids_by_name = {c.name: c.id for c in vocab.categories}
    labels = {c.id: i for i, c in enumerate(vocab.categories, start=1)}
    found: list[InstanceNoise] = []
    skipped: Counter[str] = Counter()
    samples = _samples(expand_urls(pseudo_shards), image_size, ids_by_name, skipped)
    for n, (key, image, original, pseudo, records, truth) in enumerate(samples):
        if n >= max_samples:
            break
        if corrupt is not None:
            pseudo.masks = np.stack(corrupt(list(pseudo.masks), key, pseudo.category_ids)[0])
        size = tuple(image.shape[-2:])
        target = {"boxes": torch.from_numpy(pseudo.boxes), "masks": torch.from_numpy(pseudo.masks.astype(np.uint8)),
                  "labels": torch.tensor([labels[c] for c in pseudo.category_ids])}
        ((sigma, pseudo_grid, boxes),) = student.noise_on_pseudo_boxes([image], [target])
        matched = match_objects(records, truth)
        truths = np.stack([_truth_mask(truth, j, original, size) for j in matched])
        truth_grid = project_masks_on_boxes(torch.from_numpy(truths.astype(np.float32)), boxes,
                                            torch.arange(len(boxes)), sigma.shape[-1])
        for k, j in enumerate(matched):
            wrong = ((pseudo_grid[k] >= 0.5) != (truth_grid[k] >= 0.5)).numpy() if j is not None else \
                np.ones(sigma.shape[1:], dtype=bool)
            union = (pseudo.masks[k] | truths[k]).sum()
            iou = float((pseudo.masks[k] & truths[k]).sum() / union) if union and j is not None else 0.0
            found.append(InstanceNoise(pseudo.category_ids[k], sigma[k].numpy(), wrong, iou,
                                       (pseudo_grid[k] >= 0.5).numpy(), (truth_grid[k] >= 0.5).numpy(),
                                       (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8),
                                       tuple(float(v) for v in boxes[k])))
    return found, skipped


def panels(instances: Sequence[InstanceNoise], vocab: Vocabulary) -> dict[str, dict[str, Any]]:
    """Per class, the picture rows of `xpl.plots.sigma_panels_png` for its matched instance with the most wrong
    pixels (else its first instance): the image around the box, pseudo mask, truth, sigma."""
    rows = {}
    for category in vocab.categories:
        own = [i for i in instances if i.category_id == category.id]
        if not own:
            continue
        matched = [i for i in own if i.mask_iou > 0]
        chosen = max(matched, key=lambda i: i.wrong.mean()) if matched else own[0]
        x0, y0, x1, y1 = chosen.box
        pad_x, pad_y = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
        height, width = chosen.image.shape[:2]
        crop = chosen.image[max(0, int(y0 - pad_y)):min(height, int(y1 + pad_y) + 1),
                            max(0, int(x0 - pad_x)):min(width, int(x1 + pad_x) + 1)]
        rows[category.name] = {"image": crop, "pseudo": chosen.pseudo, "truth": chosen.truth, "sigma": chosen.sigma,
                               "label": f"{category.name} ({category.split}), IoU {chosen.mask_iou:.2f}"}
    return rows
