"""The vocabulary is data: categories with synonyms and a base/novel split, read from a COCO/LVIS-style json.

Caption matching finds category mentions as whole lemmatised words or phrases, longest first,
so "hot dogs" is one mention of "hot dog", not of "dog", and "category" never matches "cat".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from xpl.errors import DataError
from xpl.jsonfile import read_json
from xpl.words import lemma, phrase_count, tokenize

SPLITS = ("base", "novel")


@dataclass(frozen=True)
class Category:
    """One class: COCO id, canonical name, synonyms and split ("base" or "novel")."""

    id: int
    name: str
    synonyms: tuple[str, ...] = ()
    split: str = "base"


@dataclass(frozen=True)
class Mention:
    """A category named in a text: the words as written, their character span and how many objects they
    name (`xpl.words.phrase_count`: "two moons" 2, "a moon" 1)."""

    category_id: int
    name: str
    phrase: str
    start: int
    end: int
    count: int = 1


@dataclass
class Vocabulary:
    """An ordered list of categories and a longest-first phrase matcher over their names and synonyms."""

    categories: list[Category]
    _phrases: dict[tuple[str, ...], int] = field(init=False, repr=False)
    _longest: int = field(init=False, repr=False)
    _by_id: dict[int, Category] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.categories:
            raise DataError("vocabulary is empty: no categories")
        ids = [c.id for c in self.categories]
        if len(set(ids)) != len(ids):
            raise DataError(f"vocabulary has duplicate category ids: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
        self._by_id = {c.id: c for c in self.categories}
        self._phrases = {}
        for cat in self.categories:
            for text in (cat.name, *cat.synonyms):
                key = tuple(lemma(word) for word, _, _ in tokenize(text))
                if key and key not in self._phrases:
                    self._phrases[key] = cat.id
        self._longest = max(len(k) for k in self._phrases)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read `{"categories": [...]}` (COCO or LVIS json) or a bare list of categories."""
        path = Path(path)
        data = read_json(path, "vocabulary file")
        raw = data.get("categories") if isinstance(data, dict) else data
        if not isinstance(raw, list):
            raise DataError(f"{path}: expected a list under key 'categories'")
        return cls.from_records(raw, path)

    @classmethod
    def from_records(cls, raw: list[Any], source: str | Path) -> "Vocabulary":
        """Validate parsed category records (COCO/LVIS style); errors name `source` and the record."""
        if not raw:
            raise DataError(f"{source}: vocabulary is empty: no categories")
        return cls([_parse_category(entry, source, i) for i, entry in enumerate(raw)])

    def __len__(self) -> int:
        return len(self.categories)

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.categories]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def split(self, which: str) -> list[Category]:
        """Categories of one split ("base" or "novel"), or all of them for "all"."""
        if which == "all":
            return list(self.categories)
        if which not in SPLITS:
            raise ValueError(f"unknown split {which!r}: expected base, novel or all")
        return [c for c in self.categories if c.split == which]

    def labels(self, which: str) -> list[int]:
        """Detector labels (1..C, vocabulary order) of one split's classes (`split`'s names)."""
        chosen = {c.id for c in self.split(which)}
        return [i for i, c in enumerate(self.categories, start=1) if c.id in chosen]

    def by_id(self, category_id: int) -> Category:
        return self._by_id[category_id]

    def by_name(self, name: str) -> Category:
        """The category named `name`; DataError listing the names when there is none."""
        found = next((c for c in self.categories if c.name == name), None)
        if found is None:
            raise DataError(f"no class {name!r} in the vocabulary ({', '.join(self.names)})")
        return found

    def match(self, text: str) -> list[Mention]:
        """Category mentions in `text`, left to right, each the longest phrase starting at its word."""
        tokens = tokenize(text)
        keys = [lemma(word) for word, _, _ in tokens]
        words = [word for word, _, _ in tokens]
        found: list[Mention] = []
        i = floor = 0
        while i < len(tokens):
            for n in range(min(self._longest, len(tokens) - i), 0, -1):
                category_id = self._phrases.get(tuple(keys[i : i + n]))
                if category_id is not None:
                    start, end = tokens[i][1], tokens[i + n - 1][2]
                    name = self.by_id(category_id).name
                    count = phrase_count(words, i, i + n, floor=floor)
                    found.append(Mention(category_id, name, text[start:end], start, end, count))
                    i = floor = i + n
                    break
            else:
                i += 1
        return found

    def named(self, text: str) -> list[int]:
        """1 for each category (in vocabulary order) that `text` names, else 0."""
        found = {m.category_id for m in self.match(text)}
        return [int(c.id in found) for c in self.categories]

    def to_json(self) -> dict[str, Any]:
        return {
            "categories": [
                {"id": c.id, "name": c.name, "synonyms": list(c.synonyms), "split": c.split} for c in self.categories
            ]
        }


def _parse_category(entry: Any, path: str | Path, index: int) -> Category:
    """Validate one category record; LVIS's `synset`/`frequency` fields are ignored."""
    where = f"{path}: categories[{index}]"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object")
    for key in ("id", "name"):
        if key not in entry:
            raise DataError(f"{where}: missing key '{key}'")
    if not isinstance(entry["id"], int) or not isinstance(entry["name"], str) or not entry["name"].strip():
        raise DataError(f"{where}: 'id' must be an integer and 'name' a non-empty string")
    synonyms = entry.get("synonyms", [])
    if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
        raise DataError(f"{where}: 'synonyms' must be a list of strings")
    split = entry.get("split", "base")
    if split not in SPLITS:
        raise DataError(f"{where}: 'split' must be one of {SPLITS}, got {split!r}")
    name = entry["name"].replace("_", " ")
    return Category(entry["id"], name, tuple(s.replace("_", " ") for s in synonyms), split)


def unique_category_ids(mentions: Iterable[Mention]) -> list[int]:
    """Category ids in order of first mention, each once."""
    seen: dict[int, None] = {}
    for m in mentions:
        seen.setdefault(m.category_id, None)
    return list(seen)
