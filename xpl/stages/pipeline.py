"""The whole pipeline on the configured data: its inputs checked (the shapes world written when that is the
data), then pretrain, teacher, pseudo-labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xpl.errors import DataError, XPLError


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
        raise XPLError(f"missing inputs: {', '.join(missing)} (data.synthesize=false: real data is never generated)")
    if not owned(root):
        raise XPLError(f"missing inputs: {', '.join(missing)}; data.root={root} holds other files, so the shapes "
                       "world is not written there (use an empty folder, or set data.synthesize=false for real data)")
    s = cfg.synth
    print(f"[pipeline] writing the shapes world to {root}", flush=True)
    synthesize(root, seed=s.seed, train_images=s.train_images, caption_images=s.caption_images,
               val_images=s.val_images, shard_size=s.shard_size, image_size=s.image_size,
               false_mention_rate=s.false_mention_rate, colour_mention_rate=s.colour_mention_rate, progress=True)
    return True


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run every stage in order; each stage resumes its own finished work when re-run."""
    from xpl.stages.pretrain import run_pretrain
    from xpl.stages.pseudolabel import run_pseudolabel
    from xpl.stages.teacher import run_teacher

    ensure_inputs(cfg)
    results: dict[str, Any] = {}
    for name, stage in (("pretrain", run_pretrain), ("teacher", run_teacher), ("pseudolabel", run_pseudolabel)):
        tic = time.perf_counter()
        print(f"[pipeline] stage {name}", flush=True)
        results[name] = stage(cfg)
        print(f"[pipeline] stage {name} done in {time.perf_counter() - tic:.0f} s", flush=True)
    return results
