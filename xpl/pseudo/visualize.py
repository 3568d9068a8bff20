"""Pictures: instance masks, boxes and labels drawn on images (pseudo-labels, `xpl segment`), and a score histogram."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from xpl.data import rle
from xpl.data.caption_sample import image_member
from xpl.data.tar_records import iter_tar_records

COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


RIGHT, WRONG = (40, 190, 60), (230, 30, 30)


def draw_instances(image: Image.Image, instances: Sequence[Mapping[str, Any]], labels: Sequence[str],
                   colours: Optional[Sequence[tuple[int, int, int]]] = None, min_side: int = 256) -> Image.Image:
    """`image` with each instance's mask (COCO RLE `segmentation`) tinted, its box (`bbox`, xywh) outlined and
    its label written; each instance gets its own colour unless `colours` are given. Small images are
    enlarged to `min_side` (nearest neighbour) so the labels stay readable."""
    image = image.convert("RGB")
    canvas = np.asarray(image, dtype=np.float32).copy()
    if colours is None:
        colours = [COLOURS[i % len(COLOURS)] for i in range(len(instances))]
    for inst, colour in zip(instances, colours):
        mask = rle.decode(inst["segmentation"], image.height, image.width)
        canvas[mask] = 0.45 * canvas[mask] + 0.55 * np.array(colour, dtype=np.float32)
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    scale = max(1.0, min_side / min(out.size))
    if scale > 1:
        out = out.resize((round(out.width * scale), round(out.height * scale)), Image.NEAREST)
    draw = ImageDraw.Draw(out)
    for inst, label, colour in zip(instances, labels, colours):
        x, y, w, h = (v * scale for v in inst["bbox"])
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        draw.text((x + 2, y + 1), label, fill=colour, stroke_width=1, stroke_fill=(0, 0, 0))
    return out


def draw_pseudo(image_bytes: bytes, pseudo: dict[str, Any], min_side: int = 256,
                verdicts: Optional[Sequence[bool]] = None) -> Image.Image:
    """The image with each pseudo mask tinted, its box outlined and 'name "phrase" score' written.

    With `verdicts` (right or wrong per instance, from the quality judgement) masks and boxes are
    green when right and red when wrong; otherwise each instance gets its own colour.
    """
    instances = pseudo["instances"]
    labels = [f'{inst["name"]} "{inst["phrase"]}" {inst["align_score"]:.2f}' for inst in instances]
    colours = [RIGHT if ok else WRONG for ok in verdicts] if verdicts is not None else None
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes)))  # pseudo masks are as displayed
    return draw_instances(image, instances, labels, colours, min_side)


def histogram(values: Sequence[float], bins: int = 20) -> dict[str, list[float]]:
    """Bin edges and counts (json-ready)."""
    if len(values) == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def histogram_image(hist: dict[str, list[float]], title: str, size: tuple[int, int] = (480, 300)) -> Image.Image:
    """A bar chart of `histogram(...)` output."""
    width, height = size
    out = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(out)
    draw.text((10, 6), title, fill=(0, 0, 0))
    counts, edges = hist["counts"], hist["edges"]
    if not counts:
        draw.text((10, height // 2), "no values", fill=(0, 0, 0))
        return out
    left, right, top, bottom = 40, width - 10, 26, height - 30
    peak = max(counts) or 1
    bar = (right - left) / len(counts)
    for i, c in enumerate(counts):
        x0 = left + i * bar
        draw.rectangle([x0 + 1, bottom - (bottom - top) * c / peak, x0 + bar - 1, bottom], fill=(0, 110, 200))
    draw.line([left, bottom, right, bottom], fill=(0, 0, 0))
    draw.text((left, bottom + 6), f"{edges[0]:.3g}", fill=(0, 0, 0))
    draw.text((right - 40, bottom + 6), f"{edges[-1]:.3g}", fill=(0, 0, 0))
    draw.text((4, top), str(peak), fill=(0, 0, 0))
    return out


def labeled_samples(shards: Sequence[str | Path], limit: int) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """(key, image bytes, pseudo) of the first `limit` samples of output shards, in order."""
    if limit <= 0:
        return
    for path in shards:
        with open(path, "rb") as handle:
            for record in iter_tar_records(handle):
                suffix = image_member(record.members)
                image = record.members[suffix] if suffix else None
                if record.error or image is None or "pseudo.json" not in record.members:
                    continue
                yield record.key, image, json.loads(record.members["pseudo.json"])
                limit -= 1
                if limit <= 0:
                    return
