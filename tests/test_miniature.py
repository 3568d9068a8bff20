"""Miniatures of the real presets' data (`xpl synth --layout coco|oi`): the files where the presets read them,
the awkward cases of real data (polygons, crowds as uncompressed RLE, grayscale, EXIF rotation, no
annotation, capitalised names), what our readers make of them, and the random-weight BERT folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from xpl.cli import main
from xpl.config import load_config
from xpl.data import rle
from xpl.data.captions import expand_urls, iter_caption_samples
from xpl.data.coco import CocoInstances
from xpl.data.miniature import COCO_CASES, COCO_THINGS, MARKER, OI_CASES, write_miniature
from xpl.data.random_bert import SPECIAL_TOKENS, pretokens
from xpl.data.sampling import caption_batches
from xpl.data.shapes import PALETTE
from xpl.errors import XPLError
from xpl.stages.pipeline import missing_inputs
from xpl.text import TextEncoder
from xpl.vocab import Vocabulary

REPO = Path(__file__).resolve().parents[1]
COCO_VOCAB = REPO / "configs" / "vocab" / "coco_48_17.json"
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
            34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
            62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_miniature(tmp_path_factory.mktemp("coco"), "coco")


@pytest.fixture(scope="module")
def oi(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_miniature(tmp_path_factory.mktemp("oi"), "oi")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _case(path: Path, cases: tuple[str, ...], case: str) -> dict:
    """The image entry of a split's awkward case (image i of each split has case i)."""
    return json.loads(path.read_text())["images"][cases.index(case)]


def _painted_colour(pixels: np.ndarray, mask: np.ndarray) -> float:
    """How far (max channel difference) the median colour under `mask` is from the nearest palette colour."""
    median = np.median(pixels[mask], axis=0)
    return float(np.abs(np.array(list(PALETTE.values())) - median).max(axis=1).min())


# --- where the presets read --------------------------------------------------------------------------


def test_coco_files_are_where_the_coco_preset_reads_them(coco):
    root = Path(coco["root"])
    assert coco["overrides"] == [f"data.root={root}", f"text.model={root / 'bert'}"]
    cfg = load_config(REPO / coco["preset"], coco["overrides"], base_dir=REPO)
    assert (cfg.data.train_json, cfg.data.val_json) == (str(root / "annotations/instances_train2017_base48.json"),
                                                        str(root / "annotations/instances_val2017_65.json"))
    assert (cfg.data.train_images, cfg.data.val_images) == (str(root / "train2017"), str(root / "val2017"))
    assert cfg.text.model == str(root / "bert") and cfg.data.vocab == str(COCO_VOCAB)
    assert missing_inputs(cfg) == []
    assert expand_urls(cfg.data.captions) == [str(root / "caption_shards/00000.tar"),
                                              str(root / "caption_shards/00001.tar")]
    assert (root / "annotations/captions_train2017.json").is_file()


def test_oi_files_are_where_the_oi_preset_reads_them_with_the_printed_caption_url(oi):
    root = Path(oi["root"])
    shards = [str(root / "captions/00000.tar"), str(root / "captions/00001.tar")]
    assert oi["captions"]["pattern"] == f"{root}/captions/{{00000..00001}}.tar"
    assert oi["captions"]["url"] == f"file://{root}/captions/{{00000..00001}}.tar"
    assert oi["overrides"] == [f"data.root={root}", f"text.model={root / 'bert'}",
                               f"data.captions={oi['captions']['url']}"]
    cfg = load_config(REPO / oi["preset"], oi["overrides"], base_dir=REPO)
    assert cfg.data.vocab == str(root / "vocab_oi.json") and cfg.data.val_images == str(root / "validation")
    assert missing_inputs(cfg) == []
    assert expand_urls(cfg.data.captions) == expand_urls(oi["captions"]["pattern"]) == shards
    for name in ("00000.parquet", "00000_stats.json", "00001.parquet", "00001_stats.json"):
        assert (root / "captions" / name).is_file()
    assert all(len(Path(i["file_name"]).stem) == 16 and int(Path(i["file_name"]).stem, 16) >= 0
               for i in json.loads(Path(cfg.data.train_json).read_text())["images"])


