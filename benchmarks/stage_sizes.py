"""What each stage costs at a preset's real sizes: one training step of pretraining, the teacher and the student
(through DeepSpeed, as the Ray Train workers run it), `regions()` on one image, and the pseudo-labeling actor's
model work on one batch of the preset's size; step seconds and peak memory, each measured in a process of its own.

    python benchmarks/stage_sizes.py --config configs/coco_ovis.yaml [--layout coco|oi] [--device cpu|cuda]
                                     [--steps 3] [--only teacher,regions] [--out FILE] [key=value ...]

On a CPU machine it sizes the nodes (peak RSS per stage); on a GPU machine it is the real presets' GPU check (nccl,
bf16 where the GPU has it; the CUDA allocator's peak). No Ray: it runs where only torch, torchvision, transformers
and deepspeed are installed. The data is a miniature in the preset's layout (`xpl synth --layout coco|oi`, written to
a temporary folder); models start from random weights, so the figures are sizes and speed, never quality. The
student's caption images carry their annotations as pseudo-labels (the same work as real ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MEASURES = ("pretrain", "teacher", "student", "regions", "pseudolabel")
STAGE_TASKS = {"pretrain": "xpl.stages.pretrain:PretrainTask", "teacher": "xpl.stages.teacher:TeacherTask",
               "student": "xpl.stages.student:StudentTask"}


def preset(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> Any:
    """The preset with the miniature's places (in `args.overrides`), outputs and checkpoints under `args.work`."""
    from xpl.config import load_config

    work = args.work
    local = [f"output_dir={work}", *(f"{s}.train.storage_path={work}/ray_results" for s in STAGE_TASKS),
             f"tracking.uri=sqlite:///{work}/mlflow.db"]
    return load_config(args.config, [*local, *args.overrides, *extra])


def peak_memory_mib(device: torch.device) -> float:
    """The CUDA allocator's peak on a GPU; this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_for(task: Any, settings: Any, device: torch.device) -> Any:
    """The task's model in a one-process DeepSpeed engine, as `xpl.train.engine.train_loop_per_worker` builds it."""
    import deepspeed

    from xpl.train.engine import deepspeed_config, resolved_precision
    from xpl.train.schedule import lr_scheduler

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29531"}.items():
        os.environ.setdefault(key, value)
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    model = task.build_model().to(device)
    optimizer = settings.optimizer_for(model, task.param_groups(model, settings.lr))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=lambda o: lr_scheduler(o, **settings.schedule()),
                                           config=deepspeed_config(settings, resolved_precision(settings)))
    return engine


def student_batches(task: Any) -> Any:
    """GT batches of the base-annotated images with, as pseudo-labeled caption images, other annotated images
    relabeled into the whole vocabulary (`task.batches` would read stage 3's shards)."""
    from xpl.data.sampling import rank_batches
    from xpl.vocab import Vocabulary

    cfg, data = task.cfg, task.dataset()
    base = torch.tensor([0, *Vocabulary.load(cfg.data.vocab).labels("base")])
    gt = rank_batches(len(data), cfg.student.train.batch_size, 0, 1, 0, cfg.student.train.seed)
    pseudo = rank_batches(len(data), cfg.student.pseudo_batch_size, 0, 1, 0, cfg.student.train.seed + 1)
    while True:
        items = [data[i] for i in next(pseudo)]
        yield ([data[i] for i in next(gt)], [(img, {**t, "labels": base[t["labels"]]}) for img, t in items], None)


