"""Miniature datasets in the real presets' on-disk layouts (`xpl synth --layout coco|oi`).

`write_miniature(out, "coco")` writes what `configs/coco_ovis.yaml` reads under `data.root`,
`write_miniature(out, "oi")` what `configs/oi_cc.yaml` reads; both add `bert/`, a random-weight BERT
folder for `text.model` (`xpl.data.random_bert`), and return a summary with the `key=value` overrides
that run the preset on the miniature. The same arguments give byte-identical files.

Images are JPEGs of flat-colour shapes (`xpl.data.shapes` geometry) standing for a few classes, on a
blotchy background, at the sizes the real sets have. Shapes never overlap, so every annotation covers
exactly the pixels painted for it. The awkward cases of the real data are there on purpose:

- coco: COCO's 80 categories with their ids and supercategories; polygon segmentations (the image is
  painted from the polygon's own rasterisation); in each split one image without any annotation (only
  classes the split does not annotate: train novel ones and a stop sign, val a stop sign, which is
  outside the 65), one grayscale JPEG, one JPEG stored rotated with EXIF Orientation=6 whose json
  width/height and annotations are those of the image as displayed, and one crowd of books annotated
  once with `iscrowd: 1` and an uncompressed RLE, as COCO stores crowds. Captions: five per image, naming
  objects by their COCO names; the caption shards are what `xpl make-shards` makes of them.
- oi: a vocabulary of Open Images classes (capitalised names, synonyms, base|novel), instance json with
  compressed RLE masks (shapes with holes too), 16-hex-digit file names, one image without annotations and
  one grayscale image per split, and Conceptual Captions shards as img2dataset writes them.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from xpl.data import rle
from xpl.data.make_shards import make_coco_caption_shards, write_shard
from xpl.data.random_bert import write_random_bert
from xpl.data.shape_captions import SceneObject, write_caption
from xpl.data.shapes import PALETTE, UPRIGHT, placed_polygons, shape_mask
from xpl.errors import XPLError
from xpl.vocab import Vocabulary

LAYOUTS = ("coco", "oi")
MARKER = ".xpl-miniature"  # written into every folder a miniature owns; it is written only there
ENTRIES = {  # what each layout writes under its root (all of them are removed before a miniature is rewritten)
    "coco": ("annotations", "train2017", "val2017", "caption_shards", "bert"),
    "oi": ("vocab_oi.json", "annotations", "train", "validation", "captions", "bert"),
}
COCO_VOCAB = Path(__file__).resolve().parents[2] / "configs" / "vocab" / "coco_48_17.json"

COCO_CATEGORIES = (  # COCO 2017's 80 categories: (id, name, supercategory)
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"), (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"), (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
    (9, "boat", "vehicle"), (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"), (34, "frisbee", "sports"),
    (35, "skis", "sports"), (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"),
    (54, "sandwich", "food"), (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"), (86, "vase", "indoor"),
    (87, "scissors", "indoor"), (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)
# The COCO classes drawn, each as a one-polygon shape (COCO polygons have no holes).
COCO_THINGS = {"clock": "circle", "book": "square", "pizza": "triangle", "kite": "diamond", "frisbee": "pentagon",
               "dog": "heart", "umbrella": "star", "cake": "hexagon", "tie": "arrow", "stop sign": "cross"}
CROWD_CLASS = "book"  # a shelf of books: annotated once, as a crowd
OI_CLASSES = (  # Open Images names (capitalised, as OI writes them), synonyms, split, the shape drawn
    ("Clock", ("wall clock",), "base", "circle"), ("Book", (), "base", "square"),
    ("Pizza", (), "base", "triangle"), ("Kite", (), "base", "diamond"),
    ("Christmas tree", ("fir tree",), "base", "star"), ("Doughnut", ("donut",), "base", "ring"),
    ("Dog", ("pup",), "novel", "heart"), ("Hot dog", ("frankfurter",), "novel", "arrow"),
    ("Cake", ("birthday cake",), "novel", "hexagon"), ("Umbrella", ("parasol",), "novel", "moon"),
)
OI_THINGS = {name: shape for name, _, _, shape in OI_CLASSES}

# Image sizes (width, height) as the real sets have them.
COCO_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375), (427, 640), (640, 512))
OI_SIZES = ((1024, 768), (1024, 683), (768, 1024), (1024, 576), (683, 1024))
CC_SIZES = ((500, 375), (640, 427), (400, 600), (512, 512), (1024, 683))
PORTRAIT = (480, 640)  # the EXIF image as displayed; stored as 640x480
EXIF_ORIENTATION, ROTATE_CLOCKWISE = 0x0112, 6  # the tag, and its value "rotate 90 degrees clockwise to display"
COCO_CASES = ("unannotated", "grayscale", "exif", "crowd")  # image i < 4 of each coco split has case i
OI_CASES = ("unannotated", "grayscale")
STREAMS = {"coco/train": 0, "coco/val": 1, "oi/train": 2, "oi/val": 3, "cc": 4, "coco/ids": 5, "oi/names": 6,
           "coco/captions": 7}
MAX_OBJECTS = 4  # at most four of a class, so a caption's number words suffice ("four clocks")
JPEG_QUALITY = 90
CAPTIONS_PER_IMAGE = 5
COLOUR_MENTION_RATE = 0.3
IMG2DATASET_KEY_DIGITS = 4  # img2dataset keys: shard number, then the index in the shard in 4 digits
COCO_INFO = {"description": "XPL miniature of COCO 2017 (written by `xpl synth --layout coco`)", "version": "1.0",
             "year": 2017, "contributor": "xpl", "date_created": "2017/09/01"}
COCO_LICENSES = [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}]


@dataclass
class Drawn:
    """One painted object: its class, colour name and pixels, and, when drawn as one polygon, the COCO
    polygon (flat x, y list) they are the rasterisation of. `crowd` objects are annotated together, once."""

    category: str
    colour: str
    mask: np.ndarray
    polygon: Optional[list[float]] = None
    crowd: bool = False

    def caption_object(self) -> SceneObject:
        return SceneObject(self.category, self.colour, tuple(rle.bbox_xywh(rle.encode(self.mask))))


@dataclass
class Scene:
    """One image as drawn: its size as displayed, its objects and its awkward case ('' for none)."""

    width: int
    height: int
    objects: list[Drawn] = field(default_factory=list)
    case: str = ""


def _rng(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    """A random stream of its own for each image (and for image ids and names), so that an image does not
    change when a split gets bigger."""
    return np.random.default_rng([seed, STREAMS[stream], index])


def _place(rng: np.random.Generator, shape: str, scene: Scene, radius: float, occupied: np.ndarray, *,
           polygons: bool, near: Optional[tuple[float, float]] = None
           ) -> Optional[tuple[np.ndarray, Optional[list[float]]]]:
    """A shape of `radius` px at a random spot (around `near` when given): its mask and, with `polygons`, its
    COCO polygon (rounded to 2 decimals as COCO stores them; the mask is then pycocotools' rasterisation of
    it), or None when it would overlap `occupied` or leave the image."""
    w, h = scene.width, scene.height
    if near is None:
        centre = (rng.uniform(radius, w - 1 - radius), rng.uniform(radius, h - 1 - radius))
    else:
        centre = (near[0] + rng.uniform(-3, 3) * radius, near[1] + rng.uniform(-3, 3) * radius)
        if not (radius <= centre[0] <= w - 1 - radius and radius <= centre[1] <= h - 1 - radius):
            return None
    limit = UPRIGHT.get(shape, np.pi)
    angle = rng.uniform(-limit, limit)
    if polygons:
        ((points, _),) = placed_polygons(shape, centre, radius, angle)
        polygon = [round(float(v), 2) for v in points.ravel()]
        mask = rle.decode([polygon], h, w)
    else:
        polygon, mask = None, shape_mask(shape, centre, radius, angle, (w, h))
    return None if (mask & occupied).any() or not mask.any() else (mask, polygon)


def _add(rng: np.random.Generator, scene: Scene, things: dict[str, str], classes: list[str], count: int,
         radius: tuple[float, float], *, polygons: bool, crowd: bool = False) -> None:
    """Place up to `count` objects of `classes` (random class, colour, size), each clear of those there."""
    occupied = np.zeros((scene.height, scene.width), dtype=bool)
    for obj in scene.objects:
        occupied |= obj.mask
    side = min(scene.width, scene.height)
    near = (rng.uniform(0.3, 0.7) * scene.width, rng.uniform(0.3, 0.7) * scene.height) if crowd else None
    placed = 0
    for _ in range(15 * count):
        if placed == count:
            break
        name = classes[rng.integers(len(classes))]
        found = _place(rng, things[name], scene, rng.uniform(*radius) * side, occupied, polygons=polygons, near=near)
        colour = list(PALETTE)[rng.integers(len(PALETTE))]
        if found is not None:
            mask, polygon = found
            scene.objects.append(Drawn(name, colour, mask, polygon, crowd))
            occupied |= mask
            placed += 1


def _draw_scene(rng: np.random.Generator, size: tuple[int, int], things: dict[str, str], classes: list[str], *,
                case: str = "", polygons: bool) -> Scene:
    """A scene of 1-4 objects of `classes` (a crowd of four books first in the crowd case); empty only when
    `classes` is."""
    scene = Scene(*size, case=case)
    if not classes:
        return scene
    if case == "crowd":
        _add(rng, scene, things, [CROWD_CLASS], MAX_OBJECTS, (0.03, 0.045), polygons=polygons, crowd=True)
        classes = [c for c in classes if c != CROWD_CLASS]
    while not scene.objects or len(scene.objects) == sum(o.crowd for o in scene.objects):
        _add(rng, scene, things, classes, int(rng.integers(1, MAX_OBJECTS + 1)), (0.08, 0.18), polygons=polygons)
    return scene


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A muted, blotchy texture: a coarse grid of tinted greys enlarged smoothly, plus fine grain."""
    grid = rng.uniform(110, 180, size=(4, 5, 1)) + rng.uniform(-20, 20, size=(4, 5, 3))
    coarse = Image.fromarray(grid.astype(np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    grain = rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _jpeg(rng: np.random.Generator, scene: Scene) -> bytes:
    """The scene painted and encoded as a JPEG: grayscale (mode L) in the grayscale case; in the exif case
    stored turned a quarter left with EXIF Orientation=6, so it displays (and is annotated) upright."""
    pixels = _background(rng, scene.width, scene.height)
    for obj in scene.objects:
        pixels[obj.mask] = PALETTE[obj.colour]
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    if scene.case == "grayscale":
        image.convert("L").save(out, "JPEG", quality=JPEG_QUALITY)
    elif scene.case == "exif":
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATE_CLOCKWISE
        image.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    else:
        image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _captions(rng: np.random.Generator, scene: Scene, nouns: dict[str, tuple[str, ...]], n: int) -> list[str]:
    """`n` captions of a scene, each naming some of its objects (`xpl.data.shape_captions`), none absent."""
    objects = [obj.caption_object() for obj in scene.objects]
    return [write_caption(objects, nouns, rng, colour_mention_rate=COLOUR_MENTION_RATE, false_mention_rate=0.0)[0]
            for _ in range(n)]


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray,
                segmentation: Any, iscrowd: int) -> dict[str, Any]:
    """A COCO instance annotation of `mask` (area and box are the mask's), in COCO's key order."""
    compressed = rle.encode(mask)
    return {"segmentation": segmentation, "area": float(rle.area(compressed)), "iscrowd": iscrowd,
            "image_id": image_id, "bbox": rle.bbox_xywh(compressed), "category_id": category_id, "id": ann_id}


def _coco_annotations(scene: Scene, image_id: int, ids: dict[str, int], first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of the scene's objects of classes in `ids`: polygons, and the crowd once, as an
    uncompressed RLE of its members' union with a crowd id as COCO numbers them (9001 + image id)."""
    anns: list[dict[str, Any]] = []
    crowd = [o for o in scene.objects if o.crowd and o.category in ids]
    for obj in scene.objects:
        if obj.category in ids and not obj.crowd:
            anns.append(_annotation(first_id + len(anns), image_id, ids[obj.category], obj.mask, [obj.polygon], 0))
    if crowd:
        union = np.logical_or.reduce([o.mask for o in crowd])
        anns.append(_annotation(int(f"9001{image_id:08d}"), image_id, ids[crowd[0].category], union,
                                rle.encode_uncompressed(union), 1))
    return anns


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, separators=(",", ":")) + "\n")


