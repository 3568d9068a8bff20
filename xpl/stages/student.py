"""Stage 4: the robust student (`xpl.model.student.RobustStudent`) on the engine (Ray Train + DeepSpeed).

It starts from the teacher's weights, the parts in `student.freeze` fixed, and classifies over the whole
vocabulary. Each step
mixes `student.train.batch_size` base-annotated images (GT branch) with `student.pseudo_batch_size`
pseudo-labeled caption images (pseudo branch) per worker; the pseudo-labeled shards are streamed with
the shared reader (`xpl.data.captions`, `pseudo=True`), which reads only image, caption and pseudo.json.
With `student.corrupt.share` > 0 a seeded share of pseudo masks is corrupted (the noise study) and the
mean sigma of corrupted and clean instances is logged. `student.name` names the output folder and the
MLflow stage, so a plain and a robust student can share an output_dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig

from xpl.config import to_dict
from xpl.data.corrupt import KINDS, corrupt_instances
from xpl.data.pseudo_sample import PseudoTargets
from xpl.data.sampling import caption_batches, rank_batches
from xpl.errors import DataError, XPLError
from xpl.model.checkpoint import export_model, load_model
from xpl.model.objectives import weighted_total
from xpl.model.robust import MODES, WEIGHTINGS
from xpl.model.student import RobustStudent
from xpl.stages.common import BaseImagesTask, evaluate_base, log_stage_summary, stage_dir, train_settings
from xpl.text import text_encoder
from xpl.train.engine import fit
from xpl.vocab import Vocabulary

Target = dict[str, torch.Tensor]


def pseudo_target(pseudo: PseudoTargets, key: str, labels: dict[int, int], corrupt: Any) -> Target:
    """Detector targets of one pseudo-labeled sample: labels over the whole vocabulary (1..C) and uint8
    masks, a seeded share of them corrupted when `corrupt.share` > 0 (then `corrupted` flags them)."""
    unknown = sorted({c for c in pseudo.category_ids if c not in labels})
    if unknown:
        raise DataError(f"sample {key}: pseudo.json category ids {unknown} are not in the vocabulary "
                        "(pseudo-labels written with another vocabulary?)")
    masks = list(pseudo.masks)
    target = {"boxes": torch.from_numpy(pseudo.boxes),
              "labels": torch.tensor([labels[c] for c in pseudo.category_ids], dtype=torch.int64)}
    if corrupt.share > 0:
        masks, flags = corrupt_instances(masks, key, share=corrupt.share, kinds=list(corrupt.kinds), seed=corrupt.seed)
        target["corrupted"] = torch.tensor(flags, dtype=torch.bool)
    target["masks"] = torch.from_numpy(np.stack(masks).astype(np.uint8))
    return target


@dataclass
class StudentTask(BaseImagesTask):
    """GT branch over base classes + pseudo branch over the vocabulary, in one forward call."""

    stage: str = "student"
    unused_parameters: bool = True  # the sigma head gets no gradient once frozen

    def __post_init__(self) -> None:
        self.stage = self.cfg.student.name

    def build_model(self) -> torch.nn.Module:
        cfg, st = self.cfg, self.cfg.student
        vocab = Vocabulary.load(cfg.data.vocab)
        detector = load_model(st.init)
        detector.set_class_names(text_encoder(cfg.text.model), vocab.names)
        detector.freeze(st.freeze)
        return RobustStudent.from_config(st, detector, vocab.labels("base"), vocab.names).train()

    def batches(self, rank: int, world_size: int, start_step: int) -> Iterator[Any]:
        cfg, st, data = self.cfg, self.cfg.student, self.dataset()
        vocab = Vocabulary.load(cfg.data.vocab)
        labels = {c.id: i for i, c in enumerate(vocab.categories, start=1)}
        pseudo = caption_batches(st.pseudo, st.pseudo_batch_size, rank=rank, world_size=world_size,
                                 image_size=cfg.data.image_size, start_step=start_step, seed=st.train.seed,
                                 pseudo=True)
        for indices in rank_batches(len(data), st.train.batch_size, rank, world_size, start_step, st.train.seed):
            samples = next(pseudo)
            named = (torch.tensor([vocab.named(s["caption"]) for s in samples], dtype=torch.float32)
                     if st.caption_label_weight > 0 else None)
            yield ([data[i] for i in indices],
                   [(s["image"], pseudo_target(s["pseudo"], s["key"], labels, st.corrupt)) for s in samples], named)

    def loss(self, model: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        def moved(items: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
            return ([img.to(device) for img, _ in items],
                    [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for _, t in items])

        gt, pseudo, named = batch
        losses, stats = model(*moved(gt), *moved(pseudo), None if named is None else named.to(device))
        parts = {**{k: float(v.item()) for k, v in losses.items()}, **stats}
        return weighted_total(losses, model.module.weights), parts, len(gt) + len(pseudo)

    def param_groups(self, model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
        """The sigma head learns at `student.sigma_lr_scale` times the detector's rate: one shared 1x1 conv
        must move log sigma^2 by several units within a short schedule."""
        sigma = [p for p in model.sigma_head.parameters() if p.requires_grad]
        ids = {id(p) for p in sigma}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": sigma, "lr": lr * self.cfg.student.sigma_lr_scale}]

    def export(self, model: torch.nn.Module, path: Path) -> None:
        export_model(model.detector, path, text_model=self.cfg.text.model)


def check_student_config(cfg: DictConfig) -> None:
    """Stop before any worker starts on a missing input or an unknown setting, naming the key."""
    st = cfg.student
    if st.mode not in MODES:
        raise XPLError(f"student.mode={st.mode}: choose one of {', '.join(MODES)}")
    if st.instance_weight not in WEIGHTINGS:
        raise XPLError(f"student.instance_weight={st.instance_weight}: choose one of {', '.join(WEIGHTINGS)}")
    unknown = [k for k in st.corrupt.kinds if k not in KINDS]
    if unknown or not 0.0 <= st.corrupt.share <= 1.0:
        raise XPLError(f"student.corrupt: share must be in [0, 1] and kinds among {', '.join(KINDS)} "
                       f"(got share={st.corrupt.share}, kinds={list(st.corrupt.kinds)})")
    if not Path(st.init).is_file():
        raise XPLError(f"student.init={st.init}: teacher model not found (run the teacher stage first)")


def run_student(cfg: DictConfig) -> dict[str, Any]:
    """Train on the running Ray cluster; write `<output_dir>/<student.name>/model.pt`; evaluate its base
    classes on val; log to MLflow."""
    check_student_config(cfg)
    task = StudentTask(to_dict(cfg))
    task.build_model()  # here first: a bad init or vocabulary stops the stage before any worker starts
    name = cfg.student.name
    result = fit(task, train_settings(cfg, "student"), stage_dir(cfg, name))
    metrics = evaluate_base(cfg, result.model_path)
    st = cfg.student
    run_id = log_stage_summary(cfg, name, {"init": st.init, "pseudo": st.pseudo, "mode": st.mode}, metrics, [])
    print(f"[{name}] model: {result.model_path}\n[{name}] checkpoint: {result.checkpoint_path}\n"
          f"[{name}] mlflow run: {run_id}", flush=True)
    return {"model": str(result.model_path), "checkpoint": result.checkpoint_path, "mlflow_run_id": run_id,
            **metrics, **result.metrics}
