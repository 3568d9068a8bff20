"""`xpl demo` writes the shapes world only when that is the configured data, and only where it owns the folder."""

from pathlib import Path

import pytest

from xpl.config import load_config
from xpl.errors import XPLError
from xpl.stages.pipeline import ensure_inputs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = ["synth.train_images=2", "synth.val_images=1", "synth.caption_images=3", "synth.shard_size=3",
         "synth.image_size=32"]


def test_real_data_presets_never_synthesize_and_name_what_is_missing(tmp_path):
    cfg = load_config(CONFIGS / "coco_ovis.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(XPLError) as err:
        ensure_inputs(cfg)
    message = str(err.value)
    assert f"data.train_json={tmp_path}/annotations/instances_train2017_base48.json" in message
    assert "data.captions=" in message and "data.synthesize=false" in message
    assert not any(tmp_path.iterdir())


def test_shapes_world_is_written_only_into_an_empty_or_shapes_owned_folder(tmp_path):
    real = tmp_path / "real"
    (real / "annotations").mkdir(parents=True)
    (real / "annotations" / "instances.json").write_text("{}")
    with pytest.raises(XPLError, match="holds other files"):
        ensure_inputs(load_config(CONFIGS / "shapes.yaml", [f"data.root={real}", *SMALL]))
    assert sorted(p.name for p in real.rglob("*")) == ["annotations", "instances.json"]

    cfg = load_config(CONFIGS / "shapes.yaml", [f"data.root={tmp_path / 'shapes'}", *SMALL])
    assert ensure_inputs(cfg) is True
    assert ensure_inputs(cfg) is False  # everything is there now