def _coco_split(out: Path, split: str, image_ids: list[int], annotate: set[str], seed: int) -> tuple[list, list]:
    """Draw and save `<split>2017/*.jpg`; return their COCO image entries and scenes."""
    folder = out / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, scenes = [], []
    for index, image_id in enumerate(image_ids):
        rng = _rng(seed, f"coco/{split}", index)
        case = COCO_CASES[index] if index < len(COCO_CASES) else ""
        size = PORTRAIT if case == "exif" else COCO_SIZES[rng.integers(len(COCO_SIZES))]
        # the unannotated image holds only classes the split does not annotate, the exif one only classes it
        # does (its annotations then show which way up it is annotated)
        drawable = {"unannotated": sorted(set(COCO_THINGS) - annotate), "exif": sorted(set(COCO_THINGS) & annotate)}
        scene = _draw_scene(rng, size, COCO_THINGS, drawable.get(case, list(COCO_THINGS)), case=case, polygons=True)
        file_name = f"{image_id:012d}.jpg"
        (folder / file_name).write_bytes(_jpeg(rng, scene))
        images.append({"license": 4, "file_name": file_name,
                       "coco_url": f"http://images.cocodataset.org/{split}2017/{file_name}",
                       "height": scene.height, "width": scene.width, "date_captured": "2013-11-14 11:18:45",
                       "id": image_id})
        scenes.append(scene)
    return images, scenes


