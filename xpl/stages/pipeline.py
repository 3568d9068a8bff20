"""The main job on the configured data: its inputs checked (the shapes world written when that is the data),
then pretrain, teacher, pseudo-labels, the robust and the plain student, and the evaluation of the teacher and
both students, ending with the results table (`results.md`, `results.json`)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from xpl.errors import DataError, XPLError

if TYPE_CHECKING:
    from xpl.stages.registry import Stage


def missing_inputs(cfg: DictConfig) -> list[str]:
    """The configured inputs the stages read that are not there, as `key=path` (remote shards are not checked)."""
    from xpl.data.captions import expand_urls

    data = cfg.data
    files, folders = ("vocab", "train_json", "val_json"), ("train_images", "val_images")
    missing = [f"data.{key}={data[key]}" for key in files if not Path(data[key]).is_file()]
    missing += [f"data.{key}={data[key]}" for key in folders if not Path(data[key]).is_dir()]
    try:
        expand_urls(data.captions)
    except DataError:
        missing.append(f"data.captions={data.captions}")
    return missing


def ensure_inputs(cfg: DictConfig) -> bool:
    """Make sure every input is there: write the seeded shapes world to `data.root` when inputs are missing and
    `data.synthesize` is on (into an empty folder or an earlier shapes world only); True if written.

    Otherwise a missing input is an XPLError that lists every missing one.
    """
    missing = missing_inputs(cfg)
    if not missing:
        return False
    from xpl.data.shapes import owned, synthesize

    root = Path(cfg.data.root)
    if not cfg.data.synthesize:
        raise XPLError(f"missing inputs: {', '.join(missing)} (data.synthesize=false: real data is never generated; "
                       "the embedded shapes world is --config configs/shapes.yaml)")
    if not owned(root):
        raise XPLError(f"missing inputs: {', '.join(missing)}; data.root={root} holds other files, so the shapes "
                       "world is not written there (use an empty folder, or set data.synthesize=false for real data)")
    s = cfg.synth
    print(f"[pipeline] writing the shapes world to {root}", flush=True)
    synthesize(root, seed=s.seed, train_images=s.train_images, caption_images=s.caption_images,
               val_images=s.val_images, shard_size=s.shard_size, image_size=s.image_size,
               false_mention_rate=s.false_mention_rate, colour_mention_rate=s.colour_mention_rate, progress=True)
    return True


def stage_digest(cfg: DictConfig, sections: tuple[str, ...], upstream: str) -> str:
    """Identity of a stage's work: its config sections and the identity of what it starts from."""
    from xpl.tracking import config_digest

    return config_digest({"upstream": upstream, **{s: OmegaConf.to_container(cfg[s], resolve=True)
                                                   for s in sections}})


@dataclass
class StageRecord:
    """One stage of the main job: what it returned, how long it took, whether an earlier run's output served."""

    digest: str
    result: dict[str, Any]
    seconds: float
    skipped: bool = False


def run_stage(name: str, digest: str, marker: Path, work: Callable[[], dict[str, Any]], fresh: bool,
              outputs: Sequence[Path] = ()) -> StageRecord:
    """Run `work` unless `marker` records a finished run with the same digest (then reuse its result).

    A stage resumes what an interrupted run of the same digest left in `outputs` (checkpoints, finished
    shards); what a run of another config (or an unrecorded one) left there is removed first, so it never
    resumes from or reuses work of another config. `<marker>.started` records the digest being worked on.
    """
    if not fresh and marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("digest") == digest:
            print(f"[pipeline] {name}: done earlier with the same config, skipped ({marker})", flush=True)
            return StageRecord(digest, done["result"], done["seconds"], skipped=True)
    started = marker.with_suffix(".started")
    if not started.is_file() or json.loads(started.read_text()).get("digest") != digest:
        for path in (p for p in outputs if p.exists()):
            print(f"[pipeline] {name}: removing {path} (made with another config)", flush=True)
            shutil.rmtree(path)
    marker.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps({"digest": digest}))
    print(f"[pipeline] {name} ...", flush=True)
    tic = time.perf_counter()
    result = work()
    record = StageRecord(digest, json.loads(json.dumps(result, default=str)), time.perf_counter() - tic)
    marker.write_text(json.dumps(asdict(record), indent=1))
    print(f"[pipeline] {name} done in {record.seconds:.0f} s", flush=True)
    return record


def run_pipeline(cfg: DictConfig, fresh: bool = False) -> dict[str, Any]:
    """Every stage of the registry in order (`xpl.stages.registry.STAGES`), then the evaluation of each stage's
    model; write `results.json` and `results.md` to `<output_dir>` and print the table. A stage whose output
    exists for the same config (and upstream) is skipped; `fresh` reruns everything (the output folder is removed)."""
    from xpl.stages.evaluate import run_evaluate
    from xpl.stages.registry import STAGES
    from xpl.tracking import resolve_tracking_uri

    ensure_inputs(cfg)
    out = Path(cfg.output_dir)
    if fresh and out.exists():
        print(f"[pipeline] --fresh: removing {out}", flush=True)
        shutil.rmtree(out)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    records: dict[str, StageRecord] = {}
    for stage in STAGES:
        parent = records[stage.upstream].digest if stage.upstream else ""
        digest = stage_digest(stage.config(cfg), stage.reads, parent)
        records[stage.name] = run_stage(stage.name, digest, out / "pipeline" / f"{stage.name}.json",
                                        lambda s=stage: _shown(s, cfg, uri), fresh, stage.outputs(cfg))
    _disconnect_ray()
    models = [stage.name for stage in STAGES if stage.model]
    for model in models:
        path = records[model].result["model"]
        records[f"evaluate/{model}"] = run_stage(
            f"evaluate {model}", stage_digest(cfg, ("data", "text"), records[model].digest),
            out / "pipeline" / f"evaluate-{model}.json", lambda p=path: run_evaluate(cfg, checkpoint=p), fresh)
    results = summarize(records, models, uri)
    results["pictures"] = showcase(cfg, records["student"].result["model"], out / "showcase")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = results_markdown(results)
    (out / "results.md").write_text(table)
    print(f"\n{table}\n[pipeline] results: {out / 'results.md'}, {out / 'results.json'}", flush=True)
    print(f"[pipeline] pseudo-label gallery: {Path(cfg.pseudolabel.output) / 'report' / 'gallery.html'}\n"
          f"[pipeline] the robust student on val images, asked for the novel classes only: {results['pictures']}\n"
          f"[pipeline] MLflow UI: mlflow ui --backend-store-uri {results['mlflow']} (then http://127.0.0.1:5000)",
          flush=True)
    return results


