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
from typing import Any, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from xpl.config import to_dict
from xpl.data.corrupt import KINDS, Corruption
from xpl.data.pseudo_sample import PseudoTargets
from xpl.data.sampling import caption_batches, rank_batches
from xpl.errors import DataError, XPLError
from xpl.model.checkpoint import load_model, read_extras
from xpl.model.objectives import weighted_total
from xpl.model.robust import MODES, WEIGHTINGS
from xpl.model.student import RobustStudent
from xpl.stages.common import (BaseImagesTask, evaluate_base, export_detector, log_stage_summary, stage_dir,
                               train_settings)
from xpl.text import text_encoder
from xpl.train.engine import fit
from xpl.vocab import Vocabulary

Target = dict[str, torch.Tensor]


def pseudo_target(pseudo: PseudoTargets, key: str, labels: dict[int, int], corrupt: Corruption) -> Target:
    """Detector targets of one pseudo-labeled sample: labels over the whole vocabulary (1..C) and uint8
    masks, a seeded share of them corrupted when the noise study is on (then `corrupted` flags them)."""
    unknown = sorted({c for c in pseudo.category_ids if c not in labels})
    if unknown:
        raise DataError(f"sample {key}: pseudo.json category ids {unknown} are not in the vocabulary "
                        "(pseudo-labels written with another vocabulary?)")
    masks = list(pseudo.masks)
    target = {"boxes": torch.from_numpy(pseudo.boxes),
              "labels": torch.tensor([labels[c] for c in pseudo.category_ids], dtype=torch.int64)}
    if corrupt.active:
        masks, flags = corrupt(masks, key, pseudo.category_ids)
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
        corrupt = Corruption.from_config(st.corrupt, {c.name: c.id for c in vocab.categories})
        pseudo = caption_batches(st.pseudo, st.pseudo_batch_size, rank=rank, world_size=world_size,
                                 image_size=cfg.data.image_size, start_step=start_step, seed=st.train.seed,
                                 pseudo=True)
        for indices in rank_batches(len(data), st.train.batch_size, rank, world_size, start_step, st.train.seed):
            samples = next(pseudo)
            named = (torch.tensor([vocab.named(s["caption"]) for s in samples], dtype=torch.float32)
                     if st.caption_label_weight > 0 else None)
            yield ([data[i] for i in indices],
                   [(s["image"], pseudo_target(s["pseudo"], s["key"], labels, corrupt)) for s in samples], named)

    def loss(self, model: Any, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        def moved(items: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
            return ([img.to(device) for img, _ in items],
                    [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for _, t in items])

        gt, pseudo, named = batch
        losses, stats = model(*moved(gt), *moved(pseudo), None if named is None else named.to(device))
        parts = {**{k: float(v.item()) for k, v in losses.items()}, **stats}
        return weighted_total(losses, model.module.weights), parts, len(gt) + len(pseudo)

    def param_groups(self, model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
        """The noise heads learn at `student.sigma_lr_scale` times the detector's rate: one shared 1x1 conv
        must move log sigma^2 by several units within a short schedule."""
        sigma = [p for p in model.noise_parameters() if p.requires_grad]
        ids = {id(p) for p in sigma}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": sigma, "lr": lr * self.cfg.student.sigma_lr_scale}]

    def export(self, model: torch.nn.Module, path: Path) -> None:
        noise = {"sigma_head": model.sigma_head.state_dict()}
        if model.class_noise_head is not None:
            noise["class_noise_head"] = model.class_noise_head.state_dict()
        export_detector(self.cfg, model.detector, path, **noise)


def check_student_config(cfg: DictConfig) -> None:
    """Stop before any worker starts on a missing input or an unknown setting, naming the key."""
    st = cfg.student
    if st.mode not in MODES:
        raise XPLError(f"student.mode={st.mode}: choose one of {', '.join(MODES)}")
    if st.instance_weight not in WEIGHTINGS:
        raise XPLError(f"student.instance_weight={st.instance_weight}: choose one of {', '.join(WEIGHTINGS)}")
    unknown = [k for k in st.corrupt.kinds if k not in KINDS]
    shares = [st.corrupt.share, *st.corrupt.classes.values()]
    if unknown or not all(0.0 <= v <= 1.0 for v in shares):
        raise XPLError(f"student.corrupt: shares must be in [0, 1] and kinds among {', '.join(KINDS)} "
                       f"(got share={st.corrupt.share}, classes={dict(st.corrupt.classes)}, "
                       f"kinds={list(st.corrupt.kinds)})")
    names = {c.name for c in Vocabulary.load(cfg.data.vocab).categories}
    if not set(st.corrupt.classes) <= names:
        raise XPLError(f"student.corrupt.classes: {sorted(set(st.corrupt.classes) - names)} are not classes of "
                       f"data.vocab={cfg.data.vocab}")
    if not Path(st.init).is_file():
        raise XPLError(f"student.init={st.init}: teacher model not found (run the teacher stage first)")


def trained_student(task: StudentTask, model_path: Path) -> RobustStudent:
    """The student `task` trained, from its export (the detector and, in its extras, the noise heads), eval mode."""
    student = task.build_model()
    student.detector.load_state_dict(load_model(model_path).state_dict())
    extras = read_extras(model_path)
    student.sigma_head.load_state_dict(extras["sigma_head"])
    if student.class_noise_head is not None:
        student.class_noise_head.load_state_dict(extras["class_noise_head"])
    return student.eval()


def sigma_report(cfg: DictConfig, task: StudentTask, model_path: Path) -> tuple[dict[str, Any], list[Path]]:
    """What the trained student's sigma says of its pseudo labels where the shards carry truth
    (`xpl.eval.sigma_quality`): the report, its MLflow metrics (`sigma.<split>.auroc`, ...) merged in, and the
    picture per class. Nothing for a mode without sigma, with `student.sigma_samples` 0, or on real data."""
    from xpl.eval.sigma_quality import measure, panels, report
    from xpl.plots import sigma_panels_png

    st = cfg.student
    if not MODES[st.mode].uses_sigma or st.sigma_samples <= 0:
        return {}, []
    vocab = Vocabulary.load(cfg.data.vocab)
    corrupt = Corruption.from_config(st.corrupt, {c.name: c.id for c in vocab.categories})
    instances, skipped = measure(trained_student(task, model_path), st.pseudo, vocab, image_size=cfg.data.image_size,
                                 max_samples=st.sigma_samples, corrupt=corrupt if corrupt.active else None)
    if not instances:
        return {}, []
    found = {**report(instances, vocab), "skipped": dict(skipped)}
    picture = sigma_panels_png(panels(instances, vocab), stage_dir(cfg, st.name) / "sigma_by_class.png",
                               "pseudo masks, truth and the student's sigma (caption shards)")
    return found, [picture]


def sigma_metrics(found: dict[str, Any]) -> dict[str, Optional[float]]:
    """The report's AUROC, Spearman and wrong share per split and class, as flat metric names."""
    groups = [*(("sigma." + split, values) for split, values in found.get("splits", {}).items()),
              *(("sigma.class." + name, values) for name, values in found.get("classes", {}).items())]
    return {f"{prefix}.{key}": values[key] for prefix, values in groups for key in ("auroc", "spearman", "wrong_share")}


def run_student(cfg: DictConfig) -> dict[str, Any]:
    """Train on the running Ray cluster; write `<output_dir>/<student.name>/model.pt`; evaluate its base
    classes on val and its sigma against the caption shards' truth; log to MLflow."""
    check_student_config(cfg)
    task = StudentTask(to_dict(cfg))
    task.build_model()  # here first: a bad init or vocabulary stops the stage before any worker starts
    name = cfg.student.name
    result = fit(task, train_settings(cfg, "student"), stage_dir(cfg, name))
    metrics = evaluate_base(cfg, result.model_path)
    sigma, pictures = sigma_report(cfg, task, result.model_path)
    st = cfg.student
    run_id = log_stage_summary(cfg, name, {"init": st.init, "pseudo": st.pseudo, "mode": st.mode},
                               {**metrics, **sigma_metrics(sigma)}, pictures)
    print(f"[{name}] model: {result.model_path}\n[{name}] checkpoint: {result.checkpoint_path}\n"
          f"[{name}] mlflow run: {run_id}", flush=True)
    return {"model": str(result.model_path), "checkpoint": result.checkpoint_path, "mlflow_run_id": run_id,
            "sigma_report": sigma, **metrics, **result.metrics}