# --- the instance jsons ----------------------------------------------------------------------------


def test_coco_jsons_have_cocos_80_categories_and_the_split_annotated(coco):
    root = Path(coco["root"])
    vocab = Vocabulary.load(COCO_VOCAB)
    base = {c.id for c in vocab.split("base")}
    train = COCO(str(root / "annotations/instances_train2017_base48.json"))
    val = COCO(str(root / "annotations/instances_val2017_65.json"))
    for data in (train, val):
        assert sorted(data.cats) == COCO_IDS
        assert {c.id: c.name for c in vocab.categories} == {i: data.cats[i]["name"] for i in vocab.ids}
        assert data.cats[13] == {"supercategory": "outdoor", "id": 13, "name": "stop sign"}
    assert {a["category_id"] for a in train.dataset["annotations"]} <= base
    assert {a["category_id"] for a in val.dataset["annotations"]} - base  # novel objects are annotated in val
    assert {a["category_id"] for a in val.dataset["annotations"]} <= set(vocab.ids)
    assert [len(data.dataset["images"]) for data in (train, val)] == [12, 6]
    assert all(len(i["file_name"]) == 16 and i["file_name"] == f"{i['id']:012d}.jpg" for i in train.dataset["images"])


def test_polygons_the_uncompressed_rle_crowd_and_compressed_rles_decode_with_pycocotools(coco, oi):
    path = Path(coco["root"]) / "annotations/instances_train2017_base48.json"
    train = COCO(str(path))
    polygons = [a for a in train.dataset["annotations"] if not a["iscrowd"]]
    (crowd,) = [a for a in train.dataset["annotations"] if a["iscrowd"]]
    assert polygons and all(isinstance(a["segmentation"], list) and len(a["segmentation"]) == 1 for a in polygons)
    image = train.imgs[crowd["image_id"]]
    assert isinstance(crowd["segmentation"]["counts"], list)
    assert crowd["segmentation"]["size"] == [image["height"], image["width"]]
    assert image["id"] == _case(path, COCO_CASES, "crowd")["id"]
    assert train.cats[crowd["category_id"]]["name"] == "book" and str(crowd["id"]).startswith("9001")
    masks = COCO(str(Path(oi["root"]) / "annotations/oi_train_base_masks.json"))
    compressed = masks.dataset["annotations"]
    assert compressed and all(isinstance(a["segmentation"]["counts"], str) for a in compressed)
    for data, ann in [(train, a) for a in [*polygons, crowd]] + [(masks, a) for a in compressed]:
        mask = data.annToMask(ann)
        assert mask.sum() == ann["area"] > 0
        assert ann["bbox"] == rle.bbox_xywh(rle.encode(mask.astype(bool)))


def test_uncompressed_rle_is_what_pycocotools_reads_back():
    mask = np.random.default_rng(0).random((9, 13)) < 0.4
    mask[0, 0] = True  # the counts start with an empty run of zeros
    encoded = rle.encode_uncompressed(mask)
    assert encoded["counts"][0] == 0 and sum(encoded["counts"]) == mask.size and encoded["size"] == [9, 13]
    assert mask_utils.frPyObjects(encoded, 9, 13)["counts"].decode() == rle.encode(mask)["counts"]


# --- the awkward images ------------------------------------------------------------------------------


