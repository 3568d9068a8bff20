"""`xpl segment`: segment images with class names the user types, using an exported model (as Detic does).

The typed names are embedded by the text encoder and become the model's classes. Each image gets a
picture (masks, boxes, names and scores drawn) and one json collects every detection in COCO result
style plus the images that could not be read; in a folder, an unreadable image is listed and skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageOps

from xpl.data import rle
from xpl.errors import DataError, XPLError

IMAGE_SUFFIXES = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
RESULTS_FILE = "segments.json"


def parse_classes(text: str) -> list[str]:
    """Comma-separated class names, stripped; XPLError when none is given or one repeats."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise XPLError('--classes: no class names given (e.g. --classes "circle,star")')
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise XPLError(f"--classes: names given more than once: {', '.join(repeated)}")
    return names


def list_images(path: Path) -> list[Path]:
    """`path` itself, or the files of a folder whose suffix is an image format PIL reads, sorted."""
    if path.is_file():
        return [path]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise XPLError(f"{path}: no image files in this folder")
        return images
    raise XPLError(f"{path}: no such image or folder")


def read_image(path: Path) -> Image.Image:
    """The image as RGB, as displayed (EXIF orientation applied); DataError naming the file when it cannot be
    decoded."""
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError and truncation are OSErrors
        raise DataError(f"{path}: cannot read image ({exc})") from exc


@torch.no_grad()
def detect(model: torch.nn.Module, image: Image.Image, names: list[str], score_threshold: float,
           device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Detections scoring at least `score_threshold`: category id (index into `names`) and name, RLE mask,
    xywh box and score, best first."""
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255)
    out = model([tensor.to(device)])[0]
    keep = out["scores"] >= score_threshold
    masks = (out["masks"][keep, 0] >= 0.5).cpu().numpy()
    detections = []
    for mask, box, label, score in zip(masks, out["boxes"][keep].tolist(), out["labels"][keep].tolist(),
                                       out["scores"][keep].tolist()):
        x0, y0, x1, y1 = box
        detections.append({"category_id": label - 1, "category_name": names[label - 1],
                           "segmentation": rle.encode(mask), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    return detections


def what_to_expect(trained_on: Optional[dict[str, Any]], names: list[str]) -> list[str]:
    """What a model knows, from what its export says it was trained on: a shapes-world model knows flat-colour
    shapes only, and names outside its training classes rest on the text space alone."""
    if trained_on is None:
        return []
    notes = []
    if trained_on.get("data") == "the shapes world":
        notes.append("this model was trained on the shapes world (flat-colour shapes on a plain background): it "
                     "knows only that domain and its vocabulary; on photos expect little or nothing")
    unseen = [n for n in names if n not in set(trained_on.get("classes", []))]
    if unseen:
        notes.append(f"not in its training vocabulary ({', '.join(trained_on.get('classes', []))}): "
                     f"{', '.join(unseen)}; these rest on the text space alone")
    return notes


def segment(inputs: str | Path, names: list[str], checkpoint: str | Path, out: str | Path, *,
            score_threshold: float = 0.5, text_model: Optional[str] = None,
            device: Optional[str] = None) -> dict[str, Any]:
    """Segment an image or a folder of images with the classes `names`; write `<out>/<image stem>.png` per image
    and `<out>/segments.json`; return that json's content. `text_model` None: the one the model was trained with.

    A single unreadable image is an XPLError; in a folder, unreadable images are listed under `bad_images`.
    """
    from xpl.model.checkpoint import load_model
    from xpl.pseudo.visualize import draw_instances
    from xpl.text import text_encoder

    if not names:
        raise XPLError("segment: no class names given")
    inputs = Path(inputs)
    paths = list_images(inputs)
    out = Path(out)
    if out.resolve() == (inputs if inputs.is_dir() else inputs.parent).resolve():
        raise XPLError(f"segment: --out {out} is the images' own folder; the pictures would overwrite them")
    if out.exists() and not out.is_dir():
        raise XPLError(f"segment: --out {out} is a file; give a folder for the pictures and segments.json")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(checkpoint, map_location=device)
    # The model drops detections under its own box_score_thresh; a lower threshold asked for here wins.
    model.roi_heads.score_thresh = min(model.roi_heads.score_thresh, score_threshold)
    model.set_class_names(text_encoder(text_model or model.text_model), names)
    for line in what_to_expect(model.trained_on, names):
        print(f"[segment] note: {line}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    stems = [p.stem for p in paths]
    images: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    bad: list[dict[str, str]] = []
    for path in paths:
        file_name = path.name
        try:
            image = read_image(path)
        except DataError as exc:
            if inputs.is_file():
                raise
            bad.append({"file_name": file_name, "error": str(exc)})
            print(f"[segment] skipped {exc}", flush=True)
            continue
        detections = detect(model, image, names, score_threshold, device)
        picture = f"{path.stem if stems.count(path.stem) == 1 else path.name}.png"
        labels = [f"{d['category_name']} {d['score']:.2f}" for d in detections]
        draw_instances(image, detections, labels).save(out / picture)
        image_id = len(images)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height,
                       "picture": picture})
        results += [{"image_id": image_id, "file_name": file_name, **d} for d in detections]
        print(f"[segment] {file_name}: {len(detections)} instances -> {out / picture}", flush=True)
    summary = {"checkpoint": str(checkpoint), "score_threshold": score_threshold,
               "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
               "images": images, "results": results, "bad_images": bad}
    (out / RESULTS_FILE).write_text(json.dumps(summary) + "\n")
    print(f"[segment] {len(images)} images segmented, {len(bad)} unreadable"
          + (f" ({', '.join(b['file_name'] for b in bad)})" if bad else "") + f"; results: {out / RESULTS_FILE}",
          flush=True)
    return summary
