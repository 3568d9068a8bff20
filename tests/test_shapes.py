"""The shapes world generator: determinism, exact masks, base/novel split, caption shards."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from pycocotools.coco import COCO

from xpl.data import rle
from xpl.data.shape_captions import SceneObject, plural, relation
from xpl.data.shapes import CLASSES, MARKER, MIN_VISIBLE_FRACTION, PALETTE, sample_scene, shape_mask, synthesize
from xpl.errors import XPLError

SIZE = 64
WORLD = dict(train_images=24, val_images=16, caption_images=60, shard_size=25, image_size=SIZE)
NOVEL = {"heart", "hexagon", "moon", "arrow"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return synthesize(tmp_path_factory.mktemp("world"), seed=0, **WORLD)


@pytest.fixture(scope="module")
def caption_world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Many caption images (small ones) to measure mention rates."""
    return synthesize(tmp_path_factory.mktemp("captions"), seed=1, train_images=0, val_images=0,
                      caption_images=500, shard_size=250, image_size=48, false_mention_rate=0.2,
                      colour_mention_rate=0.2)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _palette_pixels(image: np.ndarray) -> np.ndarray:
    colours = np.array(list(PALETTE.values()), dtype=np.uint8)
    return (image[:, :, None, :] == colours[None, None]).all(-1).any(-1)


def _samples(shards: list[str]) -> list[dict]:
    return list(wds.WebDataset(shards, shardshuffle=False, empty_check=False))


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path: Path) -> None:
    small = dict(train_images=6, val_images=4, caption_images=10, shard_size=4, image_size=48)
    synthesize(tmp_path / "a", seed=3, **small)
    synthesize(tmp_path / "b", seed=3, **small)
    synthesize(tmp_path / "c", seed=4, **small)
    a, b, c = (_digests(tmp_path / x) for x in "abc")
    assert len(a) == 1 + 1 + 2 + 6 + 4 + 3  # marker, vocab, two jsons, pngs, 3 shards
    assert a == b
    assert a.keys() == c.keys()
    assert a["vocab.json"] == c["vocab.json"]
    different = {name for name in a if a[name] != c[name]}
    assert {"coco/instances_train_base.json", "coco/instances_val.json", "captions/00000.tar"} <= different


def test_vocab_lists_base_and_novel_classes_with_synonyms(world: dict) -> None:
    vocab = json.loads(Path(world["vocab"]).read_text())["categories"]
    assert [c["id"] for c in vocab] == list(range(1, 13))
    assert {c["name"] for c in vocab if c["split"] == "novel"} == NOVEL
    assert [c["name"] for c in vocab if c["split"] == "base"] == [
        "circle", "square", "triangle", "star", "cross", "diamond", "ring", "pentagon"]
    by_name = {c["name"]: c for c in vocab}
    assert by_name["moon"]["synonyms"] == ["crescent", "crescent moon"]
    assert by_name["cross"]["synonyms"] == ["plus sign"]
    assert set(vocab[0]) == {"id", "name", "synonyms", "split"}


