"""How well caption pretraining grounds words: region embeddings of ground-truth instances against names.

Pointing (what pseudo-labeling relies on): for each class present in an image together with another
class, does the instance with the highest `v_r . t_c` belong to class c? Zero-shot: is an instance's
best-scoring name, over the whole vocabulary, its own class? Both are reported for base and novel.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from xpl.data.coco import CocoInstances
from xpl.model.detector import OpenVocabMaskRCNN


@torch.no_grad()
def pointing_accuracy(model: OpenVocabMaskRCNN, dataset: CocoInstances, class_embeddings: torch.Tensor,
                      novel_labels: set[int], *, last_map: bool = False, max_images: int = 200) -> dict[str, float]:
    """Pointing and zero-shot accuracies (0..1); labels are 1-based rows of `class_embeddings`.

    `last_map` pools instances as caption pretraining pools grid cells; otherwise as the detector does.
    """
    model.eval()
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for index in range(min(len(dataset), max_images)):
        image, target = dataset[index]
        labels = target["labels"]
        if len(labels) == 0:
            continue
        scores = model.box_embeddings(image, target["boxes"], last_map=last_map) @ class_embeddings.T
        for inst, label in enumerate(labels.tolist()):
            split = "novel" if label in novel_labels else "base"
            totals[f"zeroshot_{split}"] += 1
            hits[f"zeroshot_{split}"] += int(scores[inst].argmax().item() + 1 == label)
        present = set(labels.tolist())
        if len(present) < 2:
            continue
        for label in present:
            split = "novel" if label in novel_labels else "base"
            totals[f"pointing_{split}"] += 1
            hits[f"pointing_{split}"] += int(labels[scores[:, label - 1].argmax()].item() == label)
    return {key: hits[key] / totals[key] for key in sorted(totals)}


def evaluate_pointing(model_path: str | Path, vocab_path: str | Path, val_json: str | Path, val_images: str | Path,
                      text_model: str, *, last_map: bool) -> dict[str, float]:
    """`pointing_accuracy` of an exported model on a val split's ground-truth instances against the whole
    vocabulary, as `val_<metric>` (`last_map`: pooled as in caption pretraining; otherwise as the
    detector pools RoIs)."""
    from xpl.model.checkpoint import load_model
    from xpl.text import text_encoder
    from xpl.vocab import Vocabulary

    vocab = Vocabulary.load(vocab_path)
    model = load_model(model_path)
    dataset = CocoInstances(val_json, val_images, category_ids=vocab.ids)
    embeddings = text_encoder(text_model).embed(vocab.names)
    novel = {i + 1 for i, c in enumerate(vocab.categories) if c.split == "novel"}
    scores = pointing_accuracy(model, dataset, embeddings, novel, last_map=last_map)
    return {f"val_{k}": v for k, v in scores.items()}
