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


# Words that give the number of objects a noun phrase names ("two red hearts").
NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "another": 1, "two": 2, "both": 2, "pair": 2, "three": 3, "four": 4,
                "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
PLURAL_COUNT = 2  # a plural without a number word ("several moons", "rings"): at least two


def phrase_count(words: list[str], start: int, end: int, reach: int = 2, floor: int = 0) -> int:
    """How many objects the noun phrase `words[start:end]` (lowercase tokens) names: the first number word
    among the `reach` words before it, not before `floor` (where the previous mention ends), ("two red
    hearts": 2, "a moon": 1), else `PLURAL_COUNT` when its last word is a plural, else 1."""
    for word in reversed(words[max(floor, start - reach):start]):
        if word in NUMBER_WORDS:
            return NUMBER_WORDS[word]
    last = words[end - 1]
    return PLURAL_COUNT if lemma(last) != last else 1
