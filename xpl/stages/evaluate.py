"""Stage 5: evaluation. COCO mask and box AP of an exported model (generalized and constrained, on the
config's val split) or of a COCO results file; metrics.json and the table are written, logged to MLflow
and printed. Runs in this process: no Ray, and no model for a results file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig

from xpl.errors import XPLError
from xpl.eval.open_vocab import evaluate_model, evaluate_results_file, format_table
from xpl.stages.common import log_stage_summary, stage_dir

STAGE = "evaluate"


def evaluation_name(checkpoint: Optional[str | Path], predictions: Optional[str | Path]) -> str:
    """The folder and MLflow run name of one evaluation: `<folder>-<stem>` of the model file (the stages
    all export `<stage>/model.pt`, so the stem alone would mix teacher and student up), `results-<stem>`
    of a results file."""
    if checkpoint is not None:
        path = Path(checkpoint).resolve()
        return f"{path.parent.name}-{path.stem}"
    return f"results-{Path(predictions).stem}"


def _evaluate_checkpoint(cfg: DictConfig, checkpoint: Path, vocab_path: str,
                         classes: Sequence[str]) -> dict[str, Optional[float]]:
    from xpl.model.checkpoint import load_model
    from xpl.text import text_encoder
    from xpl.vocab import Vocabulary

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(checkpoint, map_location=device)
    return evaluate_model(model, Vocabulary.load(vocab_path), text_encoder(cfg.text.model), cfg.data.val_json,
                          cfg.data.val_images, device=device, classes=classes)


def run_evaluate(cfg: DictConfig, checkpoint: Optional[str | Path] = None, gt: Optional[str | Path] = None,
                 predictions: Optional[str | Path] = None, vocab: Optional[str | Path] = None,
                 out: Optional[str | Path] = None, classes: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate a model file (on `data.val_json` / `data.val_images`, vocabulary `vocab` or `data.vocab`) or a
    results file `predictions` against `gt` (splits from `vocab`, else from the categories of `gt`).

    A model's generalized AP is also given for each of `classes` (by name). Writes `metrics.json` and `metrics.txt`
    to `out` (default `<output_dir>/evaluate/<evaluation_name>`),
    logs them to the MLflow run of stage `evaluate/<evaluation_name>`, prints the table.
    """
    if (checkpoint is None) == (predictions is None):
        raise XPLError("evaluate: give either a model (--checkpoint) or a results file (--predictions)")
    if checkpoint is not None:
        if gt is not None:
            raise XPLError("evaluate: --gt goes with --predictions; a model is evaluated on data.val_json "
                           "(override it, e.g. data.val_json=... data.val_images=...)")
        vocab_path = str(vocab or cfg.data.vocab)
        params = {"checkpoint": str(checkpoint), "val_json": cfg.data.val_json, "vocab": vocab_path,
                  "text_model": cfg.text.model}
        metrics = _evaluate_checkpoint(cfg, Path(checkpoint), vocab_path, classes)
    else:
        if gt is None:
            raise XPLError("evaluate: --predictions needs --gt, the ground-truth instances json")
        params = {"gt": str(gt), "predictions": str(predictions), "vocab": str(vocab) if vocab else "split field of gt"}
        metrics = evaluate_results_file(gt, predictions, vocab)
    name = evaluation_name(checkpoint, predictions)
    folder = Path(out) if out is not None else stage_dir(cfg, STAGE) / name
    folder.mkdir(parents=True, exist_ok=True)
    table = format_table(metrics)
    metrics_path, table_path = folder / "metrics.json", folder / "metrics.txt"
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    table_path.write_text(table + "\n")
    run_id = log_stage_summary(cfg, f"{STAGE}/{name}", params, metrics, [metrics_path, table_path])
    print(f"{table}\n[{STAGE}] metrics: {metrics_path}\n[{STAGE}] mlflow run: {run_id}", flush=True)
    return {"metrics": metrics, "out": str(folder), "mlflow_run_id": run_id}
