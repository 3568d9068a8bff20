"""Seeded pseudo-mask corruption for the noise study: each kind does what it says, and the draw is stable."""

from __future__ import annotations

import numpy as np
import pytest

from xpl.data.corrupt import KINDS, corrupt_instances, corrupt_mask


def _square(y0: int = 10, x0: int = 10, side: int = 20, size: int = 48) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def test_each_kind_changes_the_mask_as_described() -> None:
    rng = np.random.default_rng(0)
    mask = _square()
    dilated = corrupt_mask(mask, "dilate", rng)
    assert dilated.sum() > mask.sum() and (dilated & mask).sum() == mask.sum()
    eroded = corrupt_mask(mask, "erode", rng)
    assert 0 < eroded.sum() < mask.sum() and not (eroded & ~mask).any()
    shifted = corrupt_mask(mask, "shift", rng)
    assert 0 < shifted.sum() <= mask.sum() and (shifted & mask).sum() < mask.sum()
    dropped = corrupt_mask(mask, "drop", rng)
    assert 0 < dropped.sum() < mask.sum() and not (dropped & ~mask).any()
    other = _square(30, 30, 10)
    assert corrupt_mask(mask, "swap", rng, [other]).tolist() == other.tolist()
    assert (corrupt_mask(mask, "swap", rng) != mask).any()  # alone in its image: shifted instead
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_mask(mask, "blur", rng)


def test_share_and_seed_decide_which_instances() -> None:
    masks = [_square(2 * (i % 15), 3 * (i % 10), 10) for i in range(40)]
    out, flags = corrupt_instances(masks, "000000017", share=0.5, kinds=KINDS, seed=3)
    again, flags_again = corrupt_instances(masks, "000000017", share=0.5, kinds=KINDS, seed=3)
    assert flags == flags_again and all((a == b).all() for a, b in zip(out, again))
    assert 10 < sum(flags) < 30
    assert all((o == m).all() for o, m, f in zip(out, masks, flags) if not f)
    assert all((o != m).any() for o, m, f in zip(out, masks, flags) if f)
    assert corrupt_instances(masks, "000000017", share=0.0, kinds=KINDS)[1] == [False] * 40
    assert corrupt_instances(masks, "000000018", share=0.5, kinds=KINDS, seed=3)[1] != flags


def test_a_class_systematic_corruption_hits_its_class_at_its_own_share() -> None:
    from xpl.data.corrupt import Corruption

    masks = [_square(2 * (i % 15), 3 * (i % 10), 10) for i in range(40)]
    classes = [7 if i % 2 else 3 for i in range(40)]
    same = corrupt_instances(masks, "k", share=[0.5] * 40, kinds=KINDS, seed=3)[1]
    assert same == corrupt_instances(masks, "k", share=0.5, kinds=KINDS, seed=3)[1]  # one share or one per mask
    corrupt = Corruption(0.0, {7: 1.0}, KINDS, 3)
    assert corrupt.active and not Corruption(0.0, {7: 0.0}, KINDS, 3).active
    flags = corrupt(masks, "k", classes)[1]
    assert flags == [c == 7 for c in classes]