def _instances(images: list[dict], scenes: list[Scene], annotate: set[str]) -> dict[str, Any]:
    """A COCO instances json of `images` with annotations of the `annotate` classes only."""
    ids = {name: cid for cid, name, _ in COCO_CATEGORIES if name in annotate}
    annotations: list[dict[str, Any]] = []
    for image, scene in zip(images, scenes):
        annotations += _coco_annotations(scene, image["id"], ids, len(annotations) + 1)
    categories = [{"supercategory": sup, "id": cid, "name": name} for cid, name, sup in COCO_CATEGORIES]
    return {"info": COCO_INFO, "licenses": COCO_LICENSES, "images": images, "annotations": annotations,
            "categories": categories}


def _coco_image_ids(seed: int, n: int) -> list[int]:
    """`n` distinct COCO-like image ids: sparse, up to COCO's largest."""
    return [int(i) for i in _rng(seed, "coco/ids").choice(np.arange(1, 581930), size=n, replace=False)]


def _write_coco(out: Path, *, seed: int, images: int, val_images: int, caption_images: int, shard_size: int,
                vocab: Path) -> dict[str, Any]:
    """The coco layout (module docstring); the 48/17 split is `vocab`'s, as the preset reads it."""
    vocabulary = Vocabulary.load(vocab)
    base, every = {c.name for c in vocabulary.split("base")}, set(vocabulary.names)
    n_train = max(images, caption_images)
    ids = _coco_image_ids(seed, n_train + val_images)
    train_images, train_scenes = _coco_split(out, "train", sorted(ids[:n_train]), base, seed)
    val_entries, val_scenes = _coco_split(out, "val", sorted(ids[n_train:]), every, seed)
    train = _instances(train_images[:images], train_scenes[:images], base)
    val = _instances(val_entries, val_scenes, every)
    _write_json(out / "annotations" / "instances_train2017_base48.json", train)
    _write_json(out / "annotations" / "instances_val2017_65.json", val)
    nouns = {name: (name,) for name in COCO_THINGS}
    texts = [(image["id"], text) for index, image in enumerate(train_images[:caption_images])
             for text in _captions(_rng(seed, "coco/captions", index), train_scenes[index], nouns, CAPTIONS_PER_IMAGE)]
    captions = [{"image_id": image_id, "id": n, "caption": text} for n, (image_id, text) in enumerate(texts, start=1)]
    _write_json(out / "annotations" / "captions_train2017.json",
                {"info": COCO_INFO, "licenses": COCO_LICENSES, "images": train_images[:caption_images],
                 "annotations": captions})
    shards = make_coco_caption_shards(out / "train2017", out / "annotations" / "captions_train2017.json",
                                      out / "caption_shards", shard_size=shard_size)
    names = [n for c in vocabulary.categories for n in (c.name, *c.synonyms)] + [n for _, n, _ in COCO_CATEGORIES]
    write_random_bert(out / "bert", names + [c["caption"] for c in captions], seed=seed)
    return {"preset": "configs/coco_ovis.yaml", "overrides": [f"data.root={out}", f"text.model={out / 'bert'}"],
            "train": _counts(train), "val": _counts(val),
            "captions": {"images": shards["samples"], "shards": shards["shards"], "pattern": shards["pattern"]}}


