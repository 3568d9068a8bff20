"""How caption words choose the teacher's regions: scoring, picking, and the `RegionChoice` that says how.

Pure tensor code (no Ray, no model). For each matched caption word `w` with embedding `t_w` and the
teacher's regions `r` with V2L embeddings `v_r`, the alignment score is `s_rw = v_r . t_w`; the word
keeps its best region `argmax_r s_rw` (top-1), if that score reaches the optional threshold. Optionally
(`RegionChoice.vocabulary`) the score is instead the teacher classifier's log-probability of the word
among background and every vocabulary class, so a region another class explains better ranks lower. A
word that names several objects ("two moons": `Word.count`) may keep its `count` best regions on
different objects (at most `max_per_word`; 1 is the paper's top-1). Chosen boxes may grow until their
mask fits (`xpl.pseudo.grow`). A caption that names a class twice ("a circle and another circle") gives
one word per class (with the larger count): the embedding is the class name's, so both mentions would
pick the same region.

The choice runs next to the model (the mask head runs on the chosen regions, for a batch's images at
once); pasting, binarising and encoding the chosen masks at the original image size is CPU work that
runs where they are written (`xpl.pseudo.paste`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch

from xpl.pseudo.grow import MasksOf, grow_about_centre, grow_sides

# Why an aligned caption produced no instance (the sample is then `no_match` with this reason).
NO_REGIONS = "no_regions"
BELOW_THRESHOLD = "below_threshold"
SAME_OBJECT = 0.5  # two boxes are on one object when their intersection covers this much of the smaller


@dataclass(frozen=True)
class Word:
    """A caption mention matched to the vocabulary: class id, class name, the words as written, t_w, and
    how many objects the mention names ("two moons": 2; `xpl.words.phrase_count`)."""

    category_id: int
    name: str
    phrase: str
    embedding: torch.Tensor  # [D], unit norm (the class name's embedding)
    count: int = 1


def caption_words(rows: Sequence[Mapping[str, Any]], embeddings: Mapping[int, torch.Tensor]) -> list[Word]:
    """Words from decoded caption-word rows (`category_id`, `name`, `phrase`, optional `count`) and the
    class embeddings by id."""
    return [Word(w["category_id"], w["name"], w["phrase"], embeddings[w["category_id"]], int(w.get("count") or 1))
            for w in rows]


class RegionsLike(Protocol):
    """What the teacher gives per image (`xpl.model.detector.Regions`)."""

    boxes: torch.Tensor  # [R, 4] xyxy, pixels of the image the teacher saw
    embeddings: torch.Tensor  # [R, D] V2L region embeddings v_r
    scores: torch.Tensor  # [R] objectness of each region
    mask_probs: Optional[torch.Tensor]  # [R, M, M] box-relative mask probabilities, not pasted; None: ask masks_in
    image_size: tuple[int, int]  # (H, W) of the image the teacher saw
    masks_in: Optional[Callable[[torch.Tensor], torch.Tensor]]  # [K, 4] boxes -> [K, M, M] probabilities


def unique_words(words: Sequence[Word]) -> list[Word]:
    """One word per class: the first mention's phrase, the largest count of its mentions."""
    seen: dict[int, Word] = {}
    for word in words:
        first = seen.setdefault(word.category_id, word)
        if word.count > first.count:
            seen[word.category_id] = dataclasses.replace(first, count=word.count)
    return list(seen.values())


def overlap_of_smaller(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] intersection of xyxy boxes a[n] and b[m] over the smaller one's area: 1 when one box
    lies inside the other (a part and its whole), where IoU may be small."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / torch.minimum(area_a[:, None], area_b[None, :]).clamp_min(1e-12)


def alignment_scores(
    word_embeddings: torch.Tensor,
    region_embeddings: torch.Tensor,
    cosine: bool = False,
    vocabulary: Optional[torch.Tensor] = None,
    logit_scale: float = 1.0,
) -> torch.Tensor:
    """[W, R] scores of each word for each region: `s_rw = v_r . t_w` (the paper's), with `cosine` on
    L2-normalised `v_r` (the words are unit vectors already). With `vocabulary` ([C, D], every class's
    t_c) the score is the teacher's own classifier's log-probability of the word over background and the
    whole vocabulary, `l s_rw - log(1 + sum_c exp(l s_rc))` (`l`: `logit_scale`; the background logit is
    0 as in `xpl.model.v2l.V2L.logits`): a region that some other class explains better (a pentagon for
    "hexagon") ranks lower than one that is the word's own.
    """
    regions = region_embeddings.float()
    if cosine:
        regions = regions / regions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scores = word_embeddings.float() @ regions.T
    if vocabulary is None:
        return scores
    logits = logit_scale * (vocabulary.float() @ regions.T)  # [C, R]
    normaliser = torch.logsumexp(torch.cat([torch.zeros_like(logits[:1]), logits]), dim=0)
    return logit_scale * scores - normaliser