def _shown(stage: Stage, cfg: DictConfig, uri: str) -> dict[str, Any]:
    """Run `stage` on its config; a training stage prints progress lines read from its MLflow run."""
    from xpl.stages.progress import StageProgress
    from xpl.tracking import run_key

    own = stage.config(cfg)
    if not stage.trains:
        return stage.runner()(own)
    with StageProgress(uri, own.tracking.experiment, run_key(own.run_name, stage.label(cfg)), stage.label(cfg),
                       int(own[stage.section].train.steps)):
        return stage.runner()(own)


def showcase(cfg: DictConfig, model: str, out: Path, images: int = 6) -> str:
    """Pictures of `model` on the first val images that hold novel objects, asked for the novel names only
    (what a user does with `xpl segment`); returns the folder."""
    from xpl.segment import segment
    from xpl.vocab import Vocabulary

    novel = Vocabulary.load(cfg.data.vocab).split("novel")
    gt = json.loads(Path(cfg.data.val_json).read_text())
    with_novel = {a["image_id"] for a in gt["annotations"] if a["category_id"] in {c.id for c in novel}}
    chosen = [i["file_name"] for i in gt["images"] if i["id"] in with_novel][:images]
    inputs = out / "images"
    inputs.mkdir(parents=True, exist_ok=True)
    for name in chosen:
        shutil.copyfile(Path(cfg.data.val_images) / name, inputs / Path(name).name)
    segment(inputs, [c.name for c in novel], model, out / "student", text_model=cfg.text.model)
    return str(out / "student")


def _disconnect_ray() -> None:
    """The Ray work is done (evaluation runs in this process): leave Ray so that worker logs still in flight
    end here, before the evaluation tables, instead of after the results."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def summarize(records: dict[str, StageRecord], models: list[str], tracking_uri: str) -> dict[str, Any]:
    """results.json: each model's evaluation, pseudo-label quality, wall time and MLflow run id per stage."""
    quality = records["pseudolabel"].result.get("quality", {}).get("splits", {})
    sigma = {m: records[m].result["sigma_report"]["splits"] for m in models if records[m].result.get("sigma_report")}
    return {
        "models": {m: records[f"evaluate/{m}"].result["metrics"] for m in models},
        "sigma": sigma,
        "pseudo_labels": {split: {k: quality[split].get(k) for k in ("precision", "recall", "instances")}
                          for split in ("base", "novel") if split in quality},
        "stages": {name: {"seconds": round(r.seconds, 1), "skipped": r.skipped,
                          "mlflow_run_id": r.result.get("mlflow_run_id")} for name, r in records.items()},
        "mlflow": tracking_uri,
    }


def _cell(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The results table (mask AP50 and AP, generalized and constrained) with pseudo-label quality and times."""
    columns = [("generalized", "novel"), ("generalized", "base"), ("generalized", "all"), ("constrained", "novel"),
               ("constrained", "base")]
    lines = ["| model | " + " | ".join(f"{s} {sub} AP50 / AP" for s, sub in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for model, metrics in results["models"].items():
        cells = [f"{_cell(metrics.get(f'{s}.{sub}.mask_AP50'))} / {_cell(metrics.get(f'{s}.{sub}.mask_AP'))}"
                 for s, sub in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Mask AP50 / AP in % on the val split.", "", "| pseudo-labels | precision | recall | instances |",
              "|---|---|---|---|"]
    for split, q in results["pseudo_labels"].items():
        lines.append(f"| {split} | {_cell(100 * q['precision'] if q['precision'] is not None else None)} % | "
                     f"{_cell(100 * q['recall'] if q['recall'] is not None else None)} % | {q['instances']} |")
    if results.get("sigma"):
        lines += ["", "| sigma on its pseudo labels (caption shards) | split | AUROC, wrong pixels | "
                      "Spearman, mean sigma vs mask IoU | wrong pixels |", "|---|---|---|---|---|"]
        for model, splits in results["sigma"].items():
            for split, values in splits.items():
                share = values["wrong_share"]
                lines.append(f"| {model} | {split} | {_cell(values['auroc'], 3)} | {_cell(values['spearman'], 3)} | "
                             f"{_cell(None if share is None else 100 * share)} % |")
    lines += ["", "| stage | seconds | MLflow run |", "|---|---|---|"]
    for name, stage in results["stages"].items():
        note = " (earlier run)" if stage["skipped"] else ""
        lines.append(f"| {name} | {stage['seconds']:.0f}{note} | {stage['mlflow_run_id'] or ''} |")
    return "\n".join(lines) + "\n"
