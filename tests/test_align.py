"""Cross-modal alignment on constructed tensors with known answers."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pytest
import torch

from omegaconf import OmegaConf

from xpl.config import PseudoLabelConfig
from xpl.data import rle
from xpl.pseudo.choice import (
    BELOW_THRESHOLD,
    NO_REGIONS,
    RegionChoice,
    Selection,
    Word,
    alignment_scores,
    caption_words,
    drop_repeats,
    overlap_of_smaller,
    pick_regions,
    select_batch,
    select_regions,
    unique_words,
)
from xpl.pseudo.grow import border_touch, expand_boxes, side_cells
from xpl.pseudo.paste import EMPTY_MASK, align_image, build_instances, paste_masks
from xpl.pseudo.selection_columns import read_selections, selection_columns


def choice(**changes) -> RegionChoice:
    """The config's default choice (the paper's top-1 dot product), with `changes`."""
    return dataclasses.replace(RegionChoice.from_config(OmegaConf.structured(PseudoLabelConfig)), **changes)


@dataclass
class FakeRegions:  # the teacher's output format: plain tensors, no model involved
    boxes: torch.Tensor
    embeddings: torch.Tensor
    scores: torch.Tensor
    mask_probs: torch.Tensor
    image_size: tuple[int, int] = (40, 50)
    masks_in: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


def unit(*values: float) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float32)
    return v / v.norm()


def regions_two_boxes() -> FakeRegions:
    """Region 0 points along x, region 1 along y; both masks fill their box with probability 0.8.

    (torchvision's paste interpolates against a zero border, so a mask of constant 0.8 pastes to
    exactly its box's pixels when the box lies on whole pixels inside the image.)
    """
    return FakeRegions(
        boxes=torch.tensor([[5.0, 5.0, 15.0, 15.0], [20.0, 10.0, 40.0, 30.0]]),
        embeddings=torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.5]]),
        scores=torch.tensor([0.9, 0.7]),
        mask_probs=torch.full((2, 14, 14), 0.8),
    )


def test_pick_regions_top1_scores_and_threshold():
    words = torch.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)])
    regions = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.5]])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 14.0, 14.0]])
    picks = pick_regions(words, regions, boxes, [1, 1, 1])
    assert [(w, r) for w, r, _ in picks] == [(0, 0), (1, 1), (2, 1)]
    assert [s for _, _, s in picks] == pytest.approx([2.0, 3.0, 0.5])
    assert [(w, r) for w, r, _ in pick_regions(words, regions, boxes, [1, 1, 1], threshold=1.0)] == [(0, 0), (1, 1)]
    picks = pick_regions(words, regions, boxes, [1, 1, 1], cosine=True)
    assert picks[0][2] == pytest.approx(1.0) and picks[1][2] == pytest.approx(3 / np.hypot(3, 0.5))


def test_vocabulary_scores_are_the_log_probability_of_the_word_and_prefer_a_region_no_other_class_explains():
    hexagon, pentagon = unit(1, 0), unit(0.8, 0.6)
    regions = torch.tensor([[2.0, 1.5], [1.8, 0.0]])  # a pentagon (close to "hexagon" too), a hexagon
    vocabulary = torch.stack([hexagon, pentagon])
    assert alignment_scores(hexagon[None], regions).tolist()[0] == pytest.approx([2.0, 1.8])
    scores = alignment_scores(hexagon[None], regions, vocabulary=vocabulary)[0]
    want = [2.0 - math.log(1 + math.exp(2.0) + math.exp(2.5)), 1.8 - math.log(1 + math.exp(1.8) + math.exp(1.44))]
    assert scores.tolist() == pytest.approx(want, abs=1e-5)
    scaled = alignment_scores(hexagon[None], regions, vocabulary=vocabulary, logit_scale=2.0)[0]
    assert scaled[1].item() == pytest.approx(3.6 - math.log(1 + math.exp(3.6) + math.exp(2.88)), abs=1e-5)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 14.0, 14.0]])
    assert [r for _, r, _ in pick_regions(hexagon[None], regions, boxes, [1])] == [0]  # the paper's dot product
    assert [r for _, r, _ in pick_regions(hexagon[None], regions, boxes, [1], vocabulary=vocabulary)] == [1]


def test_the_choice_from_config_turns_the_vocabulary_flag_into_the_vocabulary():
    pl = OmegaConf.structured(PseudoLabelConfig)
    vocabulary = torch.eye(3)
    plain = RegionChoice.from_config(pl, vocabulary, 2.0)
    assert plain.vocabulary is None and (plain.candidates, plain.candidate_nms, plain.max_per_word) == (1000, 1.0, 1)
    scored = RegionChoice.from_config(OmegaConf.merge(pl, {"vocabulary_softmax": True, "grow": [1.5]}), vocabulary,
                                      2.0)
    assert torch.equal(scored.vocabulary, vocabulary) and scored.logit_scale == 2.0 and scored.grow == (1.5,)
    with pytest.raises(ValueError, match="class embeddings"):
        RegionChoice.from_config(OmegaConf.merge(pl, {"vocabulary_softmax": True}))


def test_pick_regions_no_regions():
    assert pick_regions(torch.eye(2), torch.zeros(0, 2), torch.zeros(0, 4), [1, 1]) == []


def test_overlap_of_smaller_is_one_for_a_part_inside_its_whole():
    whole = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    others = torch.tensor([[2.0, 2.0, 4.0, 6.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert overlap_of_smaller(whole, others).tolist() == [[1.0, 0.5, 0.0]]


def test_a_word_naming_two_objects_picks_its_two_best_regions_on_different_objects():
    # regions 0 and 1 lie on one object (1 inside 0), region 2 on another, region 3 scores lowest
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 6.0, 6.0], [20.0, 0.0, 30.0, 10.0],
                          [0.0, 20.0, 5.0, 25.0]])
    embeddings = torch.tensor([[4.0, 0.0], [5.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    words = torch.stack([unit(1, 0)])
    assert [r for _, r, _ in pick_regions(words, embeddings, boxes, [1])] == [1]
    assert [r for _, r, _ in pick_regions(words, embeddings, boxes, [2])] == [1, 2]
    assert [r for _, r, _ in pick_regions(words, embeddings, boxes, [3])] == [1, 2, 3]
    assert [r for _, r, _ in pick_regions(words, embeddings, boxes, [3], threshold=2.0)] == [1, 2]
    regions = FakeRegions(boxes, embeddings, torch.full((4,), 0.5), torch.full((4, 14, 14), 0.8))
    moons = [Word(5, "moon", "moons", unit(1, 0), count=2)]
    assert select_regions(moons, regions, choice()).boxes.tolist() == [[1.0, 1.0, 6.0, 6.0]]  # the paper's top-1
    two = select_regions(moons, regions, choice(max_per_word=5))
    assert two.words == [(5, "moon", "moons")] * 2 and two.scores.tolist() == [5.0, 3.0]
    assert two.boxes.tolist() == [[1.0, 1.0, 6.0, 6.0], [20.0, 0.0, 30.0, 10.0]]
    assert len(build_instances(through_columns(two), height=40, width=50, mask_threshold=0.5).instances) == 2


def test_drop_repeats_keeps_the_first_pick_per_object_and_class():
    selection = Selection(
        words=[(5, "moon", "moons"), (5, "moon", "moons"), (6, "arrow", "arrow"), (5, "moon", "moons")],
        scores=np.array([5.0, 4.0, 3.0, 2.0], np.float32),
        boxes=np.array([[0, 0, 10, 10], [2, 2, 8, 8], [1, 1, 9, 9], [20, 0, 30, 10]], np.float32),
        mask_probs=np.zeros((4, 2, 2), np.float32), region_scores=np.zeros(4, np.float32))
    kept = drop_repeats(selection)
    assert kept.words == [(5, "moon", "moons"), (6, "arrow", "arrow"), (5, "moon", "moons")]
    assert kept.scores.tolist() == [5.0, 3.0, 2.0] and kept.mask_probs.shape == (3, 2, 2)


def test_grown_parts_of_one_object_become_one_instance():
    head = object_mask_head((10.0, 10.0, 30.0, 30.0))
    parts = torch.tensor([[14.0, 14.0, 26.0, 26.0], [12.0, 20.0, 20.0, 28.0]])  # overlap of smaller 0.5
    regions = FakeRegions(parts, torch.tensor([[2.0, 0.0], [1.0, 0.0]]), torch.tensor([0.5, 0.5]), head(parts),
                          image_size=(40, 50), masks_in=head)
    words = [Word(7, "moon", "moons", unit(1, 0), count=2)]
    assert len(select_regions(words, regions, choice(max_per_word=2)).words) == 1  # the same object: not picked twice
    apart = FakeRegions(parts[:1], regions.embeddings[:1], regions.scores[:1], head(parts[:1]), image_size=(40, 50),
                        masks_in=head)
    grown = select_regions(words, apart, choice(grow=(1.5, 2.0), max_per_word=2))
    assert grown.words == [(7, "moon", "moons")]


def test_caption_words_from_rows_and_the_count_of_repeated_classes():
    embeddings = {1: unit(1, 0), 2: unit(0, 1)}
    rows = [{"category_id": 1, "name": "circle", "phrase": "disk"},
            {"category_id": 2, "name": "moon", "phrase": "moons", "count": 3},
            {"category_id": 1, "name": "circle", "phrase": "circles", "count": 2}]
    words = caption_words(rows, embeddings)
    assert [(w.category_id, w.count) for w in words] == [(1, 1), (2, 3), (1, 2)]
    assert torch.equal(words[1].embedding, embeddings[2])
    assert [(w.phrase, w.count) for w in unique_words(words)] == [("disk", 2), ("moons", 3)]


def test_paste_masks_fills_box_only():
    probs = paste_masks(torch.ones(1, 28, 28), torch.tensor([[10.0, 5.0, 30.0, 25.0]]), 40, 50)
    assert probs.shape == (1, 40, 50)
    mask = probs[0] >= 0.5
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())) == (10, 29, 5, 24)


def test_align_image_builds_instances_with_known_answers():
    words = [Word(3, "circle", "disc", unit(1, 0, 0)), Word(5, "moon", "crescent", unit(0, 1, 0))]
    result = align_image(words, regions_two_boxes(), choice(), height=40, width=50)
    assert result.reason is None
    first, second = result.instances
    assert (first.category_id, first.name, first.phrase) == (3, "circle", "disc")
    assert first.box == (5.0, 5.0, 15.0, 15.0) and second.box == (20.0, 10.0, 40.0, 30.0)
    assert first.align_score == pytest.approx(2.0) and second.align_score == pytest.approx(3.0)
    assert first.mask_score == pytest.approx(0.8, abs=0.01) and first.region_score == pytest.approx(0.9)
    mask = rle.decode(second.segmentation, 40, 50)
    expected = np.zeros((40, 50), bool)
    expected[10:30, 20:40] = True
    assert (mask == expected).all()
    js = second.to_json()
    assert js["bbox"] == [20.0, 10.0, 20.0, 20.0] and js["area"] == 400
    assert isinstance(js["segmentation"]["counts"], str)


def test_align_image_box_scale_maps_to_original_pixels():
    words = [Word(1, "circle", "circle", unit(1, 0, 0))]
    result = align_image(words, regions_two_boxes(), choice(), height=80, width=100, box_scale=2.0)
    assert result.instances[0].box == (10.0, 10.0, 30.0, 30.0)
    mask = rle.decode(result.instances[0].segmentation, 80, 100)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 29, 10, 29)
    assert mask.sum() >= 0.98 * 400


def test_mask_binarised_at_threshold():
    regions = regions_two_boxes()
    regions.mask_probs[0, :, :7] = 0.3  # left half of box 0 below 0.5
    words = [Word(1, "circle", "circle", unit(1, 0, 0))]
    inst = align_image(words, regions, choice(), height=40, width=50).instances[0]
    mask = rle.decode(inst.segmentation, 40, 50)
    assert 40 <= mask.sum() <= 60 and not mask[:, :9].any()  # the right half of the 10x10 box
    assert inst.mask_score > 0.7  # mean over the kept pixels only (the 0.3 half is not in it)
    looser = align_image(words, regions, choice(mask_threshold=0.25), height=40, width=50).instances[0]
    assert rle.area(looser.segmentation) == 100


def test_reasons_for_no_instances():
    word = [Word(1, "circle", "circle", unit(0, 0, 1))]
    empty = FakeRegions(torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 14, 14))
    assert align_image(word, empty, choice(), height=8, width=8).reason == NO_REGIONS
    assert align_image(word, regions_two_boxes(), choice(score_threshold=0.6), height=40,
                       width=50).reason == BELOW_THRESHOLD
    faint = regions_two_boxes()
    faint.mask_probs[:] = 0.1
    result = align_image(word, faint, choice(), height=40, width=50)
    assert result.instances == [] and result.reason == EMPTY_MASK


def test_one_word_per_class():
    words = [Word(2, "square", "box", unit(1, 0, 0)), Word(2, "square", "squares", unit(1, 0, 0))]
    assert [w.phrase for w in unique_words(words)] == ["box"]
    assert len(align_image(words, regions_two_boxes(), choice(), height=40, width=50).instances) == 1


def through_columns(selection: Selection) -> Selection:
    """The selection as it reaches the writer: Arrow columns in an Arrow table (with a null row beside it)."""
    table = pa.table(selection_columns([None, selection]))
    none, again = read_selections(table)
    assert none is None
    return again


def test_selection_travels_as_columns_and_builds_the_same_instances():
    words = [Word(3, "circle", "disc", unit(1, 0, 0)), Word(5, "moon", "crescent", unit(0, 1, 0))]
    selection = select_regions(words, regions_two_boxes(), choice())
    assert selection.words == [(3, "circle", "disc"), (5, "moon", "crescent")]
    assert selection.mask_probs.shape == (2, 14, 14) and selection.scores.tolist() == pytest.approx([2.0, 3.0])
    again = through_columns(selection)
    assert again.words == selection.words and (again.boxes == selection.boxes).all()
    built = build_instances(again, height=40, width=50, mask_threshold=0.5)
    assert built.instances == align_image(words, regions_two_boxes(), choice(), height=40, width=50).instances
    below = select_regions(words, regions_two_boxes(), choice(score_threshold=10.0))
    built = build_instances(through_columns(below), height=4, width=4, mask_threshold=0.5)
    assert below.words == [] and built.reason == BELOW_THRESHOLD


def test_expand_boxes_about_the_centre_and_clipped():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    grown = expand_boxes(boxes, 1.5, height=40, width=50)
    assert grown.tolist() == [[7.5, 5.0, 22.5, 35.0], [0.0, 0.0, 12.5, 12.5]]


def test_border_touch_counts_set_border_cells_away_from_the_image_edge():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True  # inside: touches nothing
    masks[1, :, 0] = True  # the whole left column
    inner = torch.tensor([[5.0, 5.0, 15.0, 15.0], [5.0, 5.0, 15.0, 15.0]])
    # 4 cells on the left side plus a corner on the top and on the bottom side, of 4 x 4 side cells
    assert border_touch(masks, inner, 40, 50).tolist() == [0.0, 6 / 16]
    on_left_edge = torch.tensor([[0.0, 5.0, 15.0, 15.0]])
    # the image cuts it on the left: only the top and bottom sides' corner cells count, 2 of 12
    assert border_touch(masks[1:], on_left_edge, 40, 50).tolist() == [pytest.approx(2 / 12)]
    everywhere = torch.tensor([[0.0, 0.0, 50.0, 40.0]])
    assert border_touch(torch.ones(1, 4, 4, dtype=torch.bool), everywhere, 40, 50).tolist() == [0.0]


def object_mask_head(*objects: tuple[float, float, float, float],
                     size: int = 14) -> Callable[[torch.Tensor], torch.Tensor]:
    """A mask head that knows some square objects: probability 0.9 on their pixels inside each box."""

    def masks_in(boxes: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(boxes), size, size)
        for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            xs = x0 + (torch.arange(size) + 0.5) * (x1 - x0) / size
            ys = y0 + (torch.arange(size) + 0.5) * (y1 - y0) / size
            for obj in objects:
                inside_x = (xs >= obj[0]) & (xs < obj[2])
                inside_y = (ys >= obj[1]) & (ys < obj[3])
                out[k] += 0.9 * (inside_y[:, None] & inside_x[None, :]).float()
        return out

    return masks_in


def test_a_part_box_grows_until_its_mask_fits_and_the_box_becomes_the_mask_box():
    head = object_mask_head((10.0, 10.0, 30.0, 30.0))
    part = torch.tensor([[14.0, 14.0, 26.0, 26.0]])  # the middle of the object: its mask fills the box
    regions = FakeRegions(part, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0.5]), head(part),
                          image_size=(40, 50), masks_in=head)
    words = [Word(7, "moon", "moon", unit(1, 0, 0))]
    plain = select_regions(words, regions, choice())
    assert plain.boxes.tolist() == [[14.0, 14.0, 26.0, 26.0]] and not plain.tight_boxes
    grown = select_regions(words, regions, choice(grow=(1.25, 1.5, 2.0)))
    assert grown.boxes.tolist() == [[8.0, 8.0, 32.0, 32.0]] and grown.tight_boxes  # 1.25 still touches
    again = through_columns(grown)
    assert again.tight_boxes
    inst = build_instances(again, height=40, width=50, mask_threshold=0.5).instances[0]
    assert inst.box == pytest.approx((10.0, 10.0, 30.0, 30.0), abs=1.0)
    grown_box = align_image(words, regions, choice(grow=(1.25, 1.5, 2.0)), height=40, width=50).instances[0].box
    assert grown_box == inst.box
    short = select_regions(words, regions, choice(grow=(1.25,)))
    assert short.boxes.tolist() == [[12.5, 12.5, 27.5, 27.5]]  # none fits: the largest factor


def test_a_box_whose_mask_fits_keeps_its_size():
    head = object_mask_head((10.0, 10.0, 30.0, 30.0))
    whole = torch.tensor([[8.0, 8.0, 32.0, 32.0]])
    regions = FakeRegions(whole, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0.5]), head(whole),
                          image_size=(40, 50), masks_in=head)
    grown = select_regions([Word(7, "moon", "moon", unit(1, 0, 0))], regions, choice(grow=(1.5,)))
    assert grown.boxes.tolist() == [[8.0, 8.0, 32.0, 32.0]] and grown.tight_boxes


class CountingBatch:
    """A model batch of fake images, one `object_mask_head` each: records the images of each call."""

    def __init__(self, *heads: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.heads, self.calls = heads, []

    def __call__(self, requests: list[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
        self.calls.append([index for index, _ in requests])
        return [self.heads[index](boxes) for index, boxes in requests]


@dataclass
class BatchImage:  # `masks_in` of one image of a CountingBatch
    batch: CountingBatch
    index: int

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        return self.batch([(self.index, boxes)])[0]


def test_select_batch_asks_the_mask_head_once_per_step_for_all_images_and_matches_one_by_one():
    heads = object_mask_head((10.0, 10.0, 30.0, 30.0)), object_mask_head((6.0, 6.0, 34.0, 24.0))
    parts = torch.tensor([[6.0, 14.0, 22.0, 26.0]]), torch.tensor([[12.0, 10.0, 28.0, 20.0]])
    words = [Word(7, "moon", "moon", unit(1, 0, 0))]
    options = {"grow": (1.5, 2.0, 2.5), "grow_sides": True}
    one_by_one = [select_regions(words, FakeRegions(part, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0.5]),
                                                    head(part), masks_in=head), choice(**options))
                  for part, head in zip(parts, heads)]
    batch = CountingBatch(*heads)
    lazy = [FakeRegions(part, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0.5]), None,
                        masks_in=BatchImage(batch, i)) for i, part in enumerate(parts)]
    nothing = FakeRegions(torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), None, masks_in=BatchImage(batch, 2))
    together = select_batch([words, words, words], [*lazy, nothing], choice(**options))
    for alone, batched in zip(one_by_one, together):
        assert batched.words == alone.words and batched.tight_boxes
        assert np.array_equal(batched.boxes, alone.boxes) and np.array_equal(batched.mask_probs, alone.mask_probs)
    assert together[0].boxes.tolist() == [[6.0, 8.0, 34.0, 32.0]]  # as in the side-growth test below
    assert together[1].boxes.tolist() == [[4.0, 5.0, 36.0, 25.0]]  # x2 on every side: its mask fits
    assert together[2].reason == NO_REGIONS
    # the picks' masks, then x1.5 and x2 for both images; the second fits at x2, so x2.5 asks for the first only
    assert batch.calls == [[0, 1], [0, 1], [0, 1], [0]]


def test_side_cells_counts_each_side_and_skips_the_image_edge():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :, 0] = True  # the left column: all 4 left cells, one corner on the top and the bottom side
    hits, cells = side_cells(masks, torch.tensor([[5.0, 5.0, 15.0, 15.0]]), 40, 50)
    assert hits.tolist() == [[4.0, 1.0, 0.0, 1.0]] and cells.tolist() == [[4.0, 4.0, 4.0, 4.0]]
    hits, cells = side_cells(masks, torch.tensor([[0.0, 5.0, 50.0, 15.0]]), 40, 50)
    assert hits.tolist() == [[0.0, 1.0, 0.0, 1.0]] and cells.tolist() == [[0.0, 4.0, 0.0, 4.0]]


def test_side_growth_follows_the_object_and_leaves_the_free_side_where_it_was():
    obj, neighbour = (10.0, 10.0, 30.0, 30.0), (0.0, 12.0, 4.0, 28.0)
    head = object_mask_head(obj, neighbour)
    part = torch.tensor([[6.0, 14.0, 22.0, 26.0]])  # on the object's left half; its left side is free
    regions = FakeRegions(part, torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0.5]), head(part),
                          image_size=(40, 50), masks_in=head)
    words = [Word(7, "moon", "moon", unit(1, 0, 0))]
    # x1.5 moves the top, right and bottom (the mask crosses them) to 11, 26 and 29 (x1.5 about the centre
    # is [2, 11, 26, 29]); all three still cross, x2 moves them to 8, 30 and 32; only the right still
    # crosses, x2.5 moves it to 34, where the mask fits
    grown = select_regions(words, regions, choice(grow=(1.5, 2.0, 2.5), grow_sides=True))
    assert grown.boxes.tolist() == [[6.0, 8.0, 34.0, 32.0]] and grown.tight_boxes
    inst = build_instances(grown, height=40, width=50, mask_threshold=0.5).instances[0]
    assert inst.box == pytest.approx(obj, abs=1.0)
    # about the centre, x2.5 reaches the image's left edge and the pseudo mask takes in the neighbour
    centre = build_instances(select_regions(words, regions, choice(grow=(1.5, 2.0, 2.5))), height=40, width=50,
                             mask_threshold=0.5)
    assert centre.instances[0].box[0] == pytest.approx(0.0, abs=1.0)