def pick_regions(
    word_embeddings: torch.Tensor,
    region_embeddings: torch.Tensor,
    boxes: torch.Tensor,
    counts: Sequence[int],
    threshold: Optional[float] = None,
    cosine: bool = False,
    vocabulary: Optional[torch.Tensor] = None,
    logit_scale: float = 1.0,
) -> list[tuple[int, int, float]]:
    """(word index, region index, score) of each pick: per word its `counts[w]` best regions by
    `alignment_scores`, best first, a region skipped when it lies on an object the word already has
    (`overlap_of_smaller` >= `SAME_OBJECT` with one of its picks) or scores below `threshold`. With counts
    of 1 this is the top-1 region per word. Ties go to the lowest region index.
    """
    if region_embeddings.shape[0] == 0 or word_embeddings.shape[0] == 0:
        return []
    scores = alignment_scores(word_embeddings, region_embeddings, cosine, vocabulary, logit_scale)  # [W, R]
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    overlap = overlap_of_smaller(boxes.float(), boxes.float()) >= SAME_OBJECT if max(counts) > 1 else None
    picks = []
    for w, count in enumerate(counts):
        chosen: list[int] = []
        for r in order[w].tolist():
            if len(chosen) == count or (threshold is not None and scores[w, r] < threshold):
                break
            if overlap is None or not bool(overlap[r, chosen].any()):
                chosen.append(r)
        picks += [(w, r, float(scores[w, r])) for r in chosen]
    return picks


@dataclass(frozen=True)
class Selection:
    """The best region of each kept word, as the teacher saw it: what the teacher actor hands on.

    Pasting and encoding masks (`build_instances`) is CPU work at the original image size, so it
    runs in the writer and the teacher actor spends its time on the model; the selection travels
    there as Arrow columns (`xpl.pseudo.selection_columns`).
    """

    words: list[tuple[int, str, str]]  # (category_id, name, phrase) per kept word
    scores: np.ndarray  # [K] alignment scores s_rw
    boxes: np.ndarray  # [K, 4] xyxy in the teacher's pixels
    mask_probs: np.ndarray  # [K, M, M] box-relative mask probabilities
    region_scores: np.ndarray  # [K] objectness
    reason: Optional[str] = None  # why K == 0
    tight_boxes: bool = False  # the instance box is its mask's tight box (grown selections)


def drop_repeats(selection: Selection) -> Selection:
    """Without the picks whose box lies on the same object (`overlap_of_smaller` >= `SAME_OBJECT`) as an
    earlier pick of the same class: grown boxes of two parts of one object end up on the whole."""
    boxes = torch.from_numpy(selection.boxes).float()
    overlap = overlap_of_smaller(boxes, boxes) >= SAME_OBJECT
    keep: list[int] = []
    for k, word in enumerate(selection.words):
        if not any(selection.words[j][0] == word[0] and bool(overlap[k, j]) for j in keep):
            keep.append(k)
    if len(keep) == len(selection.words):
        return selection
    return dataclasses.replace(selection, words=[selection.words[k] for k in keep], scores=selection.scores[keep],
                               boxes=selection.boxes[keep], mask_probs=selection.mask_probs[keep],
                               region_scores=selection.region_scores[keep])