def test_unannotated_grayscale_and_exif_images_are_there(coco, oi):
    for split, folder, name in [("train2017", "train2017", "instances_train2017_base48.json"),
                                ("val2017", "val2017", "instances_val2017_65.json")]:
        path = Path(coco["root"]) / "annotations" / name
        data = COCO(str(path))
        assert data.getAnnIds(imgIds=[_case(path, COCO_CASES, "unannotated")["id"]]) == []
        gray = _case(path, COCO_CASES, "grayscale")
        with Image.open(Path(coco["root"]) / folder / gray["file_name"]) as img:
            assert (img.mode, img.size) == ("L", (gray["width"], gray["height"]))
        exif = _case(path, COCO_CASES, "exif")
        with Image.open(Path(coco["root"]) / folder / exif["file_name"]) as img:
            assert img.getexif()[0x0112] == 6 and img.size == (exif["height"], exif["width"])  # stored on its side
            shown = np.asarray(ImageOps.exif_transpose(img))
        assert shown.shape[:2] == (exif["height"], exif["width"])
        anns = data.loadAnns(data.getAnnIds(imgIds=[exif["id"]], iscrowd=False))
        assert anns
        for ann in anns:
            assert _painted_colour(shown, data.annToMask(ann).astype(bool)) <= 8  # annotated as displayed
    path = Path(oi["root"]) / "annotations/oi_val_masks.json"
    assert COCO(str(path)).getAnnIds(imgIds=[_case(path, OI_CASES, "unannotated")["id"]]) == []


def test_coco_reader_gives_the_annotated_size_and_leaves_the_crowd_out(coco):
    root = Path(coco["root"])
    path = root / "annotations/instances_train2017_base48.json"
    dataset = CocoInstances(path, root / "train2017", category_ids=Vocabulary.load(COCO_VOCAB).ids)
    for case in ("unannotated", "grayscale", "crowd"):
        image, target = dataset[COCO_CASES.index(case)]
        entry = _case(path, COCO_CASES, case)
        assert image.shape == (3, entry["height"], entry["width"]) and target["masks"].shape[1:] == image.shape[1:]
        listed = COCO(str(path)).getAnnIds(imgIds=[entry["id"]], iscrowd=False)
        assert len(target["labels"]) == len(listed)
    assert len(dataset[COCO_CASES.index("unannotated")][1]["labels"]) == 0


def test_coco_reader_turns_an_exif_rotated_image_upright(coco):
    root = Path(coco["root"])
    path = root / "annotations/instances_train2017_base48.json"
    image, _ = CocoInstances(path, root / "train2017")[COCO_CASES.index("exif")]
    entry = _case(path, COCO_CASES, "exif")
    assert image.shape == (3, entry["height"], entry["width"])


def test_caption_reader_turns_an_exif_rotated_image_upright(coco):
    root = Path(coco["root"])
    entry = _case(root / "annotations/captions_train2017.json", COCO_CASES, "exif")
    samples = list(iter_caption_samples(str(root / "caption_shards/*.tar")))
    assert samples[COCO_CASES.index("exif")]["image"].shape == (3, entry["height"], entry["width"])


# --- captions ------------------------------------------------------------------------------------------


