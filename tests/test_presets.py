"""The real-data presets do what the paper did: BERT text side from a local folder, detection-standard resize,
a loud warning without ImageNet weights, and one caption per image per pretraining step."""

import logging
import random

import pytest
import torch
from PIL import Image

from presets import CONFIGS, REAL, SHAPES
from xpl.config import load_config, to_dict
from xpl.errors import XPLError
from xpl.model.detector import OpenVocabMaskRCNN
from xpl.stages.common import warn_untrained_backbone
from xpl.data.sampling import one_caption
from xpl.stages.pretrain import PretrainTask
from xpl.text import TextEncoder
from xpl.words import content_words

# What a real preset may set apart from the defaults (the paper's recipe): where its data, text encoder, outputs,
# checkpoints and tracking server are, how many pseudo-labeling actors and writers run, and oi_cc's Conceptual
# Captions pretraining schedule (OVR-CNN's). Anything else is a departure from the paper and must be added here.
PLACES = ("run_name", "output_dir", "data.", "text.model", "model.pretrained_backbone", "tracking.", "teacher.init",
          "student.init", "student.pseudo", "pseudolabel.input", "pseudolabel.output", "pseudolabel.teacher",
          "pseudolabel.num_actors", "pseudolabel.num_writers", "pretrain.train.storage_path",
          "teacher.train.storage_path", "student.train.storage_path")
DEPARTURES = {"coco_ovis.yaml": (), "oi_cc.yaml": ("pretrain.train.steps", "pretrain.train.lr_steps")}


def _leaves(cfg) -> dict:
    """The resolved config as {dotted key: value}."""
    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(to_dict(cfg), ""))


@pytest.mark.parametrize("name", REAL)
def test_real_presets_are_the_papers_recipe_apart_from_places_and_listed_departures(name):
    paper, real = _leaves(load_config(None)), _leaves(load_config(CONFIGS / name))
    changed = {k for k in paper if real[k] != paper[k] and not k.startswith(PLACES)}
    assert changed == set(DEPARTURES[name])


@pytest.mark.parametrize("name", REAL)
def test_real_presets_take_no_value_that_exists_only_for_the_shapes_world(name):
    paper, shapes, real = (_leaves(load_config(path)) for path in (None, SHAPES, CONFIGS / name))
    shapes_only = {k: v for k, v in shapes.items() if v != paper[k]}
    assert len(shapes_only) > 40  # the shapes world departs from the paper in many places
    assert {k: v for k, v in shapes_only.items() if real[k] == v} == {}


def test_a_gpu_setting_on_a_local_ray_without_gpus_is_one_clear_error(ray_session, monkeypatch):
    from xpl.ray_cluster import require_gpus

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(XPLError, match="teacher.train.use_gpu=true asks for GPUs, but the local Ray"):
        require_gpus("teacher.train.use_gpu=true")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a joined cluster may add GPU nodes on demand
    require_gpus("teacher.train.use_gpu=true")


@pytest.mark.parametrize("name", REAL)
def test_real_presets_train_and_pseudo_label_on_gpus(name):
    cfg = load_config(CONFIGS / name)
    assert [cfg[s].train.use_gpu for s in ("pretrain", "teacher", "student")] == [True] * 3
    assert cfg.pseudolabel.num_gpus_per_actor >= 1


@pytest.mark.parametrize("name", REAL)
def test_text_encoder_is_bert_from_a_local_folder_with_a_clear_error_when_absent(name, tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    cfg = load_config(CONFIGS / name)
    assert cfg.text.model == "/data/models/bert-base-uncased"
    with pytest.raises(XPLError, match="bert-base-uncased: folder not found; .*read offline"):
        TextEncoder(cfg.text.model)
    # the same code path on a tiny BERT-family folder: read from local files, nothing fetched
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "circle", "##s"]) + "\n")
    folder = tmp_path / "bert-tiny"
    BertTokenizer(str(vocab)).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=8, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(folder)
    encoder = TextEncoder(str(folder))
    assert encoder.dim == 12 and encoder.embed(["circles"]).shape == (1, 12)


@pytest.mark.parametrize("name", REAL)
def test_real_presets_resize_shorter_side_800_longer_at_most_1333(name):
    m = load_config(CONFIGS / name).model
    assert (m.min_size, m.max_size) == (800, 1333)
    model = OpenVocabMaskRCNN(embed_dim=8, image_size=m.image_size, min_size=m.min_size, max_size=m.max_size).eval()
    sizes = model.transform([torch.rand(3, 480, 640), torch.rand(3, 500, 2000)])[0].image_sizes
    assert sizes == [(800, 1066), (333, 1333)]
    shapes = load_config(CONFIGS / "shapes.yaml").model
    assert (shapes.min_size, shapes.max_size) == (128, 128)
    small = OpenVocabMaskRCNN(embed_dim=8, image_size=shapes.image_size, min_size=shapes.min_size,
                              max_size=shapes.max_size).eval()
    assert small.transform([torch.rand(3, 64, 64)])[0].image_sizes == [(128, 128)]


def test_real_data_without_imagenet_weights_is_said_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="xpl"):
        message = warn_untrained_backbone(load_config(CONFIGS / "coco_ovis.yaml"))
    assert "RANDOM weights" in message and "WARNING: model.backbone=r50_fpn" in caplog.text
    assert warn_untrained_backbone(load_config(CONFIGS / "coco_ovis.yaml",
                                               ["model.pretrained_backbone=/w/resnet50.pth"])) is None
    assert warn_untrained_backbone(load_config(CONFIGS / "shapes.yaml", ["model.backbone=r50_fpn"])) is None


CAPTIONS = ["a man rides a horse", "a brown horse on grass", "the rider wears a hat",
            "people watch the horse race", "a jockey in blue silks"]


def test_pretraining_draws_one_caption_per_image_per_step(tmp_path, text_encoder):
    from xpl.data.tar_writer import AtomicTar

    image = tmp_path / "x.jpg"
    Image.new("RGB", (32, 24), (90, 120, 200)).save(image)
    with AtomicTar(tmp_path / "00000.tar") as tar:  # as `xpl make-shards` writes a COCO image: all captions
        tar.write("000000000", {"jpg": image.read_bytes(), "txt": "\n".join(CAPTIONS).encode()})
    cfg = load_config(SHAPES, [f"data.captions={tmp_path}/00000.tar", "data.image_size=32",
                             "pretrain.train.batch_size=1"])
    task = PretrainTask(to_dict(cfg))
    batches = task.batches(rank=0, world_size=1, start_step=0)
    seen = set()
    for _ in range(12):
        _, tokens, mask = next(batches)
        words = tokens[0][mask[0]]
        line = next(c for c in CAPTIONS if len(content_words(c)) == len(words)
                    and torch.equal(text_encoder.embed(content_words(c)), words))
        seen.add(line)
    assert len(seen) >= 3
    assert one_caption("only one\n", random.Random(0)) == "only one"
