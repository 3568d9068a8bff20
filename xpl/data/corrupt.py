"""Controlled, seeded corruption of pseudo masks, for the noise study (`student.corrupt`).

A chosen share of a sample's instances gets one corruption each (the share may differ by class: a class-
systematic corruption), the kind drawn from `kinds`:
- dilate / erode: grow or shrink the mask by about 15 % of its box's shorter side;
- shift: move it by about 30 % of its box size in a random direction;
- drop: remove the part of it on one side of a random line through its centre;
- swap: take another instance's mask of the same image (a shift when the image has only one).
The draw depends only on the seed and the sample key, so every worker and every rerun corrupts the
same instances the same way.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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


def corrupt_instances(masks: Sequence[np.ndarray], key: str, *, share: float | Sequence[float], kinds: Sequence[str],
                      seed: int = 0) -> tuple[list[np.ndarray], list[bool]]:
    """Corrupt about `share` of a sample's masks (one share, or one per mask), seeded by (`seed`, `key`); return
    the masks (corrupted or unchanged) and which were corrupted."""
    shares = np.broadcast_to(np.asarray(share, dtype=float), (len(masks),))
    if ((shares < 0) | (shares > 1)).any():
        raise ValueError(f"corruption shares must be in [0, 1], got {share}")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    chosen = rng.random(len(masks)) < shares
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


@dataclass(frozen=True)
class Corruption:
    """The noise study's corruption of a run (`student.corrupt`): `share` of every class's instances, or the share
    `classes` gives a class (by vocabulary id), of `kinds`, seeded by `seed`."""

    share: float
    classes: Mapping[int, float]
    kinds: tuple[str, ...]
    seed: int

    @classmethod
    def from_config(cls, corrupt: Any, ids_by_name: Mapping[str, int]) -> "Corruption":
        """From a `student.corrupt` section, its class names turned into vocabulary ids (an unknown one is an error)."""
        unknown = sorted(set(corrupt.classes) - set(ids_by_name))
        if unknown:
            raise ValueError(f"student.corrupt.classes: {unknown} are not vocabulary classes")
        return cls(float(corrupt.share), {ids_by_name[n]: float(v) for n, v in corrupt.classes.items()},
                   tuple(corrupt.kinds), int(corrupt.seed))

    @property
    def active(self) -> bool:
        return self.share > 0 or any(v > 0 for v in self.classes.values())

    def __call__(self, masks: Sequence[np.ndarray], key: str,
                 category_ids: Sequence[int]) -> tuple[list[np.ndarray], list[bool]]:
        """A sample's masks, corrupted as configured, and which were (`corrupt_instances`)."""
        shares = [self.classes.get(c, self.share) for c in category_ids]
        return corrupt_instances(masks, key, share=shares, kinds=self.kinds, seed=self.seed)
