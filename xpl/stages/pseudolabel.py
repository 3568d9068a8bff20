"""Stage 3: cross-modal pseudo-labeling of caption shards (see `xpl.pseudo.pipeline`).

`run_pseudolabel(cfg)` plans the shards (finished ones are skipped: resume), embeds the vocabulary
names, runs the Ray Data pipeline, then accounts for the whole output from the manifests and logs
params, counts, throughput, score histograms and example pictures to MLflow.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xpl.errors import XPLError

log = logging.getLogger(__name__)

STAGE = "pseudolabel"


def _report(output: Path, names: list[str], records: list[dict[str, Any]], visualize: int) -> Path:
    """Histograms (png + json) and example pictures under `<output>/report`."""
    from xpl.pseudo.manifest import shard_path
    from xpl.pseudo.visualize import draw_pseudo, histogram, histogram_image, labeled_samples

    report = output / "report"
    (report / "examples").mkdir(parents=True, exist_ok=True)
    for field, title in (("align_scores", "alignment score v_r . t_w"), ("mask_scores", "mask score")):
        values = [v for r in records for v in r.get(field, [])]
        hist = histogram(values)
        (report / f"{field}_hist.json").write_text(json.dumps(hist))
        histogram_image(hist, f"{title} ({len(values)} instances)").save(report / f"{field}_hist.png")
    shards = [shard_path(output, n) for n in names if shard_path(output, n).is_file()]
    for i, (key, image, pseudo) in enumerate(labeled_samples(shards, visualize)):
        safe = key.replace("/", "_")
        draw_pseudo(image, pseudo).save(report / "examples" / f"{i:02d}_{safe}.png")
    return report


def _params(cfg: DictConfig, n_shards: int, n_classes: int) -> dict[str, Any]:
    params = {f"pseudolabel.{k}": v for k, v in cfg.pseudolabel.items()}
    params.update({"data.vocab": cfg.data.vocab, "text.model": cfg.text.model, "input_shards": n_shards,
                   "vocab_classes": n_classes})
    return params


def run_pseudolabel(cfg: DictConfig) -> dict[str, Any]:
    """Pseudo-label `cfg.pseudolabel.input` into `cfg.pseudolabel.output`; return the totals.

    The totals cover every input shard (including those finished by earlier runs); `run` holds
    this run's share: shards and samples processed, seconds, images/s and ms per image per stage.
    """
    import mlflow

    from xpl.data.captions import expand_urls
    from xpl.pseudo import manifest
    from xpl.cluster import connect
    from xpl.config import to_dict, to_yaml
    from xpl.pseudo.pipeline import Settings, run_shards
    from xpl.tracking import config_digest, log_params_once, resolve_tracking_uri, stage_run
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
    manifest.prepare_output(output)
    log.info("%d input shards, %d already done, %d to do", len(shards), len(shards) - len(todo), len(todo))

    uri = resolve_tracking_uri(cfg.tracking.uri)
    with stage_run(uri, cfg.tracking.experiment, cfg.run_name, STAGE):
        log_params_once({**_params(cfg, len(shards), len(vocab)), "config_digest": config_digest(to_dict(cfg))})
        mlflow.log_text(to_yaml(cfg), f"{STAGE}/config.yaml")
        run = {"shards": len(todo), "samples": 0, "seconds": 0.0, "images_per_s": 0.0, "ms_per_image": {}}
        if todo:
            from xpl.text import TextEncoder

            embeddings = TextEncoder(cfg.text.model).embed(vocab.names).numpy()
            connect()
            start = time.perf_counter()
            timings: dict[str, float] = defaultdict(float)
            done_before = len(shards) - len(todo)
            for i, row in enumerate(run_shards(todo, output=str(output), teacher=str(pl.teacher), vocab=vocab,
                                               class_embeddings=embeddings, settings=Settings.from_config(pl))):
                run["samples"] += row["samples"]
                for stage, seconds in row["timings"].items():
                    timings[stage] += seconds
                log.info("shard %s: %d samples, %d labeled, %d no_match, %d rejected", row["shard"],
                         row["samples"], row["labeled"], row["no_match"], row["rejected"])
                mlflow.log_metric("shards_done", done_before + i + 1)
            run["seconds"] = time.perf_counter() - start
            run["images_per_s"] = run["samples"] / run["seconds"] if run["seconds"] > 0 else 0.0
            run["ms_per_image"] = {k.removeprefix("t_"): 1000 * v / max(1, run["samples"]) for k, v in timings.items()}

        records_by_shard = {s.name: manifest.read_manifest(output, s.name) for s in shards}
        missing = [n for n, r in records_by_shard.items() if r is None]
        records = [r for rs in records_by_shard.values() if rs for r in rs]
        totals = manifest.totals(records)
        totals.update(shards=len(shards), unfinished_shards=len(missing), run=run, output=str(output))
        summary = {**totals, "shard_urls": {s.name: s.url for s in shards}}
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
            metrics.update({f"ms_per_image.{k}": v for k, v in run["ms_per_image"].items()})
        mlflow.log_metrics(metrics, step=step)
        report = _report(output, [s.name for s in shards], records, int(pl.visualize))
        mlflow.log_artifacts(str(report), STAGE)
        mlflow.log_artifact(str(output / "summary.json"), STAGE)
    if missing:
        raise XPLError(f"{len(missing)} of {len(shards)} shards are unfinished ({', '.join(missing[:5])}); "
                       "run again with the same output to finish them")
    return totals
