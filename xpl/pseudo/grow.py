"""Box growth: a chosen box is enlarged until the teacher's mask no longer runs into its border.

A base-trained teacher often points a novel word at a part of its object (half a crescent, an arrow's
head), as a region of the whole object was background in its training. The mask head knows better: a
mask cut off by its box's border means the object goes on. Pure tensor geometry; `masks` is the mask
head on new boxes (`xpl.pseudo.choice.grow_selections` asks it for a batch of images at once).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

MasksOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pick rows, [n, 4] boxes) -> [n, M, M]


def expand_boxes(boxes: torch.Tensor, factor: float, height: float | torch.Tensor,
                 width: float | torch.Tensor) -> torch.Tensor:
    """[K, 4] xyxy boxes scaled by `factor` about their centres, clipped to the image (`height` and
    `width` one number, or one per box)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    grown = torch.cat([centre - half, centre + half], dim=1).clamp_min(0)
    w, h = torch.as_tensor(width, dtype=grown.dtype), torch.as_tensor(height, dtype=grown.dtype)
    return torch.minimum(grown, torch.stack(torch.broadcast_tensors(w, h, w, h), dim=-1).to(grown.device))


def side_cells(masks: torch.Tensor, boxes: torch.Tensor, height: float | torch.Tensor,
               width: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([K, 4] set cells, [K, 4] cells) on each side (left, top, right, bottom: xyxy order) of each
    box-relative [M, M] binary mask. Sides lying on the image's edge count nothing (an object cut by the
    image cannot grow there). `height` and `width`: one number, or one per box."""
    sides = [masks[:, :, 0], masks[:, 0, :], masks[:, :, -1], masks[:, -1, :]]
    inner = torch.stack([boxes[:, 0] > 0, boxes[:, 1] > 0, boxes[:, 2] < width, boxes[:, 3] < height], dim=1)
    hits = torch.stack([side.float().sum(dim=1) for side in sides], dim=1) * inner
    cells = torch.tensor([float(side.shape[1]) for side in sides], device=masks.device) * inner
    return hits, cells


def border_touch(masks: torch.Tensor, boxes: torch.Tensor, height: float | torch.Tensor,
                 width: float | torch.Tensor) -> torch.Tensor:
    """[K] share of the border cells of each box-relative [M, M] binary mask that are set (per side,
    so a corner counts for both of its sides); sides on the image's edge are left out (`side_cells`),
    and a box on the edge at all four sides touches nothing."""
    hits, cells = side_cells(masks, boxes, height, width)
    return hits.sum(dim=1) / cells.sum(dim=1).clamp_min(1)


def grow_about_centre(boxes: torch.Tensor, probs: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
                      masks: MasksOf, factors: Sequence[float], touch: float,
                      mask_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box scaled about its centre by the first of 1, *`factors` whose mask touches at most `touch` of its
    border (the last factor when none does): the grown boxes and their mask probabilities (all factors in one
    `masks` call)."""
    candidates = [boxes] + [expand_boxes(boxes, f, height, width) for f in factors]
    rows = torch.arange(len(boxes)).repeat(len(factors))
    masks_by_factor = [probs] + list(masks(rows, torch.cat(candidates[1:])).split(len(boxes)))
    chosen = torch.full((len(boxes),), len(candidates) - 1)
    for step in reversed(range(len(candidates))):
        fits = border_touch(masks_by_factor[step] >= mask_threshold, candidates[step], height, width) <= touch
        chosen = torch.where(fits, torch.full_like(chosen, step), chosen)
    pick = torch.arange(len(boxes))
    return torch.stack(candidates)[chosen, pick], torch.stack(masks_by_factor)[chosen, pick]


def grow_sides(boxes: torch.Tensor, probs: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
               masks: MasksOf, factors: Sequence[float], touch: float,
               mask_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box's crossed sides only (more than `touch` of that side's cells set) moved, one factor after the
    other, each to where `expand_boxes` would put it, until the mask touches at most `touch` of the border: an
    object cut off on one side is followed there, without the box taking in neighbours on the other sides (one
    `masks` call per factor, for the boxes that do not fit yet)."""
    box, prob = boxes.clone(), probs.clone()
    for factor in factors:
        hits, cells = side_cells(prob >= mask_threshold, box, height, width)
        open_ = hits.sum(dim=1) / cells.sum(dim=1).clamp_min(1) > touch
        if not open_.any():
            break
        crossed = (hits / cells.clamp_min(1) > touch) & open_[:, None]
        box = torch.where(crossed, expand_boxes(boxes, factor, height, width), box)
        rows = torch.nonzero(open_).flatten()
        prob[rows] = masks(rows, box[rows])
    return box, prob
