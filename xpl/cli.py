"""`xpl ...`: one subcommand per stage, plus the shapes world, config display and the whole demo.

User mistakes (`XPLError`) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable

from xpl.errors import XPLError
from xpl.runtime import apply_env_defaults
from xpl.stages.registry import BY_NAME, STAGES


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: the paper's recipe on COCO; "
                        "configs/shapes.yaml: the embedded shapes world)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. teacher.train.steps=50")


def _load(args: argparse.Namespace):
    from xpl.config import load_config

    return load_config(args.config, args.overrides)


def cmd_config_show(args: argparse.Namespace) -> None:
    from xpl.config import to_yaml

    print(to_yaml(_load(args)), end="")


def cmd_synth(args: argparse.Namespace) -> None:
    sizes = {key: getattr(args, key) for key in ("train_images", "caption_images", "val_images", "shard_size",
                                                 "image_size") if getattr(args, key) is not None}
    if args.layout == "shapes":
        from xpl.config import SynthConfig
        from xpl.data.shapes import synthesize

        world = SynthConfig()
        sizes = {key: sizes.get(key, getattr(world, key)) for key in ("train_images", "caption_images", "val_images",
                                                                      "shard_size", "image_size")}
        summary = synthesize(Path(args.out), seed=args.seed, progress=True, **sizes)
    else:
        from xpl.data.miniature import write_miniature

        if "image_size" in sizes:
            raise XPLError("--image-size is the shapes world's: a miniature has the real sets' image sizes")
        if "train_images" in sizes:
            sizes["images"] = sizes.pop("train_images")
        summary = write_miniature(Path(args.out), args.layout, seed=args.seed, **sizes)
    print(json.dumps(summary, indent=2, default=str))


def _stage(name: str) -> Callable[[argparse.Namespace], None]:
    """A subcommand that runs stage `name` (`xpl.stages.registry`) on the running (or a new local) Ray cluster
    and prints its result."""

    def run(args: argparse.Namespace) -> None:
        from xpl.ray_cluster import connect

        _log_progress()
        cfg = _load(args)
        connect()
        result = BY_NAME[name].runner()(cfg)
        print(json.dumps(result, indent=2, default=str))

    return run


def _log_progress() -> None:
    """The stages' own progress lines (`xpl` loggers at INFO, e.g. pseudo-labeling's per shard) on stderr."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logger = logging.getLogger("xpl")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job; it ends with its own results table (no json dump after it)."""
    from xpl.ray_cluster import connect
    from xpl.stages.pipeline import run_pipeline

    cfg = _load(args)
    connect(worker_logs=False)
    run_pipeline(cfg, fresh=args.fresh)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xpl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"xpl {metadata.version('xpl')}")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect configuration")
    config_sub = config.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser("show", help="print the resolved config")
    _add_config_args(show)
    show.set_defaults(func=cmd_config_show)

    synth = sub.add_parser("synth", help="write the seeded shapes world (COCO json, caption shards, vocabulary) or a "
                           "miniature of a real preset's data (--layout coco|oi)")
    synth.add_argument("--out", required=True)
    synth.add_argument("--layout", choices=("shapes", "coco", "oi"), default="shapes",
                       help="shapes: the shapes world; coco, oi: a miniature in the layout configs/coco_ovis.yaml or "
                       "configs/oi_cc.yaml reads, with a random-weight BERT folder (xpl.data.miniature)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-images", type=int, default=None, help="default: 300 (shapes), 12 (miniatures)")
    synth.add_argument("--caption-images", type=int, default=None, help="default: 600 (shapes), 24 (miniatures)")
    synth.add_argument("--val-images", type=int, default=None, help="default: 100 (shapes), 6 (miniatures)")
    synth.add_argument("--shard-size", type=int, default=None, help="default: 100 (shapes), 12 (miniatures)")
    synth.add_argument("--image-size", type=int, default=None, help="the shapes world's image side (default 128)")
    synth.set_defaults(func=cmd_synth)

    for stage in (s for s in STAGES if s.command):
        p = sub.add_parser(stage.command, help=stage.help)
        _add_config_args(p)
        p.set_defaults(func=_stage(stage.name))

    evaluate = sub.add_parser(
        "evaluate", help="mask and box AP of a model (generalized and constrained) or of a COCO results file, on "
        "base / novel / all classes",
        description="Mask and box AP / AP50 with pycocotools, in this process (no Ray): of an exported model "
        "(--checkpoint) on data.val_json, generalized (one classifier over base + novel; AP on base, novel, all) and "
        "constrained (one classifier per split); or of a COCO results file (--predictions with --gt). Seconds on "
        "the shapes world; on COCO val, the model's inference over 5000 images. Prints the table, writes "
        "metrics.json and metrics.txt to <output_dir>/evaluate/<model folder>-<model stem> (or --out) and logs "
        "them to the MLflow run of stage evaluate/<that name>.")
    evaluated = evaluate.add_mutually_exclusive_group(required=True)
    evaluated.add_argument("--checkpoint", default=None, help="an exported model, evaluated on data.val_json")
    evaluated.add_argument("--predictions", default=None, help="a COCO results json with RLE masks (needs --gt)")
    evaluate.add_argument("--gt", default=None, help="ground-truth instances json (with --predictions)")
    evaluate.add_argument("--vocab", default=None, help="vocabulary json with the base/novel split (default: "
                          "data.vocab for a model; the categories' split field of --gt for a results file)")
    evaluate.add_argument("--out", default=None, help="folder for metrics.json (default: <output_dir>/evaluate/...)")
    _add_config_args(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    segment = sub.add_parser("segment", help="segment images with class names you type")
    segment.add_argument("inputs", help="an image, or a folder of images")
    segment.add_argument("--classes", required=True, help='comma-separated class names, e.g. "circle,star"')
    segment.add_argument("--checkpoint", required=True, help="exported model (e.g. outputs/shapes/teacher/model.pt)")
    segment.add_argument("--out", required=True, help="folder for the pictures and segments.json")
    segment.add_argument("--score-threshold", type=float, default=0.5)
    segment.add_argument("--text-model", default=None, help="text encoder (default: the one the model was "
                         "trained with, recorded in its file)")
    segment.set_defaults(func=cmd_segment)

    demo = sub.add_parser(
        "demo", help="the main job: every stage, the evaluation and the results table",
        description="The main job on the configured data: pretraining, the teacher, pseudo-labeling, the robust and "
        "the plain student, the evaluation of the teacher and both students, and the results table "
        "(<output_dir>/results.md and results.json), the pseudo-label gallery and the student's pictures. On the "
        "shapes world (--config configs/shapes.yaml, written when missing) it takes about 15-35 minutes on 2 CPU "
        "cores; the real presets are GPU-cluster jobs of days. A rerun skips stages done with the same config and "
        "resumes an interrupted one. Progress lines per stage; everything is logged to MLflow.")
    _add_config_args(demo)
    demo.add_argument("--fresh", action="store_true", help="remove output_dir and rerun every stage")
    demo.set_defaults(func=cmd_demo)

    make_shards = sub.add_parser("make-shards", help="COCO images + captions json -> img2dataset WebDataset shards")
    make_shards.add_argument("--images", required=True, help="folder of COCO images (e.g. train2017)")
    make_shards.add_argument("--captions", required=True, help="captions_train2017.json")
    make_shards.add_argument("--out", required=True)
    make_shards.add_argument("--shard-size", type=int, default=1000)
    make_shards.set_defaults(func=cmd_make_shards)
    return parser


def cmd_evaluate(args: argparse.Namespace) -> None:
    from xpl.stages.evaluate import run_evaluate

    run_evaluate(_load(args), checkpoint=args.checkpoint, gt=args.gt, predictions=args.predictions, vocab=args.vocab,
                 out=args.out)


def cmd_segment(args: argparse.Namespace) -> None:
    from xpl.segment import parse_classes, segment

    segment(args.inputs, parse_classes(args.classes), args.checkpoint, args.out,
            score_threshold=args.score_threshold, text_model=args.text_model)


def cmd_make_shards(args: argparse.Namespace) -> None:
    from xpl.data.make_shards import make_coco_caption_shards

    summary = make_coco_caption_shards(Path(args.images), Path(args.captions), Path(args.out), shard_size=args.shard_size)
    print(json.dumps(summary, indent=2, default=str))


def job(stage: str) -> int:
    """A job entry point (`jobs/<job>.py`): stage `stage`'s subcommand with the job's own arguments."""
    return main([BY_NAME[stage].command, *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except XPLError as exc:
        print(f"xpl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
