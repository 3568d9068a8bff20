"""RoI pooling on CPU: torchvision's roi_align kernels against the tap gather of `xpl.model.roi_pool`.

`python benchmarks/roi_pool.py [--config FILE] [--steps N] [--out FILE] [key=value ...]` times, in one
process on one thread (what each Ray Train worker gets on a 2-core node), (1) the box (7x7) and mask (14x14)
poolers alone on the model's FPN maps, forward and forward + backward, and (2) a whole Mask R-CNN training
step (forward, backward, AdamW) of the config's detector on `batch` images with random boxes and masks,
median over the steps after warm-up. It checks that both give the same numbers, prints a table and saves
JSON (default `outputs/benchmarks/roi_pool.json`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torchvision.ops import MultiScaleRoIAlign

from xpl.config import load_config
from xpl.model.backbones import Fp32MultiScaleRoIAlign
from xpl.model.detector import OpenVocabMaskRCNN


def _median_ms(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return 1e3 * statistics.median(times)


def _boxes(gen: torch.Generator, images: int, per_image: int, size: int) -> list[torch.Tensor]:
    out = []
    for _ in range(images):
        xy = torch.rand(per_image, 2, generator=gen) * size * 0.7
        wh = torch.rand(per_image, 2, generator=gen) * size * 0.4 + 4
        out.append(torch.cat([xy, (xy + wh).clamp(max=size)], dim=1))
    return out


def torchvision_twin(pool: Fp32MultiScaleRoIAlign) -> MultiScaleRoIAlign:
    """torchvision's pooler with the same levels, size, sampling and canonical scale."""
    return MultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio,
                              canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)


def pooler_rows(model: OpenVocabMaskRCNN, size: int, batch: int, repeat: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        maps = model.backbone(torch.rand(batch, 3, size, size, generator=gen))
    rows = []
    for name, pool, per_image in (("box 7x7", model.roi_heads.box_roi_pool, 64),
                                  ("mask 14x14", model.roi_heads.mask_roi_pool, 16)):
        boxes = _boxes(gen, batch, per_image, size)
        shapes = [(size, size)] * batch
        for kernel, module in (("torchvision", torchvision_twin(pool)), ("taps", pool)):
            inputs = {k: v.detach().clone().requires_grad_() for k, v in maps.items()}
            out = module(inputs, boxes, shapes)
            grad = torch.randn(out.shape, generator=gen)

            def both(m: torch.nn.Module = module) -> None:
                (m(inputs, boxes, shapes) * grad).sum().backward()

            rows.append({"pooler": name, "kernel": kernel, "rois": batch * per_image,
                         "forward_ms": _median_ms(lambda m=module: m(inputs, boxes, shapes), repeat),
                         "forward_backward_ms": _median_ms(both, repeat), "output": out.detach()})
        ref, taps = rows[-2], rows[-1]
        taps["max_abs_diff"] = float((ref.pop("output") - taps.pop("output")).abs().max())
    return rows


def step_rows(model: OpenVocabMaskRCNN, size: int, batch: int, steps: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, size, size, generator=gen) for _ in range(batch)]
    targets = []
    for boxes in _boxes(gen, batch, 4, size):
        masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            mask[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.randint(1, 7, (len(boxes),), generator=gen),
                        "masks": masks})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    poolers = (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool)
    rows = []
    for kernel in ("torchvision", "taps"):
        model.load_state_dict(state)
        box, mask = poolers if kernel == "taps" else (torchvision_twin(p) for p in poolers)
        model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool = box, mask
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        rows.append({"kernel": kernel, "images": batch, "step_ms": _median_ms(step, steps, warmup=5)})
    model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool = poolers
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4, help="images per training step (a worker's batch)")
    parser.add_argument("--embed-dim", type=int, default=384, help="the text encoder's width (sizes V2L only)")
    parser.add_argument("--out", default="outputs/benchmarks/roi_pool.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(args.config, args.overrides)
    model = OpenVocabMaskRCNN.from_config(cfg.model, args.embed_dim)
    model.set_class_embeddings(torch.nn.functional.normalize(torch.randn(6, args.embed_dim), dim=1))
    size = int(cfg.model.image_size)
    pools = pooler_rows(model, size, args.batch, args.steps)
    steps = step_rows(model, size, args.batch, args.steps)
    print(f"\n{'pooler':<12}{'kernel':<13}{'RoIs':>6}{'fwd ms':>9}{'fwd+bwd ms':>12}{'max |diff|':>12}")
    for row in pools:
        diff = f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else ""
        print(f"{row['pooler']:<12}{row['kernel']:<13}{row['rois']:>6}{row['forward_ms']:>9.1f}"
              f"{row['forward_backward_ms']:>12.1f}{diff:>12}")
    print(f"\n{'training step':<25}{'ms':>8}{'images/s':>10}")
    for row in steps:
        print(f"{row['kernel']:<25}{row['step_ms']:>8.1f}{1e3 * row['images'] / row['step_ms']:>10.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"image_size": size, "backbone": cfg.model.backbone, "threads": 1,
                               "poolers": pools, "steps": steps}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
