"""Stage 3: cross-modal pseudo-labeling of caption shards (see `xpl.pseudo.dataflow`).

`run_pseudolabel(cfg)` plans the shards (finished ones are skipped: resume), embeds the vocabulary
names, runs the Ray Data pipeline, then accounts for the whole output from the manifests and logs
params, counts, throughput, score histograms and example pictures to MLflow. Where the samples carry
truth (the shapes world), it also reports pseudo-label quality: printed, in `summary.json`, as
MLflow metrics, as a threshold curve and as an HTML gallery (`<output>/report/gallery.html`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import DictConfig

from xpl.errors import XPLError

if TYPE_CHECKING:
    from xpl.pseudo.source import ShardTask
    from xpl.vocab import Vocabulary

log = logging.getLogger(__name__)

STAGE = "pseudolabel"


# How many labeled samples the gallery may read while looking for examples of every class.
GALLERY_SCAN = 2000


def _report(output: Path, names: list[str], records: list[dict[str, Any]], visualize: int,
            quality: Optional[dict[str, Any]]) -> Path:
    """Histograms (png + json), example pictures and, where samples carry truth, the quality curve
    (png + json) and the gallery, under `<output>/report`."""
    from xpl.plots import threshold_curve_png
    from xpl.pseudo.gallery import write_gallery
    from xpl.pseudo.manifest import shard_path
    from xpl.pseudo.visualize import draw_pseudo, histogram, histogram_image, labeled_samples

    report = output / "report"
    (report / "examples").mkdir(parents=True, exist_ok=True)
    for field, title in (("align_scores", "alignment score"), ("mask_scores", "mask score")):
        values = [v for r in records for v in r.get(field, [])]
        hist = histogram(values)
        (report / f"{field}_hist.json").write_text(json.dumps(hist))
        histogram_image(hist, f"{title} ({len(values)} instances)").save(report / f"{field}_hist.png")
    shards = [shard_path(output, n) for n in names if shard_path(output, n).is_file()]
    for i, (key, image, pseudo) in enumerate(labeled_samples(shards, visualize)):
        safe = key.replace("/", "_")
        draw_pseudo(image, pseudo).save(report / "examples" / f"{i:02d}_{safe}.png")
    if quality is not None:
        (report / "quality.json").write_text(json.dumps(quality, indent=1))
        (report / "quality_curve.json").write_text(json.dumps(quality["curve"], indent=1))
        threshold_curve_png(quality["curve"], report / "quality_curve.png",
                            "pseudo-labels against the truth, by alignment-score threshold")
        by_key = {r["key"]: r for r in records}
        samples = ((k, image, pseudo, by_key.get(k, {})) for k, image, pseudo in labeled_samples(shards, GALLERY_SCAN))
        write_gallery(report, quality, samples, curve="quality_curve.png")
    return report


def quality_metrics(quality: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of the quality report: per split and per class, the defined values only."""
    metrics = {}
    groups = [(f"quality.{s}", v) for s, v in quality["splits"].items()]
    groups += [(f"quality.class.{name}", v) for name, v in quality["classes"].items()]
    for prefix, values in groups:
        for key in ("precision", "recall", "chance", "mask_iou"):
            if values[key] is not None:
                metrics[f"{prefix}.{key}"] = values[key]
    return metrics


def _params(cfg: DictConfig, n_shards: int, n_classes: int) -> dict[str, Any]:
    params = {f"pseudolabel.{k}": v for k, v in cfg.pseudolabel.items()}
    params.update({"data.vocab": cfg.data.vocab, "text.model": cfg.text.model, "input_shards": n_shards,
                   "vocab_classes": n_classes})
    return params


def run_pseudolabel(cfg: DictConfig) -> dict[str, Any]:
    """Pseudo-label `cfg.pseudolabel.input` into `cfg.pseudolabel.output`; return the totals.

    The totals cover every input shard (including those finished by earlier runs); `run` holds
    this run's share: shards and samples processed, seconds, images/s and, with `pseudolabel.profile`,
    ms per image per role (`xpl.pseudo.profile`).
    The output folder is locked for the run (`xpl.folder_lock`): a second run on it is refused.
    A shard whose reader failed (an I/O error) is left without a manifest and named in the error
    raised at the end, after the other shards are done; the next run retries it.
    """
    from xpl.data.captions import expand_urls
    from xpl.folder_lock import folder_lock
    from xpl.pseudo import manifest
    from xpl.vocab import Vocabulary

    pl = cfg.pseudolabel
    output = Path(pl.output)
    if "://" in str(pl.output):
        raise XPLError(f"pseudolabel.output={pl.output}: the output must be a filesystem path; on a cluster, a "
                       "shared filesystem (EFS, Filestore, a ReadWriteMany volume) mounted at the same path on every node")
    shards = manifest.plan_shards(expand_urls(pl.input))
    todo = [s for s in shards if not manifest.is_done(output, s.name)]
    if todo and not Path(pl.teacher).is_file():
        raise XPLError(f"pseudolabel.teacher={pl.teacher}: teacher model not found (run the teacher stage first)")
    vocab = Vocabulary.load(cfg.data.vocab)
    with folder_lock(output):
        manifest.prepare_output(output)
        log.info("%d input shards, %d already done, %d to do", len(shards), len(shards) - len(todo), len(todo))
        totals, failures = _run_and_account(cfg, shards, todo, vocab)
    if totals["unfinished_shards"]:
        unfinished = [f"{name} ({failures[name]})" if name in failures else name for name in totals["unfinished"]]
        raise XPLError(f"{len(unfinished)} of {len(shards)} shards are unfinished: {'; '.join(unfinished[:5])}; "
                       "run again with the same output to finish them")
    print(f"[{STAGE}] {manifest.format_totals(totals)}", flush=True)
    return totals


