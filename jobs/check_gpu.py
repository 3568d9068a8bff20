"""GPU smoke check in one process (no Ray): the detector trained through DeepSpeed (nccl, ZeRO, bf16 when
supported) on shapes scenes, then the teacher's pseudo-label regions, with step times.

`python jobs/check_gpu.py [--backbone tiny|r50_fpn] [--image-size PX] [--steps N] [--out FILE]`
It exercises the same pieces the Ray Train workers use (`deepspeed_config`, `resolved_precision`,
`OpenVocabMaskRCNN`), so a cluster image can be checked before a long job is submitted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def scene_batch(rng: np.random.Generator, size: int, batch: int, device: torch.device):
    """Shapes scenes as Mask R-CNN inputs; every class is a label here (the check is about kernels)."""
    from xpl.data.shapes import CLASSES, sample_scene

    names = [c.name for c in CLASSES]
    images, targets = [], []
    for _ in range(batch):
        image, instances = sample_scene(rng, size)
        masks = torch.from_numpy(np.stack([inst.visible for inst in instances])).to(device)
        boxes = []
        for mask in masks:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        images.append(torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(device))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
                        "labels": torch.tensor([names.index(i.category) + 1 for i in instances], device=device),
                        "masks": masks.to(torch.uint8)})
    return images, targets, len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--out", default="outputs/benchmarks/gpu_check.json")
    args = parser.parse_args()

    import deepspeed

    from xpl.model.detector import OpenVocabMaskRCNN
    from xpl.train.engine import TrainSettings, deepspeed_config, resolved_precision
    from xpl.train.schedule import warmup_cosine

    if not torch.cuda.is_available():
        raise SystemExit("check_gpu: no CUDA device visible")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29531"}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl")
    device = torch.device("cuda", 0)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch, lr=1e-3, weight_decay=1e-4, warmup_steps=5,
                             grad_clip=5.0, num_workers=1, use_gpu=True, cpus_per_worker=1, zero_stage=args.zero_stage,
                             precision="auto", checkpoint_every=args.steps, log_every=10, max_failures=0,
                             storage_path="/tmp", seed=0)
    precision = resolved_precision(settings)
    rng = np.random.default_rng(0)
    images, targets, n_classes = scene_batch(rng, args.image_size, args.batch, device)
    model = OpenVocabMaskRCNN(embed_dim=384, image_size=args.image_size, backbone=args.backbone).to(device)
    model.set_class_embeddings(torch.nn.functional.normalize(torch.randn(n_classes, 384), dim=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=lambda o: warmup_cosine(o, 5, args.steps),
                                           config=deepspeed_config(settings, precision))
    engine.train()
    times, losses = [], []
    for step in range(args.steps):
        torch.cuda.synchronize()
        tic = time.perf_counter()
        parts = engine(images, targets)
        loss = sum(parts.values())
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
        losses.append(float(loss.item()))
        if not np.isfinite(losses[-1]):
            raise SystemExit(f"check_gpu: non-finite loss at step {step}: {parts}")
    module = engine.module.eval()
    with torch.no_grad():
        module.regions(images)
        torch.cuda.synchronize()
        tic = time.perf_counter()
        regions = module.regions(images)
        torch.cuda.synchronize()
        region_s = time.perf_counter() - tic
        flipped = module.regions(images, flip=True, masks=False)  # the flip test of pseudo-labeling
        detections = module(images)
    steady = times[len(times) // 2:]
    report = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
        "precision": precision, "zero_stage": args.zero_stage, "backbone": args.backbone,
        "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
        "first_loss": losses[0], "last_loss": losses[-1],
        "train_images_per_s": args.batch / float(np.mean(steady)),
        "regions_images_per_s": args.batch / region_s,
        "regions_per_image": [len(r.boxes) for r in regions],
        "region_embedding_dtype": str(regions[0].embeddings.dtype),
        "flip_keeps_boxes": all(torch.equal(a.boxes, b.boxes) for a, b in zip(regions, flipped)),
        "detections_per_image": [len(d["boxes"]) for d in detections],
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
