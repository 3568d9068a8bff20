"""Text encoder: L2-normalised mean of word-piece input embeddings, offline."""

import os

import pytest
import torch

from xpl.errors import XPLError
from xpl.text import TextEncoder


def test_offline_and_dimension(text_encoder):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert text_encoder.dim == 384


def test_phrase_is_normalised_mean_of_its_pieces(text_encoder):
    pieces = text_encoder.tokenizer("hexagon", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    mean = text_encoder.table[pieces].mean(0)
    expected = mean / mean.norm()
    got = text_encoder.embed(["hexagon"])[0]
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_batched_cached_and_ordered(text_encoder):
    out = text_encoder.embed(["circle", "hot dog", "circle"])
    assert out.shape == (3, 384)
    assert torch.equal(out[0], out[2])
    assert torch.equal(text_encoder.embed(["hot dog"])[0], out[1])
    assert not torch.allclose(out[0], out[1])
    assert text_encoder.embed([]).shape == (0, 384)


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(XPLError, match="no-such-model: folder not found; .* offline"):
        TextEncoder(str(tmp_path / "no-such-model"))
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(XPLError, match="cannot load text encoder from folder"):
        TextEncoder(str(tmp_path / "empty-model"))
