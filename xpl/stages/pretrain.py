"""Stage 1: caption pretraining (OVR-CNN grounding) of the backbone, box head and V2L on caption shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig

from xpl.config import to_dict
from xpl.data.sampling import caption_batches
from xpl.model.detector import OpenVocabMaskRCNN
from xpl.model.grounding import grounding_loss
from xpl.model.objectives import GridGrounding
from xpl.stages.common import (ConfigTask, evaluate_grounding, export_detector, log_stage_summary, stage_dir,
                               train_settings, warn_untrained_backbone)
from xpl.text import caption_tokens, text_encoder
from xpl.train.engine import fit

STAGE = "pretrain"


@dataclass
class PretrainTask(ConfigTask):
    """Grounding of grid-cell region embeddings with caption words, in-batch, both directions."""

    stage: str = STAGE
    unused_parameters: bool = True

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        detector = OpenVocabMaskRCNN.from_config(cfg.model, text_encoder(cfg.text.model).dim)
        return GridGrounding.from_config(cfg.pretrain, detector)

    def batches(self, rank: int, world_size: int, start_step: int) -> Iterator[Any]:
        cfg = self.cfg
        for batch in caption_batches(cfg.data.captions, cfg.pretrain.train.batch_size, rank=rank,
                                     world_size=world_size, image_size=cfg.data.image_size, start_step=start_step,
                                     seed=cfg.pretrain.train.seed):
            tokens, mask = caption_tokens(text_encoder(cfg.text.model), [s["caption"] for s in batch],
                                          cfg.pretrain.max_words, cfg.pretrain.tokens)
            yield [s["image"] for s in batch], tokens, mask

    def loss(self, model: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        images, tokens, mask = batch
        regions, region_mask = model([img.to(device) for img in images])
        loss = grounding_loss(regions, region_mask, tokens.to(device), mask.to(device), tau=self.cfg.pretrain.tau)
        return loss, {"loss_grounding": float(loss.item())}, len(images)

    def export(self, model: torch.nn.Module, path: Path) -> None:
        export_detector(self.cfg, model.detector, path)


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
