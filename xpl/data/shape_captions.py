"""Caption writing for the shapes world: noisy, COCO-like sentences about a scene.

A caption names some of the scene's objects by class name, synonym or plural,
now and then with a colour and a spatial relation, and with a configured
probability also names an object that is not in the image (the kind of noise
real captions carry and pseudo-labeling must survive).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

IRREGULAR_PLURALS = {"annulus": "annuli", "rhombus": "rhombi"}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
PREFIXES = ("", "a picture of ", "an image of ", "a drawing of ", "there is ")
RELATIONS = ("next to", "above", "below", "on the left of", "on the right of")
NAME_PROBABILITY = 0.6  # use the class name itself, otherwise one of its synonyms
MENTION_PROBABILITY = 0.85  # each class present is named with this probability
RELATION_PROBABILITY = 0.5


@dataclass(frozen=True)
class SceneObject:
    """One visible instance as the caption writer sees it."""

    category: str
    colour: str
    bbox: tuple[float, float, float, float]  # x, y, w, h of the visible mask


@dataclass(frozen=True)
class Mention:
    """One noun phrase of a caption, with the truth behind it (for tests and analysis)."""

    text: str
    noun: str
    category: str
    count: int
    colour: str | None
    present: bool


def plural(noun: str) -> str:
    """English plural of a (possibly multi-word) noun: the last word is inflected."""
    *head, last = noun.split(" ")
    if last in IRREGULAR_PLURALS:
        last = IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "sh", "ch")):
        last += "es"
    else:
        last += "s"
    return " ".join([*head, last])


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(noun: str, count: int, colour: str | None, rng: np.random.Generator) -> str:
    """'a red star', 'two crosses', 'several doughnuts'."""
    words = [colour, noun if count == 1 else plural(noun)]
    head = " ".join(w for w in words if w)
    if count == 1:
        determiner = "one" if rng.random() < 0.15 else article(head)
    else:
        determiner = "several" if rng.random() < 0.15 else NUMBER_WORDS[count]
    return f"{determiner} {head}"


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where `a` is relative to `b`, from their box centres ('next to' when they are close)."""
    ax, ay = a.bbox[0] + a.bbox[2] / 2, a.bbox[1] + a.bbox[3] / 2
    bx, by = b.bbox[0] + b.bbox[2] / 2, b.bbox[1] + b.bbox[3] / 2
    dx, dy = bx - ax, by - ay
    reach = (a.bbox[2] + a.bbox[3] + b.bbox[2] + b.bbox[3]) / 4
    if max(abs(dx), abs(dy)) < reach:
        return "next to"
    if abs(dx) >= abs(dy):
        return "on the left of" if dx > 0 else "on the right of"
    return "above" if dy > 0 else "below"


def write_caption(objects: list[SceneObject], nouns: dict[str, tuple[str, ...]], rng: np.random.Generator, *,
                  colour_mention_rate: float, false_mention_rate: float) -> tuple[str, list[Mention]]:
    """Caption a scene. `nouns` maps each category name to the nouns that may name it (name first)."""
    groups: dict[str, list[SceneObject]] = {}
    for obj in objects:
        groups.setdefault(obj.category, []).append(obj)
    named = [c for c in groups if rng.random() < MENTION_PROBABILITY] or [list(groups)[rng.integers(len(groups))]]
    order = [named[i] for i in rng.permutation(len(named))]
    mentions = [_mention(c, groups[c], nouns[c], rng, colour_mention_rate) for c in order]
    anchors: list[SceneObject | None] = [groups[c][0] for c in order]  # where each phrase's object is
    if rng.random() < false_mention_rate:
        absent = [c for c in nouns if c not in groups]
        if absent:
            at = int(rng.integers(len(mentions) + 1))
            category = absent[rng.integers(len(absent))]
            mentions.insert(at, _mention(category, [], nouns[category], rng, colour_mention_rate))
            anchors.insert(at, None)
    return _sentence(mentions, anchors, rng), mentions


def _mention(category: str, instances: list[SceneObject], forms: tuple[str, ...], rng: np.random.Generator,
             colour_mention_rate: float) -> Mention:
    """A phrase for all instances of one class (or for one absent object when `instances` is empty).
    A colour is named, with probability `colour_mention_rate`, only when the instances share one."""
    noun = forms[0]
    if len(forms) > 1 and rng.random() >= NAME_PROBABILITY:
        noun = forms[1 + rng.integers(len(forms) - 1)]
    colours = {obj.colour for obj in instances}
    colour = colours.pop() if len(colours) == 1 and rng.random() < colour_mention_rate else None
    count = max(len(instances), 1)
    return Mention(noun_phrase(noun, count, colour, rng), noun, category, count, colour, bool(instances))


def _sentence(mentions: list[Mention], anchors: list[SceneObject | None], rng: np.random.Generator) -> str:
    texts = [m.text for m in mentions]
    if len(texts) >= 2 and rng.random() < RELATION_PROBABILITY:
        a, b = anchors[0], anchors[1]
        rel = relation(a, b) if a and b else RELATIONS[rng.integers(len(RELATIONS))]
        texts = [f"{texts[0]} {rel} {texts[1]}", *texts[2:]]
    body = texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]
    prefix = PREFIXES[rng.integers(len(PREFIXES))]
    if prefix == "there is " and mentions[0].count > 1:
        prefix = "there are "
    caption = prefix + body
    if rng.random() < 0.5:
        caption = caption[0].upper() + caption[1:]
    return caption + "." if rng.random() < 0.5 else caption
