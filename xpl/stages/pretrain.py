"""Stage 1: caption pretraining (OVR-CNN grounding) of the backbone, box head and V2L on caption shards."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig

from xpl.config import to_dict
from xpl.data.captions import iter_caption_samples
from xpl.data.coco import CocoInstances
from xpl.errors import DataError
from xpl.eval.pointing import pointing_accuracy
from xpl.model.checkpoint import export_model, load_model
from xpl.model.detector import OpenVocabMaskRCNN
from xpl.model.grounding import grounding_loss
from xpl.stages.common import (ConfigTask, build_detector, log_stage_summary, stage_dir, train_settings,
                               warn_untrained_backbone)
from xpl.text import TextEncoder
from xpl.train.engine import fit
from xpl.vocab import Vocabulary
from xpl.words import content_words

STAGE = "pretrain"


def one_caption(text: str, rng: random.Random) -> str:
    """One caption of a `.txt` that may hold several, one per line (`xpl make-shards` writes all five of a COCO
    image's): a different one may be drawn at every step, as each caption describes the whole image."""
    return rng.choice([line.strip() for line in text.splitlines() if line.strip()])


def caption_tokens(encoder: TextEncoder, captions: list[str], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, D] embeddings of each caption's content words and the [B, T] validity mask."""
    words = [content_words(c)[:max_words] for c in captions]
    length = max(1, max(len(w) for w in words))
    tokens = torch.zeros(len(words), length, encoder.dim)
    mask = torch.zeros(len(words), length, dtype=torch.bool)
    for i, ws in enumerate(words):
        if ws:
            tokens[i, : len(ws)] = encoder.embed(ws)
            mask[i, : len(ws)] = True
    return tokens, mask


class GridGrounding(torch.nn.Module):
    """The detector seen through its grid-cell region embeddings, so training calls go through `forward`."""

    def __init__(self, detector: OpenVocabMaskRCNN, grid: int, max_cells: int) -> None:
        super().__init__()
        self.detector, self.grid, self.max_cells = detector, grid, max_cells

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.detector.grid_embeddings(images, grid=self.grid, max_cells=self.max_cells)


@dataclass
class PretrainTask(ConfigTask):
    """Grounding of grid-cell region embeddings with caption words, in-batch, both directions."""

    stage: str = STAGE
    unused_parameters: bool = True
    _encoder: TextEncoder | None = field(default=None, repr=False)

    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(self.cfg.text.model)
        return self._encoder

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        return GridGrounding(build_detector(cfg.model, self.encoder().dim), cfg.pretrain.grid, cfg.pretrain.max_cells)

    def batches(self, rank: int, world_size: int, start_step: int) -> Iterator[Any]:
        cfg = self.cfg
        batch_size, epoch = cfg.pretrain.train.batch_size, 0
        while True:
            seed = cfg.pretrain.train.seed + 1000 * start_step + epoch
            samples = iter_caption_samples(cfg.data.captions, rank=rank, world_size=world_size,
                                           image_size=cfg.data.image_size, shuffle=256, seed=seed)
            rng = random.Random(f"captions/{seed}/{rank}")
            batch: list[dict[str, Any]] = []
            yielded = 0
            for sample in samples:
                batch.append(sample)
                if len(batch) == batch_size:
                    captions = [one_caption(s["caption"], rng) for s in batch]
                    tokens, mask = caption_tokens(self.encoder(), captions, cfg.pretrain.max_words)
                    yield [s["image"] for s in batch], tokens, mask
                    batch, yielded = [], yielded + 1
            if yielded == 0:
                raise DataError(f"{cfg.data.captions}: rank {rank} got fewer than batch_size={batch_size} "
                                f"readable caption samples (skipped: {dict(samples.skipped)})")
            epoch += 1

    def loss(self, model: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        images, tokens, mask = batch
        regions = model([img.to(device) for img in images])
        region_mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=device)
        loss = grounding_loss(regions.float(), region_mask, tokens.to(device), mask.to(device), tau=self.cfg.pretrain.tau)
        return loss, {"loss_grounding": float(loss.item())}, len(images)

    def export(self, model: torch.nn.Module, path: Path) -> None:
        export_model(model.detector, path)


def evaluate_grounding(cfg: DictConfig, model_path: Path, *, last_map: bool) -> dict[str, float]:
    """Pointing and zero-shot accuracy of an exported model's V2L on the val split's ground-truth instances
    (`last_map`: pooled as in caption pretraining; otherwise as the detector pools RoIs)."""
    vocab = Vocabulary.load(cfg.data.vocab)
    model = load_model(model_path)
    dataset = CocoInstances(cfg.data.val_json, cfg.data.val_images, category_ids=vocab.ids)
    embeddings = TextEncoder(cfg.text.model).embed(vocab.names)
    novel = {i + 1 for i, c in enumerate(vocab.categories) if c.split == "novel"}
    scores = pointing_accuracy(model, dataset, embeddings, novel, last_map=last_map)
    return {f"val_{k}": v for k, v in scores.items()}


def run_pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Train on the running Ray cluster; write `<output_dir>/pretrain/model.pt`; evaluate; log to MLflow."""
    warn_untrained_backbone(cfg)
    settings = train_settings(cfg, STAGE)
    result = fit(PretrainTask(to_dict(cfg)), settings, stage_dir(cfg, STAGE))
    metrics = evaluate_grounding(cfg, result.model_path, last_map=True)
    run_id = log_stage_summary(cfg, STAGE, {"captions": cfg.data.captions}, metrics, [])
    shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
    print(f"[{STAGE}] {shown}\n[{STAGE}] model: {result.model_path}\n[{STAGE}] checkpoint: {result.checkpoint_path}\n"
          f"[{STAGE}] mlflow run: {run_id}", flush=True)
    return {"model": str(result.model_path), "checkpoint": result.checkpoint_path, "mlflow_run_id": run_id,
            **metrics, **result.metrics}
