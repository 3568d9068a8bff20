"""Stage 2: the teacher, a Mask R-CNN on base classes with masks, from pretraining; the parts in `teacher.freeze`
(the paper: stem, res2 and V2L) do not train.

With `teacher.caption_label_weight` or `teacher.grounding_weight` > 0 each step also learns from a
batch of caption images, over the teacher's candidate regions (`xpl.model.objectives.
DetectionWithCaptions`): the classes a caption names, novel ones included, must be found in its image,
so the regions pseudo-labeling picks from point at the objects captions name (docs/pseudo-labels.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from omegaconf import DictConfig

from xpl.config import to_dict
from xpl.data.sampling import caption_batches, rank_batches
from xpl.errors import XPLError
from xpl.model.checkpoint import load_pretrained_parts
from xpl.model.detector import OpenVocabMaskRCNN
from xpl.model.objectives import DetectionWithCaptions, weighted_total
from xpl.stages.common import (BaseImagesTask, base_categories, evaluate_base, evaluate_grounding, export_detector,
                               log_stage_summary, stage_dir, train_settings, warn_untrained_backbone)
from xpl.text import caption_tokens, text_encoder
from xpl.train.engine import fit
from xpl.vocab import Vocabulary

STAGE = "teacher"
# What caption pretraining does not train, so the teacher may start it fresh: RPN, box regression, mask head.
FRESH_PARTS = ("rpn.", "roi_heads.box_predictor.bbox_pred.", "roi_heads.mask_head.", "roi_heads.mask_predictor.")


@dataclass
class TeacherTask(BaseImagesTask):
    """Mask R-CNN losses over base classes; classifier = V2L against base-class name embeddings;
    plus caption grounding over candidate regions when `teacher.grounding_weight` > 0."""

    stage: str = STAGE
    unused_parameters: bool = False

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.load(self.cfg.data.vocab)

    def uses_captions(self) -> bool:
        teacher = self.cfg.teacher
        return teacher.caption_label_weight > 0 or teacher.grounding_weight > 0

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        encoder = text_encoder(cfg.text.model)
        model = OpenVocabMaskRCNN.from_config(cfg.model, encoder.dim)
        if cfg.teacher.init:
            load_pretrained_parts(model, cfg.teacher.init, allow_missing=FRESH_PARTS)
        model.set_class_names(encoder, base_categories(cfg)[1])
        model.freeze(cfg.teacher.freeze)
        vocab = self.vocabulary()
        return DetectionWithCaptions.from_config(cfg, model, model.embed_names(encoder, vocab.names),
                                                 vocab.labels("base"))

    def batches(self, rank: int, world_size: int, start_step: int) -> Iterator[Any]:
        cfg, data = self.cfg, self.dataset()
        teacher = cfg.teacher
        captions, vocab = None, self.vocabulary()
        if self.uses_captions():
            captions = caption_batches(cfg.data.captions, teacher.caption_batch_size, rank=rank,
                                       world_size=world_size, image_size=cfg.data.image_size,
                                       start_step=start_step, seed=teacher.train.seed)
        for indices in rank_batches(len(data), teacher.train.batch_size, rank, world_size, start_step,
                                    teacher.train.seed):
            caption_batch = None
            if captions is not None:
                samples = next(captions)
                texts = [s["caption"] for s in samples]
                tokens, mask = caption_tokens(text_encoder(cfg.text.model), texts, cfg.pretrain.max_words,
                                              cfg.pretrain.tokens)
                labels = torch.tensor([vocab.named(t) for t in texts], dtype=torch.float32)
                caption_batch = ([s["image"] for s in samples], tokens, mask, labels)
            yield [data[i] for i in indices], caption_batch

    def loss(self, model: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        items, caption_batch = batch
        images = [img.to(device) for img, _ in items]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for _, t in items]
        if caption_batch is not None:
            caption_images, *tensors = caption_batch
            caption_batch = ([img.to(device) for img in caption_images], *(t.to(device) for t in tensors))
        losses = model(images, targets, caption_batch)
        return weighted_total(losses, model.module.weights), {k: float(v.item()) for k, v in losses.items()}, len(images)

    def export(self, model: torch.nn.Module, path: Path) -> None:
        export_detector(self.cfg, model.detector, path)


def _shown(value: Optional[float]) -> str:
    return "n/a (no base-class instances in val)" if value is None else f"{value:.1f}"


def run_teacher(cfg: DictConfig) -> dict[str, Any]:
    """Train on the running Ray cluster; write `<output_dir>/teacher/model.pt`; evaluate; log to MLflow."""
    if cfg.teacher.init and not Path(cfg.teacher.init).is_file():
        raise XPLError(f"teacher.init={cfg.teacher.init}: file not found (run pretraining, or set teacher.init='')")
    if not cfg.teacher.init:
        warn_untrained_backbone(cfg)
    task = TeacherTask(to_dict(cfg))
    task.build_model()  # here first: an incompatible teacher.init stops the stage before any worker starts
    result = fit(task, train_settings(cfg, STAGE), stage_dir(cfg, STAGE))
    metrics = evaluate_base(cfg, result.model_path) | evaluate_grounding(cfg, result.model_path, last_map=False)
    run_id = log_stage_summary(cfg, STAGE, {"train_json": cfg.data.train_json, "init": cfg.teacher.init}, metrics, [])
    ap50, ap = (_shown(metrics[f"val_base_mask_{k}"]) for k in ("AP50", "AP"))
    print(f"[{STAGE}] base mask AP50 on val: {ap50}  AP: {ap}\n"
          f"[{STAGE}] model: {result.model_path}\n[{STAGE}] checkpoint: {result.checkpoint_path}\n"
          f"[{STAGE}] mlflow run: {run_id}", flush=True)
    return {"model": str(result.model_path), "checkpoint": result.checkpoint_path, "mlflow_run_id": run_id,
            **metrics, **result.metrics}