def _counts(instances: dict[str, Any]) -> dict[str, int]:
    annotated = {a["image_id"] for a in instances["annotations"]}
    return {"images": len(instances["images"]), "annotations": len(instances["annotations"]),
            "crowd": sum(a["iscrowd"] for a in instances["annotations"]),
            "unannotated_images": sum(i["id"] not in annotated for i in instances["images"])}


def oi_vocabulary() -> dict[str, Any]:
    """The content of `vocab_oi.json` (what `Vocabulary.load` reads): ids from 1 in `OI_CLASSES` order."""
    return {"categories": [{"id": i, "name": name, "synonyms": list(synonyms), "split": split}
                           for i, (name, synonyms, split, _) in enumerate(OI_CLASSES, start=1)]}


def _oi_split(out: Path, split: str, folder: str, n: int, annotate: set[str], seed: int) -> dict[str, Any]:
    """Draw and save `<folder>/<16 hex digits>.jpg`; return the split's COCO json (compressed RLE masks)."""
    ids = {c["name"]: c["id"] for c in oi_vocabulary()["categories"]}
    names = _rng(seed, "oi/names", STREAMS[f"oi/{split}"])
    (out / folder).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(n):
        rng = _rng(seed, f"oi/{split}", index)
        case = OI_CASES[index] if index < len(OI_CASES) else ""
        classes = sorted(set(OI_THINGS) - annotate) if case == "unannotated" else list(OI_THINGS)
        scene = _draw_scene(rng, OI_SIZES[rng.integers(len(OI_SIZES))], OI_THINGS, classes, case=case, polygons=False)
        file_name = f"{names.bytes(8).hex()}.jpg"
        (out / folder / file_name).write_bytes(_jpeg(rng, scene))
        images.append({"id": index + 1, "file_name": file_name, "width": scene.width, "height": scene.height})
        for obj in scene.objects:
            if obj.category in annotate:
                annotations.append(_annotation(len(annotations) + 1, index + 1, ids[obj.category], obj.mask,
                                               rle.encode(obj.mask), 0))
    categories = [{"id": ids[name], "name": name, "supercategory": "entity"} for name in ids]
    return {"info": {"description": "XPL miniature of Open Images instance masks in COCO format"}, "licenses": [],
            "images": images, "annotations": annotations, "categories": categories}


