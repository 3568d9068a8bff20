"""The presets tests load: the shapes world's (the data the tests run on) and the real-data ones."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHAPES = CONFIGS / "shapes.yaml"
REAL = ("coco_ovis.yaml", "oi_cc.yaml")