def test_coco_caption_shards_hold_every_caption_and_name_the_drawn_classes(coco):
    root = Path(coco["root"])
    captions = json.loads((root / "annotations/captions_train2017.json").read_text())
    by_image: dict[int, list[str]] = {}
    for ann in captions["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    assert len(captions["images"]) == 24 and all(len(texts) == 5 for texts in by_image.values())
    samples = iter_caption_samples(str(root / "caption_shards/*.tar"))
    texts = [s["caption"] for s in samples]
    assert texts == ["\n".join(by_image[i["id"]]) for i in sorted(captions["images"], key=lambda i: i["id"])]
    assert dict(samples.skipped) == {}
    vocab = Vocabulary.load(COCO_VOCAB)
    batch = next(caption_batches(str(root / "caption_shards/*.tar"), 4, rank=0, world_size=1, image_size=1333,
                                 start_step=0, seed=0))
    assert all(s["caption"] in by_image[sorted(by_image)[int(s["key"])]] for s in batch)
    named = {name for text in texts for name, hit in zip(vocab.names, vocab.named(text)) if hit}
    drawn = set(COCO_THINGS) & set(vocab.names)
    assert named - {"orange"} == drawn  # the colour word "orange" is matched as the fruit, as in real captions
    assert any("dogs" in t or "umbrellas" in t or "clocks" in t for t in texts)  # plurals


def test_oi_captions_in_lower_case_match_the_capitalised_class_names(oi):
    vocab = Vocabulary.load(Path(oi["root"]) / "vocab_oi.json")
    assert [(m.name, m.phrase, m.count) for m in vocab.match("two hot dogs next to a dog")] == [
        ("Hot dog", "hot dogs", 2), ("Dog", "dog", 1)]
    samples = iter_caption_samples(oi["captions"]["url"])
    texts = [s["caption"] for s in samples]
    assert len(texts) == 24 and dict(samples.skipped) == {}
    assert all(t == t.lower() and any(vocab.named(t)) for t in texts)
    assert {m.name for t in texts for m in vocab.match(t)} == set(vocab.names)
    assert [c.split for c in vocab.categories].count("novel") == 4


# --- the BERT folder -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["coco", "oi"])
def test_bert_folder_embeds_every_class_name_offline_without_unknown_pieces(layout, request):
    summary = request.getfixturevalue(layout)
    root = Path(summary["root"])
    bert = root / "bert"
    assert {p.name for p in bert.iterdir()} == {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json",
                                                "tokenizer_config.json"}
    assert sum(p.stat().st_size for p in bert.iterdir()) < 8 * 2**20
    assert bert.joinpath("vocab.txt").read_text().splitlines()[:5] == list(SPECIAL_TOKENS)
    vocab = Vocabulary.load(COCO_VOCAB if layout == "coco" else root / "vocab_oi.json")
    encoder = TextEncoder(str(bert))
    phrases = [n for c in vocab.categories for n in (c.name, *c.synonyms)]
    captions = [s["caption"] for s in iter_caption_samples(str(root / ("caption_shards" if layout == "coco"
                                                                             else "captions")))]
    pieces = encoder.tokenizer(phrases + captions, add_special_tokens=False)["input_ids"]
    assert all(encoder.tokenizer.unk_token_id not in p for p in pieces)
    assert any(len(p) > len(pretokens(text)) for p, text in zip(pieces, phrases))  # words of several pieces
    embedded = encoder.embed(vocab.names)
    assert encoder.dim == 768 and embedded.shape == (len(vocab), 768)
    assert torch.allclose(embedded.norm(dim=1), torch.ones(len(vocab)))


# --- the command, determinism, ownership ---------------------------------------------------------------------


def test_command_prints_the_overrides_and_the_same_seed_writes_the_same_bytes(coco, tmp_path, capsys):
    assert main(["synth", "--layout", "coco", "--out", str(tmp_path), "--seed", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["overrides"] == [f"data.root={tmp_path}", f"text.model={tmp_path / 'bert'}"]
    assert printed["command"] == f"xpl demo --config configs/coco_ovis.yaml data.root={tmp_path} " \
                                 f"text.model={tmp_path / 'bert'}"
    assert _files(tmp_path) == _files(Path(coco["root"]))


def test_rewrites_only_an_earlier_miniature_and_leaves_nothing_stale(oi, tmp_path):
    (tmp_path / "notes.txt").write_text("someone else's")
    with pytest.raises(XPLError, match="not an empty folder and not a miniature"):
        write_miniature(tmp_path, "oi")
    (tmp_path / MARKER).write_text("")
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "00005.tar").write_bytes(b"a shard of a bigger earlier run")
    write_miniature(tmp_path, "oi")
    files = _files(tmp_path)
    assert files.pop("notes.txt") == b"someone else's"
    assert files == _files(Path(oi["root"]))
    with pytest.raises(XPLError, match="layout 'lvis': expected one of coco, oi"):
        write_miniature(tmp_path, "lvis")
