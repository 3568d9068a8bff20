"""Structured configs: defaults, YAML presets, dotlist overrides and errors that name the key."""


import pytest

from presets import CONFIGS, SHAPES
from xpl.config import from_dict, load_config, to_dict
from xpl.errors import XPLError



def test_defaults_are_the_papers_recipe_and_interpolations_resolve(tmp_path):
    cfg = load_config(base_dir=tmp_path)
    assert cfg.data.train_json == f"{tmp_path}/data/coco/annotations/instances_train2017_base48.json"
    assert (cfg.model.backbone, cfg.model.min_size, cfg.model.max_size, cfg.model.image_size) == ("r50_fpn", 800,
                                                                                                  1333, 1333)
    assert (cfg.pretrain.tau, cfg.teacher.train.lr, cfg.student.train.lr) == (10.0, 5e-4, 5e-3)
    assert cfg.teacher.train.optimizer == "sgd" and cfg.student.train.lr_steps == [20_000, 50_000]
    assert cfg.teacher.init == f"{tmp_path}/outputs/xpl/pretrain/model.pt"
    shapes = load_config(SHAPES, base_dir=tmp_path)
    assert shapes.data.vocab == f"{tmp_path}/data/shapes/vocab.json" and shapes.model.image_size == 128
    assert shapes.teacher.train.optimizer == "adamw" and shapes.student.train.batch_size == 4


def test_urls_and_absolute_paths_are_kept(tmp_path):
    cfg = load_config(SHAPES, ["data.captions=s3://b/{00000..00009}.tar", "pseudolabel.output=/abs/out"], base_dir=tmp_path)
    assert cfg.data.captions == "s3://b/{00000..00009}.tar"
    assert cfg.pseudolabel.output == "/abs/out"


@pytest.mark.parametrize("name", ["shapes.yaml", "coco_ovis.yaml", "oi_cc.yaml"])
def test_presets_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.run_name == name.removesuffix(".yaml")


def test_coco_preset_is_the_48_17_split():
    import json

    cfg = load_config(CONFIGS / "coco_ovis.yaml")
    cats = json.loads((CONFIGS / "vocab" / "coco_48_17.json").read_text())["categories"]
    assert cfg.data.vocab.endswith("configs/vocab/coco_48_17.json")
    assert sum(c["split"] == "base" for c in cats) == 48 and sum(c["split"] == "novel" for c in cats) == 17


def test_overrides_apply_after_the_file_and_reach_interpolations():
    cfg = load_config(CONFIGS / "shapes.yaml", ["data.root=/tmp/w", "teacher.train.steps=7", "run_name=x"], base_dir="/b")
    assert cfg.data.vocab == "/tmp/w/vocab.json"
    assert cfg.teacher.train.steps == 7
    assert cfg.teacher.init == "/b/outputs/x/pretrain/model.pt"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["teacher.train.stepz=5"], "teacher.train.stepz"),
        (["teacher.train.steps=many"], "teacher.train.steps"),
        (["nonsense"], "expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(XPLError) as err:
        load_config(SHAPES, overrides)
    assert message in str(err.value)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(XPLError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: tiny\n  depth: 3\n")
    with pytest.raises(XPLError) as err:
        load_config(bad)
    assert "bad.yaml" in str(err.value) and "model.depth" in str(err.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(XPLError, match="broken.yaml: cannot read config"):
        load_config(broken)


def test_round_trip_through_plain_dicts():
    cfg = load_config(SHAPES, ["pretrain.tau=0.5"])
    again = from_dict(to_dict(cfg))
    assert again == cfg and again.pretrain.tau == 0.5
