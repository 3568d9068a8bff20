"""The whole pipeline on the configured data: shapes world (when missing), pretrain, teacher, pseudo-labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def ensure_shapes_world(cfg: DictConfig) -> bool:
    """Write the seeded shapes world to `data.root` unless it is already there; True if written."""
    if Path(cfg.data.vocab).is_file():
        return False
    from xpl.data.shapes import synthesize

    s = cfg.synth
    print(f"[pipeline] writing the shapes world to {cfg.data.root}", flush=True)
    synthesize(Path(cfg.data.root), seed=s.seed, train_images=s.train_images, caption_images=s.caption_images,
               val_images=s.val_images, shard_size=s.shard_size, image_size=s.image_size,
               false_mention_rate=s.false_mention_rate, colour_mention_rate=s.colour_mention_rate, progress=True)
    return True


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run every stage in order; each stage resumes its own finished work when re-run."""
    from xpl.stages.pretrain import run_pretrain
    from xpl.stages.pseudolabel import run_pseudolabel
    from xpl.stages.teacher import run_teacher

    ensure_shapes_world(cfg)
    results: dict[str, Any] = {}
    for name, stage in (("pretrain", run_pretrain), ("teacher", run_teacher), ("pseudolabel", run_pseudolabel)):
        tic = time.perf_counter()
        print(f"[pipeline] stage {name}", flush=True)
        results[name] = stage(cfg)
        print(f"[pipeline] stage {name} done in {time.perf_counter() - tic:.0f} s", flush=True)
    return results
