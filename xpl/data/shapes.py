"""The shapes world: a seeded generator of everything the real pipeline reads.

`synthesize(out)` writes, byte-identically for the same seed and arguments:
- `vocab.json`: categories (id, name, synonyms, split base|novel), COCO/LVIS style;
- `coco/instances_train_base.json` + `coco/train/*.png`: only base objects annotated,
  novel objects are in the pixels without annotations (the open-vocabulary setting);
- `coco/instances_val.json` + `coco/val/*.png`: every object annotated;
- `captions/00000.tar, ...`: img2dataset WebDataset shards (`.jpg`, `.txt`, `.json`);
- `.xpl-shapes-world`: the marker that the folder is the generator's own. It writes only into an
  empty folder or one with this marker, so it never replaces or deletes anyone else's files.

Shapes are flat colour without anti-aliasing, so every mask pixel has exactly its
instance's colour, and the background (a muted gradient with noise, every channel in
[90, 200]) can never take a palette colour, whose channels are not all in that range.
Occluded instances keep their visible mask; a shape that would hide too much of
another one is not drawn at all, so the masks cover exactly the painted pixels.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from xpl.data import rle
from xpl.data.shape_captions import SceneObject, write_caption
from xpl.data.tar_writer import AtomicTar
from xpl.errors import XPLError


@dataclass(frozen=True)
class ShapeClass:
    name: str
    split: str  # "base" | "novel"
    synonyms: tuple[str, ...] = ()


CLASSES = (
    ShapeClass("circle", "base", ("disc", "disk")),
    ShapeClass("square", "base", ("box",)),
    ShapeClass("triangle", "base"),
    ShapeClass("star", "base"),
    ShapeClass("cross", "base", ("plus sign",)),
    ShapeClass("diamond", "base", ("rhombus", "lozenge")),
    ShapeClass("ring", "base", ("donut", "doughnut", "annulus")),
    ShapeClass("pentagon", "base"),
    ShapeClass("heart", "novel"),
    ShapeClass("hexagon", "novel"),
    ShapeClass("moon", "novel", ("crescent", "crescent moon")),
    ShapeClass("arrow", "novel"),
)
PALETTE = {
    "red": (220, 38, 38), "orange": (245, 130, 20), "yellow": (245, 215, 30), "green": (30, 160, 60),
    "blue": (30, 90, 220), "purple": (130, 40, 170), "pink": (240, 110, 180), "cyan": (20, 200, 220),
    "white": (250, 250, 250), "black": (25, 25, 25),
}
BACKGROUND_RANGE = (90, 200)  # every palette colour has a channel outside it
RADIUS_RANGE = (0.09, 0.2)  # shape radius as a fraction of the image side
MIN_VISIBLE_FRACTION = 0.3
MAX_INSTANCES = 5
SPLIT_STREAMS = {"train": 0, "val": 1, "captions": 2}  # independent random streams per split
MARKER = ".xpl-shapes-world"  # written first into every folder the generator owns

# --- geometry: each shape is a list of (polygon in the unit disc, fill) drawn in order ----------


def _regular(n: int, radius: float = 1.0, phase: float = np.pi / 2, centre: tuple[float, float] = (0, 0)) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([centre[0] + radius * np.cos(t), centre[1] - radius * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer, inside = _regular(points), _regular(points, inner, np.pi / 2 + np.pi / points)
    return np.stack([outer, inside], axis=1).reshape(-1, 2)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y - 2.5], axis=1)


def _unit(*parts: tuple[np.ndarray, bool]) -> list[tuple[np.ndarray, bool]]:
    """Scale a shape so its outline (the first polygon) just fits in the unit disc."""
    scale = np.linalg.norm(parts[0][0], axis=1).max()
    return [(np.asarray(polygon, dtype=float) / scale, fill) for polygon, fill in parts]


_W = 0.3  # half-width of the cross arms
UNIT_SHAPES = {name: _unit(*parts) for name, parts in {
    "circle": [(_regular(48), True)],
    "square": [(_regular(4, phase=np.pi / 4), True)],
    "triangle": [(_regular(3), True)],
    "star": [(_star(), True)],
    "cross": [(np.array([(-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W), (_W, 1), (-_W, 1),
                         (-_W, _W), (-1, _W), (-1, -_W), (-_W, -_W)]), True)],
    "diamond": [(np.array([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]), True)],
    "ring": [(_regular(48), True), (_regular(48, 0.55), False)],
    "pentagon": [(_regular(5), True)],
    "heart": [(_heart(), True)],
    "hexagon": [(_regular(6), True)],
    "moon": [(_regular(48), True), (_regular(48, 0.85, centre=(0.45, 0)), False)],
    "arrow": [(np.array([(-1, -0.18), (0.2, -0.18), (0.2, -0.55), (1, 0), (0.2, 0.55), (0.2, 0.18),
                         (-1, 0.18)]), True)],
}.items()}
UPRIGHT = {"heart": np.pi / 6}  # shapes whose rotation is limited, to stay recognisable


def placed_polygons(name: str, centre: tuple[float, float], radius: float,
                    angle: float) -> list[tuple[np.ndarray, bool]]:
    """The shape's polygons in pixel coordinates (rotated by `angle`, scaled to `radius`, moved to `centre`),
    each with its fill, in drawing order: what `shape_mask` paints, for writers that store polygons."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return [(polygon @ rot.T * radius + np.asarray(centre), fill) for polygon, fill in UNIT_SHAPES[name]]


