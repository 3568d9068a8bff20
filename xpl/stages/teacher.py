"""Stage 2: the teacher, a Mask R-CNN on base classes with masks; V2L from pretraining, frozen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from omegaconf import DictConfig

from xpl.config import to_dict
from xpl.data.coco import CocoInstances
from xpl.errors import XPLError
from xpl.eval.coco_eval import mask_ap, predict_masks
from xpl.model.checkpoint import export_model, load_model, load_pretrained_parts
from xpl.stages.common import (ConfigTask, build_detector, log_stage_summary, stage_dir, train_settings,
                               warn_untrained_backbone)
from xpl.stages.pretrain import evaluate_grounding
from xpl.text import TextEncoder
from xpl.train.engine import fit
from xpl.vocab import Vocabulary

STAGE = "teacher"
# What caption pretraining does not train, so the teacher may start it fresh: RPN, box regression, mask head.
FRESH_PARTS = ("rpn.", "roi_heads.box_predictor.bbox_pred.", "roi_heads.mask_head.", "roi_heads.mask_predictor.")


def base_categories(cfg: DictConfig) -> tuple[list[int], list[str]]:
    """Ids and names of the vocabulary's base classes, in vocabulary order (labels 1..C follow it)."""
    base = Vocabulary.load(cfg.data.vocab).split("base")
    return [c.id for c in base], [c.name for c in base]


def rank_batches(n_items: int, batch_size: int, rank: int, world_size: int, start_step: int,
                 seed: int) -> Iterator[list[int]]:
    """Index batches for one rank: a seeded permutation per epoch, ranks interleaved, resumable at a step."""
    per_rank = n_items // world_size
    if per_rank < batch_size:
        raise ValueError(f"{n_items} items cannot fill batch_size={batch_size} on each of {world_size} workers")
    steps_per_epoch = per_rank // batch_size
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        mine = order[rank::world_size][:per_rank]
        yield mine[offset * batch_size : (offset + 1) * batch_size]
        step += 1


@dataclass
class TeacherTask(ConfigTask):
    """Mask R-CNN losses over base classes; classifier = V2L against base-class name embeddings."""

    stage: str = STAGE
    unused_parameters: bool = False
    _dataset: CocoInstances | None = field(default=None, repr=False)

    def dataset(self) -> CocoInstances:
        if self._dataset is None:
            cfg = self.cfg
            self._dataset = CocoInstances(cfg.data.train_json, cfg.data.train_images,
                                          category_ids=base_categories(cfg)[0])
        return self._dataset

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        encoder = TextEncoder(cfg.text.model)
        model = build_detector(cfg.model, encoder.dim)
        if cfg.teacher.init:
            load_pretrained_parts(model, cfg.teacher.init, allow_missing=FRESH_PARTS)
        model.set_class_embeddings(encoder.embed(base_categories(cfg)[1]))
        if cfg.teacher.freeze_v2l:
            model.freeze_v2l()
        return model

    def batches(self, rank: int, world_size: int, start_step: int) -> Iterator[Any]:
        cfg, data = self.cfg, self.dataset()
        for indices in rank_batches(len(data), cfg.teacher.train.batch_size, rank, world_size, start_step,
                                    cfg.teacher.train.seed):
            yield [data[i] for i in indices]

    def loss(self, model: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        images = [img.to(device) for img, _ in batch]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for _, t in batch]
        losses = model(images, targets)
        total = sum(losses.values())
        return total, {k: float(v.item()) for k, v in losses.items()}, len(images)

    def export(self, model: torch.nn.Module, path: Path) -> None:
        export_model(model, path)


def evaluate_base(cfg: DictConfig, model_path: Path) -> dict[str, Optional[float]]:
    """Constrained base-class mask AP of an exported teacher on the val split."""
    base, names = base_categories(cfg)
    model = load_model(model_path)
    model.set_class_embeddings(TextEncoder(cfg.text.model).embed(names))
    dataset = CocoInstances(cfg.data.val_json, cfg.data.val_images, category_ids=base)
    scores = mask_ap(cfg.data.val_json, predict_masks(model, dataset, base), base)
    return {f"val_base_mask_{k}": v for k, v in scores.items()}


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
