"""A random-weight BERT folder in bert-base-uncased's layout, for rehearsing the real presets offline.

`write_random_bert(folder, texts)` writes `config.json`, `model.safetensors`, `vocab.txt`,
`tokenizer.json` and `tokenizer_config.json`: what `xpl.text.TextEncoder` reads from a local folder.
The input embedding is 768-d like bert-base-uncased's (the detector's text side has that width); the
rest is as small as BERT allows (one layer, two heads), stored in float16 to keep the folder a few MB.
The WordPiece vocabulary holds every word of the given texts, lowercased, so nothing they say becomes
[UNK]; longer words are stored as two pieces ('skateboard' -> 'skate', '##board') so that words of
several pieces exist, as in the real vocabulary. The weights are seeded: the same texts and seed give
the same folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from transformers import BertTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] first: BertConfig's pad_token_id is 0
SUFFIX_PIECES = ("##s", "##es")  # plural endings, as pieces of their own
SPLIT_FROM = 9  # words of at least this many letters are stored as two pieces
HIDDEN_SIZE = 768  # bert-base-uncased's embedding width
_PRETOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")  # BERT's basic split of lowercased ASCII text


def pretokens(text: str) -> list[str]:
    """The words and punctuation marks BERT's uncased basic tokenizer splits ASCII `text` into."""
    return _PRETOKEN.findall(text.lower())


def _pieces(word: str) -> tuple[str, ...]:
    """A word as the vocabulary first stores it: whole, or split in two halves when it is long."""
    if len(word) < SPLIT_FROM or not word.isalpha():
        return (word,)
    half = len(word) // 2
    return word[:half], "##" + word[half:]


def _write_vocab(folder: Path, words: set[str]) -> BertTokenizer:
    """Write `vocab.txt` and return its tokenizer. A split word that WordPiece's greedy longest match cuts
    differently (another entry is a longer prefix of it) and so turns into [UNK] is stored whole instead."""
    from transformers import BertTokenizer

    entries = {piece for word in words for piece in _pieces(word)} | set(SUFFIX_PIECES)
    while True:
        (folder / "vocab.txt").write_text("\n".join([*SPECIAL_TOKENS, *sorted(entries)]) + "\n")
        tokenizer = BertTokenizer(str(folder / "vocab.txt"))
        ids = tokenizer(sorted(words), add_special_tokens=False)["input_ids"]
        unknown = {word for word, pieces in zip(sorted(words), ids) if tokenizer.unk_token_id in pieces}
        if not unknown:
            return tokenizer
        entries |= unknown


def write_random_bert(folder: Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """Write the BERT folder (see the module docstring) whose vocabulary covers every word of `texts`."""
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _write_vocab(folder, {word for text in texts for word in pretokens(text)})
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN_SIZE, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config).half()
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