def shape_mask(name: str, centre: tuple[float, float], radius: float, angle: float,
               size: int | tuple[int, int]) -> np.ndarray:
    """Bool mask of one shape, rendered without anti-aliasing on a square canvas of side `size` or a
    (width, height) one."""
    canvas = Image.new("1", (size, size) if isinstance(size, int) else size, 0)
    draw = ImageDraw.Draw(canvas)
    for pts, fill in placed_polygons(name, centre, radius, angle):
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=int(fill))
    return np.array(canvas, dtype=bool)


# --- scenes -------------------------------------------------------------------------------------


@dataclass
class Instance:
    category: str
    colour: str
    full: np.ndarray  # the whole shape
    visible: np.ndarray  # what is left after later shapes are drawn over it


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted two-colour gradient in a random direction with mild noise, channels in BACKGROUND_RANGE."""
    grey = rng.uniform(115, 175, size=(2, 1))
    ends = grey + rng.uniform(-15, 15, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (xx * np.cos(theta) + yy * np.sin(theta))
    t = (t - t.min()) / (t.max() - t.min())
    img = ends[0] + t[..., None] * (ends[1] - ends[0]) + rng.normal(0, 4, size=(size, size, 3))
    return np.clip(np.rint(img), *BACKGROUND_RANGE).astype(np.uint8)


def _touches(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two masks overlap or are 4-adjacent (then they must differ in colour)."""
    grown = b.copy()
    grown[1:] |= b[:-1]
    grown[:-1] |= b[1:]
    grown[:, 1:] |= b[:, :-1]
    grown[:, :-1] |= b[:, 1:]
    return bool((a & grown).any())


def _propose(rng: np.random.Generator, categories: list[str], size: int) -> tuple[str, np.ndarray]:
    name = categories[rng.integers(len(categories))]
    radius = rng.uniform(*RADIUS_RANGE) * size
    centre = (rng.uniform(radius, size - 1 - radius), rng.uniform(radius, size - 1 - radius))
    limit = UPRIGHT.get(name, np.pi)
    return name, shape_mask(name, centre, radius, rng.uniform(-limit, limit), size)


