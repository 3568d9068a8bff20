"""The stages of the method, one record each. The main job (`xpl.stages.pipeline`), the `xpl` subcommands and the
job entry points (`jobs/*.py`) are built from these records: a new stage is a record here, its module under
`xpl/stages/` and its config section in `xpl/config.py`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class Stage:
    """One stage of the main job.

    `run` names its function (`module:function`, taking the resolved config, returning its result dict),
    `section` its config section, `reads` the sections whose values make its work (with its upstream's
    identity, the digest that decides whether an earlier run can be reused), `upstream` the stage whose
    output it starts from. A stage that `trains` shows progress from its MLflow run and leaves a model folder
    and Ray Train checkpoints; one that does not writes to `<section>.output`. A `model` stage's export is
    evaluated by the main job. `derive` gives a variant its config from the main one (the plain student);
    a variant runs in the main job only. `command` is its `xpl` subcommand, `job` its `jobs/<job>.py`.
    """

    name: str
    run: str
    section: str
    reads: tuple[str, ...]
    upstream: Optional[str] = None
    trains: bool = True
    model: bool = False
    derive: Optional[Callable[[DictConfig], DictConfig]] = None
    command: Optional[str] = None
    job: Optional[str] = None
    help: str = ""

    def config(self, cfg: DictConfig) -> DictConfig:
        """The stage's own config: the main one, or the variant's derived from it."""
        return self.derive(cfg) if self.derive is not None else cfg

    def label(self, cfg: DictConfig) -> str:
        """The stage's folder and MLflow stage name for `cfg` (a stage's section may name it, as the students do)."""
        return str(self.config(cfg)[self.section].get("name", self.name))

    def runner(self) -> Callable[[DictConfig], dict[str, Any]]:
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)

    def outputs(self, cfg: DictConfig) -> list[Path]:
        """What a run leaves that another config's run must not reuse: the model folder and Ray Train run folder
        of a training stage (the checkpoints it would resume from), or the output folder of another stage."""
        from xpl.stages.common import stage_dir
        from xpl.train.engine import run_folder_name

        own = self.config(cfg)
        if not self.trains:
            return [Path(own[self.section].output)]
        label = self.label(cfg)
        return [stage_dir(own, label), Path(own[self.section].train.storage_path) / run_folder_name(own.run_name, label)]


def plain_student(cfg: DictConfig) -> DictConfig:
    """The main job's comparison: the same student with the ordinary BCE mask loss, in its own folder and run."""
    return OmegaConf.merge(cfg, {"student": {"name": "student_plain", "mode": "plain"}})


STAGES = (
    Stage("pretrain", "xpl.stages.pretrain:run_pretrain", "pretrain", ("data", "synth", "text", "model", "pretrain"),
          command="pretrain", job="pretrain", help="caption pretraining of backbone + V2L"),
    Stage("teacher", "xpl.stages.teacher:run_teacher", "teacher", ("teacher",), upstream="pretrain", model=True,
          command="train-teacher", job="train_teacher", help="train the teacher Mask R-CNN on base classes"),
    Stage("pseudolabel", "xpl.stages.pseudolabel:run_pseudolabel", "pseudolabel", ("pseudolabel",),
          upstream="teacher", trains=False, command="pseudolabel", job="pseudolabel",
          help="pseudo-label caption shards with the teacher"),
    Stage("student", "xpl.stages.student:run_student", "student", ("student",), upstream="pseudolabel", model=True,
          command="train-student", job="train_student", help="train the robust student on base and pseudo labels"),
    Stage("student_plain", "xpl.stages.student:run_student", "student", ("student",), upstream="pseudolabel",
          model=True, derive=plain_student),
)
BY_NAME = {stage.name: stage for stage in STAGES}