@dataclass(frozen=True)
class RegionChoice:
    """How caption words choose the teacher's regions, built once from the `pseudolabel` config
    (`from_config`) and handed to whatever chooses: the teacher actor, the writer, the benchmark, the study.

    Candidates: the teacher's refined RPN proposals, NMS at `candidate_nms` (1.0: none), the best
    `candidates` kept, with the `flip` test. Scores: the dot product (`cosine`: with unit region vectors),
    or with `vocabulary` ([C, D], every class's t_c) the teacher's log-probability of the word at
    `logit_scale` (`alignment_scores`); picks below `score_threshold` are dropped. Each word keeps up to
    `max_per_word` regions (as many as it names); chosen boxes grow by `grow` factors until their mask
    touches at most `grow_touch` of the border (`grow_sides`: only the crossed sides move). Masks are
    binarised at `mask_threshold`.
    """

    candidates: int
    candidate_nms: float
    flip: bool
    cosine: bool
    vocabulary: Optional[torch.Tensor]
    logit_scale: float
    score_threshold: Optional[float]
    max_per_word: int
    grow: tuple[float, ...]
    grow_touch: float
    grow_sides: bool
    mask_threshold: float

    @classmethod
    def from_config(cls, pl: Any, class_embeddings: Optional[torch.Tensor] = None,
                    logit_scale: float = 1.0) -> "RegionChoice":
        """The choice of a `pseudolabel` config section; `vocabulary_softmax` scores need the vocabulary's
        [C, D] `class_embeddings` and the teacher's `logit_scale` (`model.logit_scale`)."""
        vocabulary = None
        if pl.vocabulary_softmax:
            if class_embeddings is None:
                raise ValueError("pseudolabel.vocabulary_softmax needs the vocabulary's class embeddings")
            vocabulary = torch.as_tensor(class_embeddings, dtype=torch.float32)
        return cls(candidates=int(pl.candidates), candidate_nms=float(pl.candidate_nms), flip=bool(pl.flip),
                   cosine=bool(pl.cosine), vocabulary=vocabulary, logit_scale=float(logit_scale),
                   score_threshold=pl.score_threshold, max_per_word=int(pl.max_per_word),
                   grow=tuple(float(f) for f in pl.grow), grow_touch=float(pl.grow_touch),
                   grow_sides=bool(pl.grow_sides), mask_threshold=float(pl.mask_threshold))

    def regions(self, model: Any, images: list[torch.Tensor]) -> list[Any]:
        """The teacher's candidate regions of `images` (eval mode), their masks left to the picks."""
        return model.regions(images, masks=False, flip=self.flip, max_regions=self.candidates,
                             nms_thresh=self.candidate_nms)

    def select(self, words: Sequence[Sequence[Word]], regions: Sequence[RegionsLike]) -> list[Selection]:
        """The selection of each image (its words, its regions): `select_batch`."""
        return select_batch(words, regions, self)


def masks_for(requests: Sequence[tuple[RegionsLike, torch.Tensor]]) -> list[torch.Tensor]:
    """The mask head's [K, M, M] probabilities (CPU, fp32) for each (regions, [K, 4] boxes) request.
    Requests on images of one model batch (a `masks_in` with a `batch`: `xpl.model.detector.ImageMasks`)
    go through the mask head in one call; other `masks_in` are called one by one."""
    out: list[Optional[torch.Tensor]] = [None] * len(requests)
    batches: dict[int, tuple[Any, list[int]]] = {}
    for k, (regions, boxes) in enumerate(requests):
        if regions.masks_in is None:
            raise ValueError("these regions have no mask head (`masks_in`) to ask for masks")
        batch = getattr(regions.masks_in, "batch", None)
        if batch is None:
            out[k] = regions.masks_in(boxes).cpu().float()
        else:
            batches.setdefault(id(batch), (batch, []))[1].append(k)
    for batch, ks in batches.values():
        for k, probs in zip(ks, batch([(requests[k][0].masks_in.index, requests[k][1]) for k in ks])):
            out[k] = probs.cpu().float()
    return out  # type: ignore[return-value]