def sample_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[Instance]]:
    """Draw an RGB image with 1-5 shapes of any class, in z-order, and their visible masks."""
    categories = [c.name for c in CLASSES]
    min_pixels = max(16, int(0.004 * size * size))
    target = int(rng.integers(1, MAX_INSTANCES + 1))
    instances: list[Instance] = []
    attempts = 0
    while len(instances) < target and (attempts < 10 * target or not instances):  # never an empty scene
        attempts += 1
        name, full = _propose(rng, categories, size)
        if full.sum() < min_pixels or any(
            (inst.visible & ~full).sum() < max(min_pixels, MIN_VISIBLE_FRACTION * inst.full.sum()) for inst in instances
        ):
            continue
        taken = {inst.colour for inst in instances if _touches(full, inst.full)}
        free = [c for c in PALETTE if c not in taken]
        for inst in instances:
            inst.visible &= ~full
        instances.append(Instance(name, free[rng.integers(len(free))], full, full.copy()))
    image = _background(rng, size)
    for inst in instances:
        image[inst.visible] = PALETTE[inst.colour]
    return image, instances


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One stream per image: an image does not change when the split gets bigger."""
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index])


# --- writers ------------------------------------------------------------------------------------


def vocabulary() -> dict[str, Any]:
    """The vocab.json content: categories with ids from 1, synonyms and base/novel split."""
    return {"categories": [{"id": i, "name": c.name, "synonyms": list(c.synonyms), "split": c.split}
                           for i, c in enumerate(CLASSES, start=1)]}


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=None, separators=(",", ":")) + "\n")


def _write_coco_split(out: Path, split: str, n: int, *, seed: int, size: int, annotate: set[str],
                      bar: tqdm) -> tuple[dict[str, Any], dict[str, int]]:
    """Write `out/<split>/*.png`; return the instances json content and counts."""
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    ids = {c.name: i for i, c in enumerate(CLASSES, start=1)}
    images, annotations, unannotated = [], [], 0
    _remove_stale(image_dir, "[0-9]*.png", [image_dir / f"{i + 1:012d}.png" for i in range(n)])
    for index in range(n):
        image_id = index + 1
        image, instances = sample_scene(_scene_rng(seed, split, index), size)
        file_name = f"{image_id:012d}.png"
        Image.fromarray(image).save(image_dir / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for inst in instances:
            if inst.category not in annotate:
                unannotated += 1
                continue
            encoded = rle.encode(inst.visible)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[inst.category],
                                "segmentation": encoded, "area": rle.area(encoded), "bbox": rle.bbox_xywh(encoded),
                                "iscrowd": 0})
        bar.update()
    categories = [{"id": ids[c.name], "name": c.name, "supercategory": "shape"} for c in CLASSES]
    info = {"description": "XPL shapes world", "seed": seed, "split": split, "image_dir": split,
            "annotated": sorted(annotate, key=ids.get)}
    content = {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    return content, {"images": n, "annotations": len(annotations), "unannotated_instances": unannotated}


def _caption_sample(seed: int, index: int, size: int, **rates: float) -> tuple[str, dict[str, bytes]]:
    """The key and three members (suffix -> bytes) of one img2dataset sample. The .json also carries a
    private `xpl` field (objects present with box and visible mask, every mention with its truth) so tests
    and the pseudo-label quality report can check captions and pseudo masks."""
    rng = _scene_rng(seed, "captions", index)
    image, instances = sample_scene(rng, size)
    masks = [rle.encode(i.visible) for i in instances]
    objects = [SceneObject(i.category, i.colour, tuple(rle.bbox_xywh(m))) for i, m in zip(instances, masks)]
    nouns = {c.name: (c.name, *c.synonyms) for c in CLASSES}
    caption, mentions = write_caption(objects, nouns, rng, **rates)
    key = f"{index:09d}"
    jpg = io.BytesIO()
    Image.fromarray(image).save(jpg, format="JPEG", quality=95)
    meta = {"url": f"shapes://seed{seed}/{key}.jpg", "caption": caption, "key": key, "status": "success",
            "error_message": None, "width": size, "height": size, "original_width": size, "original_height": size,
            "xpl": {"objects": [{"category": o.category, "colour": o.colour, "bbox": list(o.bbox), "segmentation": m}
                                for o, m in zip(objects, masks)],
                    "mentions": [asdict(m) for m in mentions]}}
    return key, {"jpg": jpg.getvalue(), "json": json.dumps(meta).encode(), "txt": caption.encode()}


def owned(folder: Path) -> bool:
    """Whether the generator may write into `folder`: it does not exist yet, is empty, or holds the marker
    of an earlier shapes world. It never writes (or deletes) beside other data."""
    if not folder.exists():
        return True
    return folder.is_dir() and ((folder / MARKER).is_file() or not any(folder.iterdir()))


def _claim(folder: Path) -> None:
    """Mark `folder` as a shapes world before anything else is written there; XPLError if it holds other data."""
    if not owned(folder):
        raise XPLError(f"{folder}: not empty and not a shapes world (no {MARKER} file): the shapes world is written "
                       "only into an empty folder or over an earlier shapes world, never beside other data")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by the xpl shapes world generator; it may replace or remove its files here\n")


def _remove_stale(folder: Path, pattern: str, keep: list[Path]) -> None:
    """Delete our own files left by an earlier, bigger run (stale shards would be read as part of this world);
    only ever called inside a folder `_claim` has checked."""
    for path in set(folder.glob(pattern)) - set(keep):
        path.unlink()


def _write_caption_shards(out: Path, n: int, shard_size: int, *, seed: int, size: int, bar: tqdm,
                          **rates: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    for shard, start in enumerate(range(0, n, shard_size)):
        with AtomicTar(out / f"{shard:05d}.tar") as tar:
            for index in range(start, min(start + shard_size, n)):
                tar.write(*_caption_sample(seed, index, size, **rates))
                bar.update()
        shards.append(tar.path)
    _remove_stale(out, "[0-9][0-9][0-9][0-9][0-9].tar", shards)
    return shards


def synthesize(out: Path, *, seed: int = 0, train_images: int = 200, caption_images: int = 400,
               val_images: int = 100, shard_size: int = 100, image_size: int = 128,
               false_mention_rate: float = 0.05, colour_mention_rate: float = 0.2,
               progress: bool = False) -> dict[str, Any]:
    """Write a shapes world under `out` (see the module docstring) and return its paths and counts.

    Each image holds 1-5 shapes of any of the 12 classes. A caption names a class present
    with probability 0.85, by its name (0.6) or a synonym, in the plural when there are
    several; a colour with probability `colour_mention_rate` when that class's instances
    share one; and, with probability `false_mention_rate`, one more class that is absent.
    """
    if image_size < 32 or shard_size < 1 or min(train_images, val_images, caption_images) < 0:
        raise XPLError(f"shapes world needs image_size >= 32 and shard_size >= 1 and non-negative counts, "
                       f"got image_size={image_size}, shard_size={shard_size}")
    out = Path(out)
    _claim(out)
    coco = out / "coco"
    _write_json(out / "vocab.json", vocabulary())
    base = {c.name for c in CLASSES if c.split == "base"}
    with tqdm(total=train_images + val_images + caption_images, disable=not progress, desc="shapes world") as bar:
        train_json, train = _write_coco_split(coco, "train", train_images, seed=seed, size=image_size,
                                              annotate=base, bar=bar)
        val_json, val = _write_coco_split(coco, "val", val_images, seed=seed, size=image_size,
                                          annotate={c.name for c in CLASSES}, bar=bar)
        _write_json(coco / "instances_train_base.json", train_json)
        _write_json(coco / "instances_val.json", val_json)
        shards = _write_caption_shards(out / "captions", caption_images, shard_size, seed=seed, size=image_size,
                                       bar=bar, false_mention_rate=false_mention_rate,
                                       colour_mention_rate=colour_mention_rate)
    return {
        "vocab": str(out / "vocab.json"),
        "train_json": str(coco / "instances_train_base.json"),
        "val_json": str(coco / "instances_val.json"),
        "caption_shards": [str(p) for p in shards],
        "train": train,
        "val": val,
        "captions": {"images": caption_images, "shards": len(shards)},
    }
