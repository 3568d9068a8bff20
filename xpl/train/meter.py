"""What the engine logs every `log_every` steps: means over the window and over all ranks, and images/s.

One step's loss says little (an untrained Mask R-CNN's loss jumps around) and rank 0's says nothing
of the other ranks, so the window's steps are summed on every rank and all-reduced. Images/s counts
only the time spent in steps (batch, forward, backward, optimizer): checkpointing and logging
between steps do not slow the next window down.

A ratio over the window (e.g. mean sigma over the pseudo instances of all steps, whatever each step
holds) is logged as two parts, `<name>.sum` and `<name>.count`, and reported as `<name>` = sum / count
(left out when the window counted nothing). Every rank must report the same part names every step.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import torch
import torch.distributed as dist


class WindowMeter:
    """Sums of one logging window on this rank; `summary` averages them over the window and all ranks."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps, self.images, self.seconds = 0, 0, 0.0

    def add(self, loss: float, parts: Mapping[str, float], images: int, seconds: float) -> None:
        """One step: its total loss, named loss parts, images and the seconds the step took."""
        self.sums["loss"] += loss
        for name, value in parts.items():
            self.sums[name] += value
        self.steps += 1
        self.images += images
        self.seconds += seconds

    def summary(self, device: torch.device) -> dict[str, float]:
        """Mean of each loss over the window's steps on all ranks, and the images of all ranks per second
        of step time (the slowest rank's). Every rank must call it at the same step; the window restarts."""
        names = sorted(self.sums)
        totals = torch.tensor([*(self.sums[n] for n in names), self.steps, self.images], dtype=torch.float64,
                              device=device)
        seconds = torch.tensor([self.seconds], dtype=torch.float64, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        values = totals.tolist()
        steps, images = max(values[-2], 1.0), values[-1]
        self._reset()
        sums = dict(zip(names, values))
        means = {n: v / steps for n, v in sums.items() if not n.endswith((".sum", ".count"))}
        return {**means, **ratios(sums), "images_per_s": images / max(seconds.item(), 1e-9)}


def ratios(sums: Mapping[str, float]) -> dict[str, float]:
    """`<name>` = `<name>.sum` / `<name>.count` for each such pair whose count is positive."""
    return {n.removesuffix(".sum"): v / sums[n.removesuffix(".sum") + ".count"] for n, v in sums.items()
            if n.endswith(".sum") and sums.get(n.removesuffix(".sum") + ".count", 0) > 0}