def _masks_of(regions: Sequence[RegionsLike], image: torch.Tensor) -> MasksOf:
    """The mask head for picks of several images (`image[row]`: the image of each pick), one request per image."""

    def masks(rows: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        of = image[rows]
        groups = [torch.nonzero(of == i).flatten() for i in torch.unique(of).tolist()]
        probs = masks_for([(regions[int(of[g[0]])], boxes[g]) for g in groups])
        out = torch.empty((len(rows), *probs[0].shape[1:]))
        for g, p in zip(groups, probs):
            out[g] = p
        return out

    return masks


def grow_selections(selections: Sequence[Selection], regions: Sequence[RegionsLike],
                    choice: RegionChoice) -> list[Selection]:
    """Each chosen box grown as `choice` says (`xpl.pseudo.grow`: about its centre, or its crossed sides
    only), with the mask head's probabilities in the new box. The images' picks grow together, one
    mask-head request per image and step (`masks_for`)."""
    counts = [len(s.words) for s in selections]
    if not choice.grow or not sum(counts) or any(r.masks_in is None for r, n in zip(regions, counts) if n):
        return list(selections)
    image = torch.repeat_interleave(torch.arange(len(selections)), torch.tensor(counts))
    heights = torch.tensor([float(r.image_size[0]) for r in regions])[image]
    widths = torch.tensor([float(r.image_size[1]) for r in regions])[image]
    grow = grow_sides if choice.grow_sides else grow_about_centre
    boxes, probs = grow(torch.from_numpy(np.concatenate([s.boxes for s in selections if s.words])).float(),
                        torch.from_numpy(np.concatenate([s.mask_probs for s in selections if s.words])).float(),
                        heights, widths, _masks_of(regions, image), choice.grow, choice.grow_touch,
                        choice.mask_threshold)
    return [dataclasses.replace(s, boxes=b.numpy(), mask_probs=p.numpy(), tight_boxes=True) if s.words else s
            for s, b, p in zip(selections, boxes.split(counts), probs.split(counts))]


def _picked(words: Sequence[Word], regions: RegionsLike, choice: RegionChoice) -> tuple[Selection, bool]:
    """The picks of one image without growth (their masks left empty when the regions carry none),
    and whether a word may have picked several regions."""
    words = unique_words(words)
    mask_size = tuple(regions.mask_probs.shape[1:]) if regions.mask_probs is not None else (0, 0)
    empty = Selection([], np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
                      np.zeros((0, *mask_size), np.float32), np.zeros(0, np.float32))
    if regions.boxes.shape[0] == 0:
        return dataclasses.replace(empty, reason=NO_REGIONS), False
    dim = regions.embeddings.shape[1]
    embeddings = torch.stack([w.embedding for w in words]) if words else torch.zeros(0, dim)
    counts = [min(w.count, choice.max_per_word) for w in words]
    picks = pick_regions(embeddings, regions.embeddings.cpu(), regions.boxes.cpu(), counts, choice.score_threshold,
                         choice.cosine, choice.vocabulary, choice.logit_scale)
    if not picks:
        return dataclasses.replace(empty, reason=BELOW_THRESHOLD), False
    index = torch.tensor([r for _, r, _ in picks], device=regions.boxes.device)
    masks = regions.mask_probs[index].float().cpu().numpy() if regions.mask_probs is not None else empty.mask_probs
    return Selection(
        words=[(words[w].category_id, words[w].name, words[w].phrase) for w, _, _ in picks],
        scores=np.array([s for _, _, s in picks], dtype=np.float32),
        boxes=regions.boxes[index].float().cpu().numpy(),
        mask_probs=masks,
        region_scores=regions.scores[index].float().cpu().numpy(),
    ), max(counts) > 1


def select_batch(words: Sequence[Sequence[Word]], regions: Sequence[RegionsLike],
                 choice: RegionChoice) -> list[Selection]:
    """`select_regions` for each image (its words, its regions), the images' mask-head work together: the
    masks of the picks (when `regions(masks=False)` left them out) in one request per image, then growth."""
    picked = [_picked(w, r, choice) for w, r in zip(words, regions, strict=True)]
    selections = [s for s, _ in picked]
    missing = [k for k, s in enumerate(selections) if s.words and regions[k].mask_probs is None]
    if missing:
        probs = masks_for([(regions[k], torch.from_numpy(selections[k].boxes)) for k in missing])
        for k, p in zip(missing, probs):
            selections[k] = dataclasses.replace(selections[k], mask_probs=p.numpy())
    selections = grow_selections(selections, regions, choice)
    return [drop_repeats(s) if several and s.tight_boxes else s for s, (_, several) in zip(selections, picked)]


def select_regions(words: Sequence[Word], regions: RegionsLike, choice: RegionChoice) -> Selection:
    """The best region of each (class-unique) word, or its `count` best on different objects (at most
    `choice.max_per_word`; 1 is the paper's top-1); regions below `choice.score_threshold` are not picked;
    the chosen boxes grown when `choice.grow` factors are given (`select_batch` on one image)."""
    return select_batch([words], [regions], choice)[0]
