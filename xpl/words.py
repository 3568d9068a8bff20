"""Caption text to words: lowercase, split on non-letters, lemmatise nouns (lemminflect).

Shared by vocabulary matching and the text encoder so that "moons", "Moon," and "moon" all meet
the class name "moon" in the same form.
"""

from __future__ import annotations

import re
from functools import lru_cache

from lemminflect import getLemma

_WORD = re.compile(r"[a-z]+")

# English function words: they carry no object identity and are dropped before grounding.
STOPWORDS = frozenset(
    """a an the and or but nor of to in on at by for with without from into onto over under above
    below behind beside besides next near between among through across against along around about
    up down out off left right top bottom front back side middle center centre this that these those
    there here it its they them their he she his her we our you your i me my is are was were be been
    being am has have had do does did can could will would shall should may might must not no some
    any each every all both few many much more most other another such own same so than too very
    just only also then one two three four five six seven eight nine ten several lots lot bunch pair
    group image picture photo drawing view which who whom whose what where when while as if s""".split()
)


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Lowercased word tokens with their character spans in `text`."""
    return [(m.group(0), m.start(), m.end()) for m in _WORD.finditer(text.lower())]


@lru_cache(maxsize=200_000)
def lemma(word: str) -> str:
    """Noun lemma of a lowercase word ("mice" -> "mouse", "boxes" -> "box"); the word itself if unknown."""
    found = getLemma(word, upos="NOUN")
    return found[0].lower() if found else word


def lemmas(text: str) -> list[str]:
    """Lemmatised word tokens of `text`."""
    return [lemma(word) for word, _, _ in tokenize(text)]


def content_words(text: str) -> list[str]:
    """Lemmatised words of a caption without function words (the tokens grounding attends over)."""
    return [lemma(word) for word, _, _ in tokenize(text) if word not in STOPWORDS]
