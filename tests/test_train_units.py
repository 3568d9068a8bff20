"""Pure pieces of the training engine and stages: schedules, batching, DeepSpeed config, caption tokens."""

import pytest

from xpl.data.sampling import rank_batches
from xpl.text import caption_tokens
from xpl.train.engine import TrainSettings, deepspeed_config, resolved_precision
from xpl.train.schedule import warmup_cosine_factor


def settings(**kw) -> TrainSettings:
    base = dict(steps=10, batch_size=2, lr=1e-3, weight_decay=0.0, warmup_steps=2, grad_clip=1.0, num_workers=2,
                use_gpu=False, cpus_per_worker=1.0, zero_stage=2, precision="auto", checkpoint_every=5, log_every=1,
                max_failures=0, storage_path="/tmp/x", seed=0)
    return TrainSettings(**{**base, **kw})


def test_warmup_then_cosine_to_the_floor():
    assert [warmup_cosine_factor(s, 2, 10) for s in (0, 1)] == [0.5, 1.0]
    assert warmup_cosine_factor(2, 2, 10) == pytest.approx(1.0)
    assert warmup_cosine_factor(6, 2, 10) == pytest.approx(0.55)
    assert warmup_cosine_factor(10, 2, 10) == pytest.approx(0.1)
    assert warmup_cosine_factor(50, 2, 10) == pytest.approx(0.1)


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


def test_teacher_refuses_an_init_file_that_does_not_fit(shapes_world, tmp_path):
    """The teacher stage builds its model on the driver first: an incompatible teacher.init stops it there."""
    from xpl.config import load_config, to_dict
    from xpl.errors import XPLError
    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN
    from xpl.stages.teacher import TeacherTask

    other = export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64, representation_size=32), tmp_path / "pre.pt")
    cfg = load_config(None, [f"data.root={shapes_world}", "data.image_size=64", f"teacher.init={other}"])
    with pytest.raises(XPLError, match="pre.pt: weights do not fit this model"):
        TeacherTask(to_dict(cfg)).build_model()
    fitting = export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64), tmp_path / "fits.pt")
    TeacherTask(to_dict(load_config(None, [f"data.root={shapes_world}", f"teacher.init={fitting}"]))).build_model()