def measure_training(stage: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Seconds per step (median after the first) and images per step of one stage, through DeepSpeed."""
    import importlib

    from xpl.config import to_dict
    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN
    from xpl.stages.common import train_settings
    from xpl.text import TextEncoder

    module, name = STAGE_TASKS[stage].split(":")
    teacher = Path(args.work) / "teacher.pt"  # a random teacher for the student to start from
    cfg = preset(args, (f"student.init={teacher}", "teacher.init="))
    if stage == "student":
        export_model(OpenVocabMaskRCNN.from_config(cfg.model, TextEncoder(cfg.text.model).dim), teacher)
    task = getattr(importlib.import_module(module), name)(to_dict(cfg))
    settings = train_settings(cfg, stage)
    engine = engine_for(task, settings, device)
    batches = student_batches(task) if stage == "student" else task.batches(0, 1, 0)
    engine.train()
    times, images = [], 0
    for _ in range(args.steps):
        batch = next(batches)
        _sync(device)
        tic = time.perf_counter()
        loss, _, images = task.loss(engine, batch, device)
        engine.backward(loss)
        engine.step()
        _sync(device)
        times.append(time.perf_counter() - tic)
        if not torch.isfinite(loss):
            raise SystemExit(f"stage_sizes: {stage}: non-finite loss {loss.item()}")
    steady = times[1:] or times
    return {"images_per_step": images, "s_per_step": statistics.median(steady), "first_step_s": times[0],
            "precision": "bf16" if engine.bfloat16_enabled() else "fp32"}


def measure_regions(cfg: Any, device: torch.device, batch: int, steps: int) -> dict[str, Any]:
    """The teacher actor's model work on `batch` caption images of the preset's size: the `RegionChoice`'s
    candidate regions, then its selection for their words."""
    from xpl.data.sampling import caption_batches
    from xpl.model.detector import OpenVocabMaskRCNN
    from xpl.pseudo.choice import RegionChoice, caption_words
    from xpl.text import TextEncoder
    from xpl.vocab import Vocabulary

    encoder = TextEncoder(cfg.text.model)
    vocab = Vocabulary.load(cfg.data.vocab)
    class_embeddings = encoder.embed(vocab.names)
    embedding = dict(zip(vocab.ids, class_embeddings))
    choice = RegionChoice.from_config(cfg.pseudolabel, class_embeddings, cfg.model.logit_scale)
    model = OpenVocabMaskRCNN.from_config(cfg.model, encoder.dim).to(device).eval()
    samples = next(caption_batches(cfg.data.captions, batch, rank=0, world_size=1, image_size=cfg.data.image_size,
                                   start_step=0, seed=0))
    images = [s["image"].to(device) for s in samples]
    words = [[{"category_id": m.category_id, "name": m.name, "phrase": m.phrase, "count": m.count}
              for m in vocab.match(s["caption"])] for s in samples]
    times = []
    with torch.inference_mode():
        for _ in range(steps):
            _sync(device)
            tic = time.perf_counter()
            regions = choice.regions(model, images)
            choice.select([caption_words(w, embedding) for w in words], regions)
            _sync(device)
            times.append(time.perf_counter() - tic)
    steady = times[1:] or times
    return {"images_per_step": len(images), "s_per_step": statistics.median(steady), "first_step_s": times[0],
            "image_sizes": sorted({tuple(img.shape[-2:]) for img in images}),
            "candidates_per_image": [len(r.boxes) for r in regions]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """One measure in this process (a child of `main`)."""
    from xpl.runtime import apply_env_defaults

    apply_env_defaults()
    device = torch.device(args.device)
    if args.one in STAGE_TASKS:
        row = measure_training(args.one, args, device)
    else:
        cfg = preset(args)
        batch = 1 if args.one == "regions" else int(cfg.pseudolabel.batch_size)
        row = measure_regions(cfg, device, batch, args.steps)
    return {"measure": args.one, **row, "peak_memory_mib": peak_memory_mib(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/coco_ovis.yaml")
    parser.add_argument("--layout", default="coco", choices=("coco", "oi"), help="the miniature's layout")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", default=",".join(MEASURES), help=f"comma-separated, from {', '.join(MEASURES)}")
    parser.add_argument("--out", default="outputs/benchmarks/stage_sizes.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the preset (e.g. counts)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return
    from xpl.data.miniature import write_miniature

    if args.device == "cpu":
        args.overrides = [*(f"{s}.train.use_gpu=false" for s in STAGE_TASKS), *args.overrides]
    rows = []
    with tempfile.TemporaryDirectory(prefix="xpl-sizes-") as work:
        places = write_miniature(Path(work) / "data", args.layout)["overrides"]
        for name in args.only.split(","):
            command = [sys.executable, __file__, "--one", name, "--work", work, "--config", args.config,
                       "--device", args.device, "--steps", str(args.steps), *places, *args.overrides]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"stage_sizes: {name} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{name:12s} {rows[-1]['s_per_step']:7.2f} s/step ({rows[-1]['images_per_step']} images)  "
                  f"peak {rows[-1]['peak_memory_mib']:8.0f} MiB", flush=True)
    report = {"config": args.config, "device": torch.cuda.get_device_name(0) if args.device == "cuda" else
              platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "overrides": args.overrides, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