def test_coco_json_layout(world: dict) -> None:
    for json_path, split, count in ((world["train_json"], "train", 24), (world["val_json"], "val", 16)):
        content = json.loads(Path(json_path).read_text())
        assert content["info"]["seed"] == 0 and content["info"]["image_dir"] == split
        assert [img["id"] for img in content["images"]] == list(range(1, count + 1))
        assert content["images"][0] == {"id": 1, "file_name": "000000000001.png", "width": SIZE, "height": SIZE}
        assert len(content["categories"]) == 12
        for img in content["images"]:
            assert (Path(json_path).parent / split / img["file_name"]).is_file()
        ann = content["annotations"][0]
        assert set(ann) == {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
        assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        assert [a["id"] for a in content["annotations"]] == list(range(1, len(content["annotations"]) + 1))


def test_val_masks_are_exactly_the_painted_pixels(world: dict) -> None:
    coco = COCO(world["val_json"])
    image_dir = Path(world["val_json"]).parent / "val"
    for image_id in coco.getImgIds():
        image = np.array(Image.open(image_dir / coco.imgs[image_id]["file_name"]))
        union = np.zeros(image.shape[:2], dtype=bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            mask = coco.annToMask(ann).astype(bool)
            assert np.array_equal(mask, rle.decode(ann["segmentation"], SIZE, SIZE))
            assert not (mask & union).any(), "masks of one image must be disjoint"
            union |= mask
            colours = np.unique(image[mask], axis=0)
            assert len(colours) == 1 and tuple(colours[0]) in PALETTE.values()
            ys, xs = np.nonzero(mask)
            assert ann["area"] == mask.sum()
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert np.array_equal(union, _palette_pixels(image))


def test_train_annotates_base_only_while_novel_objects_are_in_the_pixels(world: dict) -> None:
    train, val = COCO(world["train_json"]), COCO(world["val_json"])
    novel_ids = {c["id"] for c in train.loadCats(train.getCatIds()) if c["name"] in NOVEL}
    assert {a["category_id"] for a in train.anns.values()}.isdisjoint(novel_ids)
    assert {a["category_id"] for a in val.anns.values()} & novel_ids
    image_dir = Path(world["train_json"]).parent / "train"
    unlabeled_images = 0
    for image_id in train.getImgIds():
        image = np.array(Image.open(image_dir / train.imgs[image_id]["file_name"]))
        annotated = np.zeros(image.shape[:2], dtype=bool)
        for ann in train.loadAnns(train.getAnnIds(imgIds=image_id)):
            annotated |= train.annToMask(ann).astype(bool)
        assert not (annotated & ~_palette_pixels(image)).any()
        unlabeled_images += bool((_palette_pixels(image) & ~annotated).any())
    assert unlabeled_images > 0
    assert world["train"]["unannotated_instances"] > 0


def test_shards_have_the_img2dataset_layout(world: dict) -> None:
    shards = world["caption_shards"]
    assert [Path(s).name for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(shards[1]) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["000000025.jpg", "000000025.json", "000000025.txt"]
    assert len(members) == 3 * 25 and {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}
    samples = _samples(shards)
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(60)]
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["caption"] == sample["txt"].decode() and meta["key"] == sample["__key__"]
        assert meta["status"] == "success" and (meta["width"], meta["height"]) == (SIZE, SIZE)
        assert meta["url"].endswith(sample["__key__"] + ".jpg")
        assert Image.open(io.BytesIO(sample["jpg"])).size == (SIZE, SIZE)


def _forms(category: str) -> set[str]:
    cls = next(c for c in CLASSES if c.name == category)
    nouns = {cls.name, *cls.synonyms}
    return nouns | {plural(n) for n in nouns}


def test_captions_name_objects_with_synonyms_plurals_colours_and_false_mentions(caption_world: dict) -> None:
    samples = _samples(caption_world["caption_shards"])
    assert len(samples) == 500
    mentions, nouns_used, false_captions = [], set(), 0
    for sample in samples:
        caption, meta = sample["txt"].decode(), json.loads(sample["json"])["xpl"]
        present = {o["category"] for o in meta["objects"]}
        assert 1 <= len(meta["objects"]) <= 5
        false_captions += any(not m["present"] for m in meta["mentions"])
        for m in meta["mentions"]:
            assert m["text"] in caption.lower()
            assert re.search(rf"\b{m['noun'] if m['count'] == 1 else plural(m['noun'])}\b", m["text"])
            assert m["noun"] in _forms(m["category"])
            assert (m["category"] in present) == m["present"]
            nouns_used.add(m["noun"] if m["count"] == 1 else plural(m["noun"]))
            mentions.append(m)
    names = {c.name for c in CLASSES}
    assert nouns_used & {"crescent", "plus sign", "rhombus", "donut", "disc"}  # synonyms
    assert nouns_used & {"stars", "crosses", "circles", "triangles"}  # plurals
    assert nouns_used & names & NOVEL
    assert abs(false_captions / 500 - 0.2) < 0.06
    coloured = sum(m["colour"] is not None for m in mentions if m["present"]) / sum(m["present"] for m in mentions)
    assert 0.1 < coloured < 0.25
    assert sum(" next to " in s["txt"].decode() or " above " in s["txt"].decode() for s in samples) > 20


def test_shape_masks_fit_their_disc() -> None:
    for cls in CLASSES:
        mask = shape_mask(cls.name, (32, 32), 20, 0.7, 64)
        ys, xs = np.nonzero(mask)
        assert mask.sum() > 100, cls.name
        assert ((xs - 32) ** 2 + (ys - 32) ** 2).max() <= 21.5**2, cls.name  # edge pixels are filled
    assert abs(shape_mask("circle", (32, 32), 20, 0, 64).sum() / (np.pi * 400) - 1) < 0.05
    assert not shape_mask("ring", (32, 32), 20, 0, 64)[32, 32]


def test_scenes_keep_instances_visible_and_touching_colours_distinct() -> None:
    for index in range(60):
        _, instances = sample_scene(np.random.default_rng(index), 32 if index % 2 else 64)
        assert 1 <= len(instances) <= 5
        for i, a in enumerate(instances):
            assert a.visible.sum() >= MIN_VISIBLE_FRACTION * a.full.sum()
            for b in instances[i + 1:]:
                if a.full[b.full].any():
                    assert a.colour != b.colour


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(XPLError, match="image_size >= 32"):
        synthesize(tmp_path, image_size=16)


def test_a_smaller_rerun_leaves_no_stale_shards_or_images(tmp_path: Path) -> None:
    synthesize(tmp_path, train_images=5, val_images=0, caption_images=9, shard_size=3, image_size=32)
    synthesize(tmp_path, train_images=2, val_images=0, caption_images=4, shard_size=3, image_size=32)
    assert sorted(p.name for p in (tmp_path / "captions").iterdir()) == ["00000.tar", "00001.tar"]
    assert len(list((tmp_path / "coco" / "train").iterdir())) == 2


def test_never_writes_into_a_folder_it_does_not_own(tmp_path: Path) -> None:
    """Real data under the same root must survive: no write, no stale-shard clean-up, a clear error."""
    foreign = tmp_path / "captions" / "00005.tar"
    foreign.parent.mkdir()
    foreign.write_bytes(b"someone else's shard")
    with pytest.raises(XPLError, match="not a shapes world"):
        synthesize(tmp_path, train_images=1, val_images=0, caption_images=3, shard_size=3, image_size=32)
    assert foreign.read_bytes() == b"someone else's shard"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["00005.tar", "captions"]
    synthesize(tmp_path / "fresh", train_images=1, val_images=0, caption_images=3, shard_size=3, image_size=32)
    assert (tmp_path / "fresh" / MARKER).is_file()


def test_plural_and_relation() -> None:
    assert [plural(w) for w in ("cross", "box", "star", "plus sign", "annulus", "crescent moon")] == [
        "crosses", "boxes", "stars", "plus signs", "annuli", "crescent moons"]
    left = SceneObject("star", "red", (0, 20, 10, 10))
    right = SceneObject("moon", "blue", (50, 20, 10, 10))
    below = SceneObject("ring", "blue", (0, 50, 10, 10))
    near = SceneObject("heart", "pink", (8, 22, 10, 10))
    assert relation(left, right) == "on the left of" and relation(right, left) == "on the right of"
    assert relation(left, below) == "above" and relation(below, left) == "below"
    assert relation(left, near) == "next to"