def _cc_sample(seed: int, index: int, key: str, nouns: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """One Conceptual Captions sample: a lowercase caption without a full stop, as CC's are."""
    rng = _rng(seed, "cc", index)
    scene = _draw_scene(rng, CC_SIZES[rng.integers(len(CC_SIZES))], OI_THINGS, list(OI_THINGS), polygons=False)
    caption = _captions(rng, scene, nouns, 1)[0].lower().rstrip(".")
    meta = {"url": f"https://miniature.invalid/cc/{key}.jpg", "caption": caption, "captions": [caption],
            "key": key, "status": "success", "error_message": None, "width": scene.width, "height": scene.height,
            "original_width": scene.width, "original_height": scene.height}
    return {"key": key, "suffix": "jpg", "image": _jpeg(rng, scene), "meta": meta}


def _write_cc(out: Path, n: int, shard_size: int, seed: int) -> list[str]:
    """`captions/NNNNN.tar` (+ `.parquet`, `_stats.json`) as img2dataset writes them; return the captions."""
    nouns = {name: (name.lower(), *synonyms) for name, synonyms, _, _ in OI_CLASSES}
    captions = []
    for shard, start in enumerate(range(0, n, shard_size)):
        samples = [_cc_sample(seed, i, f"{shard:05d}{i - start:0{IMG2DATASET_KEY_DIGITS}d}", nouns)
                   for i in range(start, min(start + shard_size, n))]
        write_shard(out, shard, samples)
        captions += [s["meta"]["caption"] for s in samples]
    return captions


def _write_oi(out: Path, *, seed: int, images: int, val_images: int, caption_images: int,
              shard_size: int) -> dict[str, Any]:
    """The oi layout (module docstring)."""
    vocab = oi_vocabulary()
    _write_json(out / "vocab_oi.json", vocab)
    base = {c["name"] for c in vocab["categories"] if c["split"] == "base"}
    train = _oi_split(out, "train", "train", images, base, seed)
    val = _oi_split(out, "val", "validation", val_images, {c["name"] for c in vocab["categories"]}, seed)
    _write_json(out / "annotations" / "oi_train_base_masks.json", train)
    _write_json(out / "annotations" / "oi_val_masks.json", val)
    captions = _write_cc(out / "captions", caption_images, shard_size, seed)
    names = [n for c in vocab["categories"] for n in (c["name"], *c["synonyms"])]
    write_random_bert(out / "bert", names + captions, seed=seed)
    last = -(-caption_images // shard_size) - 1
    pattern = f"{out / 'captions'}/{{00000..{last:05d}}}.tar"
    return {"preset": "configs/oi_cc.yaml",
            "overrides": [f"data.root={out}", f"text.model={out / 'bert'}", f"data.captions=file://{pattern}"],
            "train": _counts(train), "val": _counts(val),
            "captions": {"images": caption_images, "shards": last + 1, "pattern": pattern, "url": f"file://{pattern}"}}


def _claim(out: Path) -> None:
    """Write only into a new or empty folder, or over an earlier miniature (its marker file), whose entries
    are removed first so that no image or shard of a bigger earlier run stays behind."""
    if out.exists() and not (out.is_dir() and ((out / MARKER).is_file() or not any(out.iterdir()))):
        raise XPLError(f"{out}: not an empty folder and not a miniature (no {MARKER} file): a miniature is written "
                       "only into an empty folder or over an earlier miniature, never beside other data")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `xpl synth --layout coco|oi`; it may replace or remove its files here\n")
    for name in {entry for entries in ENTRIES.values() for entry in entries}:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_miniature(out: Path, layout: str, *, seed: int = 0, images: int = 12, val_images: int = 6,
                    caption_images: int = 24, shard_size: int = 12, coco_vocab: Path = COCO_VOCAB) -> dict[str, Any]:
    """Write the `layout` miniature ("coco" or "oi", see the module docstring) under `out`: `images` train
    and `val_images` val images, `caption_images` caption images in shards of `shard_size` (coco: the
    first train2017 images, as COCO captions its train images) and `bert/`. Return a summary: counts, the
    preset and the overrides that run it on the miniature (`data.root`, `text.model`, oi: `data.captions`)."""
    cases = {"coco": len(COCO_CASES), "oi": len(OI_CASES)}
    if layout not in LAYOUTS:
        raise XPLError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if min(images, val_images) < cases[layout] or caption_images < 1 or shard_size < 1:
        raise XPLError(f"{layout} miniature needs images and val_images >= {cases[layout]} (one per awkward case) "
                       f"and caption_images, shard_size >= 1; got images={images}, val_images={val_images}, "
                       f"caption_images={caption_images}, shard_size={shard_size}")
    out = Path(out).resolve()
    _claim(out)
    sizes = {"seed": seed, "images": images, "val_images": val_images, "caption_images": caption_images,
             "shard_size": shard_size}
    summary = _write_coco(out, vocab=coco_vocab, **sizes) if layout == "coco" else _write_oi(out, **sizes)
    command = f"xpl demo --config {summary['preset']} " + " ".join(summary["overrides"])
    return {"layout": layout, "root": str(out), **summary, "command": command, "bert": str(out / "bert")}