def _run_and_account(cfg: DictConfig, shards: list[ShardTask], todo: list[ShardTask],
                     vocab: Vocabulary) -> tuple[dict[str, Any], dict[str, str]]:
    """Run the pipeline over `todo` inside the stage's MLflow run, then account for every shard's manifest.

    Returns the totals and the failure of each shard whose reader failed in this run.
    """
    import mlflow

    from xpl.eval.pseudo_quality import format_report, quality_report
    from xpl.pseudo import manifest
    from xpl.pseudo.choice import RegionChoice
    from xpl.pseudo.dataflow import Settings, run_shards
    from xpl.pseudo.profile import ms_per_image
    from xpl.ray_cluster import connect, require_gpus
    from xpl.stages.common import stage_logging

    pl = cfg.pseudolabel
    output = Path(pl.output)
    failures: dict[str, str] = {}
    with stage_logging(cfg, STAGE, _params(cfg, len(shards), len(vocab))):
        run = {"shards": len(todo), "samples": 0, "seconds": 0.0, "images_per_s": 0.0}
        if todo:
            from xpl.text import text_encoder

            embeddings = text_encoder(cfg.text.model).embed(vocab.names)
            choice = RegionChoice.from_config(pl, embeddings, cfg.model.logit_scale)
            connect()
            if pl.num_gpus_per_actor > 0:
                require_gpus(f"pseudolabel.num_gpus_per_actor={pl.num_gpus_per_actor}")
            start = time.perf_counter()
            timings: Counter[str] = Counter()
            done = len(shards) - len(todo)
            for row in run_shards(todo, output=str(output), teacher=str(pl.teacher), vocab=vocab,
                                  class_embeddings=embeddings.numpy(), choice=choice,
                                  settings=Settings.from_config(pl), profile=pl.profile):
                if row["failure"] is not None:
                    failures[row["shard"]] = row["failure"]
                    log.warning("shard %s failed, left for the next run: %s", row["shard"], row["failure"])
                    continue
                run["samples"] += row["samples"]
                timings.update(row.get("timings", {}))
                log.info("shard %s: %d samples, %d labeled, %d no_match, %d rejected", row["shard"],
                         row["samples"], row["labeled"], row["no_match"], row["rejected"])
                done += 1
                mlflow.log_metric("shards_done", done)
            run["seconds"] = time.perf_counter() - start
            run["images_per_s"] = run["samples"] / run["seconds"] if run["seconds"] > 0 else 0.0
            if pl.profile:
                run["ms_per_image"] = ms_per_image(timings, run["samples"])

        records_by_shard = {s.name: manifest.read_manifest(output, s.name) for s in shards}
        missing = [n for n, r in records_by_shard.items() if r is None]
        records = [r for rs in records_by_shard.values() if rs for r in rs]
        totals = manifest.totals(records)
        totals.update(shards=len(shards), unfinished_shards=len(missing), unfinished=missing, run=run,
                      output=str(output), mlflow_run_id=mlflow.active_run().info.run_id)
        quality = quality_report(records, {c.id: c.name for c in vocab.categories},
                                 {c.id: c.split for c in vocab.categories})
        if quality is not None:
            totals["quality"] = {k: v for k, v in quality.items() if k != "curve"}
        summary = {**totals, "failures": failures, "shard_urls": {s.name: s.url for s in shards}}
        (output / "summary.json").write_text(json.dumps(summary, indent=1))

        step = len(shards) - len(missing)
        metrics = {k: totals[k] for k in ("samples", "labeled", "no_match", "rejected", "instances", "duplicate_keys")}
        metrics["teacher_nodes"] = len(totals["teacher_nodes"])
        for status, reasons in totals["reasons"].items():
            metrics.update({f"{status}.{reason or 'unknown'}": n for reason, n in reasons.items()})
        scores = sorted(v for r in records for v in r.get("align_scores", []))
        for q in (10, 50, 90):
            if scores:
                metrics[f"align_score.p{q}"] = scores[min(len(scores) - 1, len(scores) * q // 100)]
        if todo:
            metrics.update(run_samples=run["samples"], run_seconds=run["seconds"], images_per_s=run["images_per_s"])
            metrics.update({f"ms_per_image.{k}": v for k, v in run.get("ms_per_image", {}).items()})
        if quality is not None:
            metrics.update(quality_metrics(quality))
            print(format_report(quality), flush=True)
        mlflow.log_metrics(metrics, step=step)
        report = _report(output, [s.name for s in shards], records, int(pl.visualize), quality)
        mlflow.log_artifacts(str(report), STAGE)
        mlflow.log_artifact(str(output / "summary.json"), STAGE)
    return totals, failures
