"""Controlled, seeded corruption of pseudo masks, for the noise study (`student.corrupt`).

A chosen share of a sample's instances gets one corruption each, the kind drawn from `kinds`:
- dilate / erode: grow or shrink the mask by about 15 % of its box's shorter side;
- shift: move it by about 30 % of its box size in a random direction;
- drop: remove the part of it on one side of a random line through its centre;
- swap: take another instance's mask of the same image (a shift when the image has only one).
The draw depends only on the seed and the sample key, so every worker and every rerun corrupts the
same instances the same way.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

KINDS = ("dilate", "erode", "shift", "drop", "swap")


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour dilation, `steps` times."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _box_side(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0, 0
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def corrupt_mask(mask: np.ndarray, kind: str, rng: np.random.Generator,
                 others: Sequence[np.ndarray] = ()) -> np.ndarray:
    """One corrupted copy of a bool HxW mask (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; choose from {KINDS}")
    height, width = _box_side(mask)
    if height == 0:
        return mask.copy()
    if kind == "swap":
        if others:
            return others[int(rng.integers(len(others)))].copy()
        kind = "shift"
    if kind in ("dilate", "erode"):
        steps = max(1, round(0.15 * min(height, width)))
        return _grow(mask, steps) if kind == "dilate" else ~_grow(~mask, steps)
    if kind == "shift":
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = round(0.3 * height * np.sin(angle)), round(0.3 * width * np.cos(angle))
        out = np.zeros_like(mask)
        h, w = mask.shape
        src = mask[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        return out
    ys, xs = np.nonzero(mask)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    side = (xx - xs.mean()) * np.cos(angle) + (yy - ys.mean()) * np.sin(angle) > 0
    return mask & ~side


def corrupt_instances(masks: Sequence[np.ndarray], key: str, *, share: float, kinds: Sequence[str],
                      seed: int = 0) -> tuple[list[np.ndarray], list[bool]]:
    """Corrupt about `share` of a sample's masks, seeded by (`seed`, `key`); return the masks (corrupted
    or unchanged) and which were corrupted."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"corruption share must be in [0, 1], got {share}")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    chosen = rng.random(len(masks)) < share
    out, flags = [], []
    for i, (mask, pick) in enumerate(zip(masks, chosen)):
        if not pick:
            out.append(mask)
            flags.append(False)
            continue
        kind = kinds[int(rng.integers(len(kinds)))]
        others = [m for j, m in enumerate(masks) if j != i]
        out.append(corrupt_mask(mask, kind, rng, others))
        flags.append(True)
    return out, flags
