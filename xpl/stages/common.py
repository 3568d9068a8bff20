"""What every training stage shares: the detector from config, engine settings, the stage's MLflow run."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from xpl.config import from_dict, to_dict, to_yaml
from xpl.data.coco import CocoInstances
from xpl.tracking import log_config, resolve_tracking_uri, stage_run
from xpl.train.engine import TrainSettings
from xpl.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class ConfigTask:
    """Base of the stages' training tasks: the resolved config travels as plain data to every worker;
    fields starting with `_` are per-worker caches (text encoder, dataset), rebuilt after unpickling."""

    config: dict[str, Any]

    @cached_property
    def cfg(self) -> DictConfig:
        return from_dict(self.config)

    def param_groups(self, model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
        """One group: every trainable parameter at the stage's learning rate."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]

    def __getstate__(self) -> dict[str, Any]:
        return {k: (None if k.startswith("_") else v) for k, v in self.__dict__.items() if k != "cfg"}


def warn_untrained_backbone(cfg: DictConfig) -> Optional[str]:
    """Say loudly in the log when a real-data run's ResNet-50 starts from random weights (the paper's starts
    from ImageNet, and its numbers assume it); return the warning, or None when there is nothing to say."""
    model = cfg.model
    if model.backbone != "r50_fpn" or model.pretrained_backbone or cfg.data.synthesize:
        return None
    message = ("model.backbone=r50_fpn starts from RANDOM weights (model.pretrained_backbone is not set): expect "
               "results far below the paper's, which start from ImageNet; set model.pretrained_backbone to a local "
               "torchvision ResNet-50 state_dict file")
    log.warning("WARNING: %s", message)
    return message


def train_settings(cfg: DictConfig, stage_section: str) -> TrainSettings:
    """Engine settings of one stage (`<stage>.train`) plus tracking and run identity."""
    train = OmegaConf.to_container(cfg[stage_section].train, resolve=True)
    return TrainSettings(
        **train,
        tracking_uri=resolve_tracking_uri(cfg.tracking.uri),
        experiment=cfg.tracking.experiment,
        run_name=cfg.run_name,
    )


def trained_on(cfg: DictConfig) -> dict[str, Any]:
    """What a stage's model learns from, recorded in its export (`xpl.model.checkpoint.export_model`)."""
    return {"data": "the shapes world" if cfg.data.synthesize else cfg.data.root,
            "classes": Vocabulary.load(cfg.data.vocab).names}


def export_detector(cfg: DictConfig, detector: torch.nn.Module, path: Path, **extras: Any) -> None:
    """A stage's export: the detector with the text encoder and data it was trained with, and `extras`."""
    from xpl.model.checkpoint import export_model

    export_model(detector, path, text_model=cfg.text.model, extras=extras or None, trained_on=trained_on(cfg))


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / stage


def evaluate_grounding(cfg: DictConfig, model_path: Path, *, last_map: bool) -> dict[str, float]:
    """Pointing and zero-shot accuracy of an exported model on the val split (see `evaluate_pointing`)."""
    from xpl.eval.pointing import evaluate_pointing

    return evaluate_pointing(model_path, cfg.data.vocab, cfg.data.val_json, cfg.data.val_images, cfg.text.model,
                             last_map=last_map)


@dataclass
class BaseImagesTask(ConfigTask):
    """A training task over the base-annotated train split (teacher, student): the dataset is built once per
    worker, with annotations of the base classes only."""

    _dataset: Optional[CocoInstances] = field(default=None, repr=False)

    def dataset(self) -> CocoInstances:
        """`data.train_json` with the base classes' annotations (labels 1..C in vocabulary order)."""
        if self._dataset is None:
            cfg = self.cfg
            self._dataset = CocoInstances(cfg.data.train_json, cfg.data.train_images,
                                          category_ids=base_categories(cfg)[0])
        return self._dataset


def base_categories(cfg: DictConfig) -> tuple[list[int], list[str]]:
    """Ids and names of the vocabulary's base classes, in vocabulary order (labels 1..C follow it)."""
    base = Vocabulary.load(cfg.data.vocab).split("base")
    return [c.id for c in base], [c.name for c in base]


def evaluate_base(cfg: DictConfig, model_path: Path) -> dict[str, Optional[float]]:
    """Constrained base-class mask AP of an exported model (teacher or student) on the val split."""
    from xpl.eval.coco_eval import mask_ap, predict_masks
    from xpl.model.checkpoint import load_model
    from xpl.text import text_encoder

    base, names = base_categories(cfg)
    model = load_model(model_path)
    dataset = CocoInstances(cfg.data.val_json, cfg.data.val_images, category_ids=base)
    results = predict_masks(model, dataset, {"base": (base, model.embed_names(text_encoder(cfg.text.model), names))})
    scores = mask_ap(cfg.data.val_json, results["base"], base)
    return {f"val_base_mask_{k}": v for k, v in scores.items()}


@contextmanager
def stage_logging(cfg: DictConfig, stage: str, params: Mapping[str, Any]) -> Iterator[Any]:
    """The stage's MLflow run, opened (or re-opened) with its params and resolved config (see `log_config`)
    logged: every stage logs through it."""
    from xpl.tracking import log_params_once

    uri = resolve_tracking_uri(cfg.tracking.uri)
    with stage_run(uri, cfg.tracking.experiment, cfg.run_name, stage) as run:
        log_params_once(params)
        log_config(to_dict(cfg), to_yaml(cfg), stage)
        yield run


def log_stage_summary(cfg: DictConfig, stage: str, params: Mapping[str, Any],
                      metrics: Mapping[str, Optional[float]], artifacts: list[Path]) -> str:
    """Log params, the resolved config, final metrics and files to the stage's run; return its run id. A metric
    that is None was not measurable (e.g. AP without ground truth) and is not logged."""
    import mlflow

    uri = resolve_tracking_uri(cfg.tracking.uri)
    with stage_logging(cfg, stage, params) as run:
        measured = {k: v for k, v in metrics.items() if v is not None}
        if measured:
            mlflow.log_metrics(measured)
        curves = _loss_curves(uri, run.info.run_id, stage_dir(cfg, stage) / "loss_curves.png", stage)
        for path in [*artifacts, *curves]:
            mlflow.log_artifact(str(path), artifact_path=stage)
        return run.info.run_id


def _loss_curves(uri: str, run_id: str, path: Path, stage: str) -> list[Path]:
    """The run's logged loss histories as one PNG (none when the run logged no loss)."""
    from mlflow.tracking import MlflowClient

    from xpl.plots import curves_png

    client = MlflowClient(uri)
    names = [k for k in client.get_run(run_id).data.metrics if k.startswith("loss")]
    series = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in names}
    return [curves_png(series, path, f"{stage} losses")] if series else []
