"""Pure pieces of the training engine and stages: schedules, batching, DeepSpeed config, caption tokens."""

import pytest
import torch

from presets import SHAPES
from xpl.data.sampling import rank_batches
from xpl.text import caption_tokens
from xpl.train.engine import TrainSettings, deepspeed_config, resolved_precision
from xpl.train.optim import build_optimizer, split_biases
from xpl.train.schedule import lr_multiplier


def settings(**kw) -> TrainSettings:
    base = dict(steps=10, batch_size=2, lr=1e-3, weight_decay=0.0, warmup_steps=2, grad_clip=1.0, num_workers=2,
                use_gpu=False, cpus_per_worker=1.0, zero_stage=2, precision="auto", checkpoint_every=5, log_every=1,
                max_failures=0, storage_path="/tmp/x", seed=0)
    return TrainSettings(**{**base, **kw})


def test_warmup_then_cosine_to_the_floor():
    def at(step):
        return lr_multiplier(step, schedule="cosine", total_steps=10, warmup_steps=2, warmup_factor=0.0)

    assert [at(s) for s in (0, 1)] == [0.5, 1.0]
    assert at(2) == pytest.approx(1.0)
    assert at(6) == pytest.approx(0.55)
    assert at(10) == pytest.approx(0.1)
    assert at(50) == pytest.approx(0.1)


def test_warmup_from_a_third_then_steps_down_at_the_milestones():
    def at(step):
        return lr_multiplier(step, schedule="multistep", total_steps=100, warmup_steps=4, warmup_factor=1 / 3,
                             lr_steps=(10, 20), lr_gamma=0.1)

    assert at(0) == pytest.approx(1 / 3 + 2 / 3 * 1 / 4)
    assert at(3) == pytest.approx(1.0)
    assert [at(9), at(10), at(19), at(20), at(99)] == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(0, schedule="poly", total_steps=1, warmup_steps=0, warmup_factor=1.0)


def test_biases_learn_at_their_factor_without_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.GroupNorm(1, 2))
    groups = [{"params": list(model.parameters()), "lr": 0.1}]
    split = split_biases(model, groups, lr_factor=2.0, weight_decay=0.0)
    assert [len(g["params"]) for g in split] == [2, 2]  # the linear's and the norm's weights, then their biases
    assert split[1]["params"][0] is model[0].bias and split[1]["lr"] == 0.2 and split[1]["weight_decay"] == 0.0
    assert "weight_decay" not in split[0] and split[0]["lr"] == 0.1
    assert split_biases(model, groups, lr_factor=1.0, weight_decay=None) is groups
    sgd = build_optimizer(model, groups, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                          bias_lr_factor=2.0, bias_weight_decay=0.0)
    assert isinstance(sgd, torch.optim.SGD)
    assert [(g["lr"], g["weight_decay"], g["momentum"]) for g in sgd.param_groups] == [(0.1, 1e-4, 0.9),
                                                                                       (0.2, 0.0, 0.9)]
    adamw = build_optimizer(model, groups, optimizer="adamw", lr=0.1, momentum=0.9, weight_decay=1e-4,
                            bias_lr_factor=1.0, bias_weight_decay=None)
    assert isinstance(adamw, torch.optim.AdamW) and len(adamw.param_groups) == 1


def test_rank_batches_are_disjoint_and_resume_at_a_step():
    a = rank_batches(10, 2, 0, 2, 0, seed=3)
    b = rank_batches(10, 2, 1, 2, 0, seed=3)
    first = [next(a) for _ in range(2)]
    second = [next(b) for _ in range(2)]
    seen = [i for batch in first + second for i in batch]
    assert len(seen) == 8 and len(set(seen)) == 8
    assert next(rank_batches(10, 2, 0, 2, 1, seed=3)) == first[1]
    assert next(rank_batches(10, 2, 0, 2, 2, seed=3)) == next(a)
    with pytest.raises(ValueError, match="cannot fill"):
        next(rank_batches(3, 2, 0, 2, 0, seed=0))


def test_deepspeed_config_on_cpu_is_fp32_with_the_zero_stage():
    s = settings(zero_stage=1)
    assert resolved_precision(s) == "fp32"
    cfg = deepspeed_config(s, "fp32")
    assert cfg["zero_optimization"] == {"stage": 1}
    assert cfg["bf16"] == {"enabled": False}
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_clipping"] == 1.0


@pytest.mark.parametrize(("kw", "message"), [
    ({"zero_stage": 3}, "zero_stage"), ({"precision": "fp16"}, "precision"), ({"precision": "bf16"}, "use_gpu"),
    ({"optimizer": "lamb"}, "optimizer"), ({"lr_schedule": "poly"}, "lr_schedule"),
])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        settings(**kw)


def test_caption_tokens_keep_content_words_lemmatised(text_encoder):
    tokens, mask = caption_tokens(text_encoder, ["two red stars next to a circle", "the"], max_words=8)
    assert tokens.shape == (2, 3, 384)
    assert mask.tolist() == [[True, True, True], [False] * 3]
    assert tokens[0].equal(text_encoder.embed(["red", "star", "circle"]))
    assert tokens[1].abs().sum() == 0


def test_caption_tokens_as_word_pieces_are_every_piece_of_the_caption(text_encoder):
    tokens, mask = caption_tokens(text_encoder, ["two red hexagons", "a"], max_words=0, tokens="word_pieces")
    ids = text_encoder.tokenizer("two red hexagons", add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 and tokens.shape == (2, len(ids), 384)  # "hexagons" is several pieces
    assert mask.sum(1).tolist() == [len(ids), 1]
    rows = text_encoder.table[torch.tensor(ids)]
    torch.testing.assert_close(tokens[0], rows / rows.norm(dim=1, keepdim=True))
    assert caption_tokens(text_encoder, ["two red hexagons"], max_words=2, tokens="word_pieces")[0].shape[1] == 2
    with pytest.raises(ValueError, match="caption tokens"):
        caption_tokens(text_encoder, ["x"], max_words=0, tokens="letters")


def test_teacher_refuses_an_init_file_that_does_not_fit(shapes_world, tmp_path):
    """The teacher stage builds its model on the driver first: an incompatible teacher.init stops it there."""
    from xpl.config import load_config, to_dict
    from xpl.errors import XPLError
    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN
    from xpl.stages.teacher import TeacherTask

    other = export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64, representation_size=32), tmp_path / "pre.pt")
    cfg = load_config(SHAPES, [f"data.root={shapes_world}", "data.image_size=64", f"teacher.init={other}"])
    with pytest.raises(XPLError, match="pre.pt: weights do not fit this model"):
        TeacherTask(to_dict(cfg)).build_model()
    fitting = export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64), tmp_path / "fits.pt")
    TeacherTask(to_dict(load_config(SHAPES, [f"data.root={shapes_world}", f"teacher.init={fitting}"]))).build_model()
