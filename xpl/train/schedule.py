"""Learning-rate schedules: a linear warm-up, then steps down (the paper's) or a cosine decay.

Both are multipliers of the peak learning rate, so one `LambdaLR` serves every parameter group (biases
at their own factor keep it) and DeepSpeed saves the schedule's state in its checkpoints.
"""

from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch

SCHEDULES = ("multistep", "cosine")


def warmup_multiplier(step: int, warmup_steps: int, start: float) -> float:
    """Linear from `start` towards 1 over the first `warmup_steps` steps (0-based `step`), then 1. With
    `start` 0 the first step already learns at 1 / `warmup_steps` of the peak."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * (step + 1) / warmup_steps


def cosine_multiplier(step: int, warmup_steps: int, total_steps: int, floor: float = 0.1) -> float:
    """Half a cosine from 1 after the warm-up down to `floor` at `total_steps`."""
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def multistep_multiplier(step: int, milestones: Sequence[int], gamma: float) -> float:
    """`gamma` to the number of milestones reached (a step equal to a milestone has reached it)."""
    return gamma ** bisect.bisect_right(sorted(milestones), step)


def lr_multiplier(step: int, *, schedule: str, total_steps: int, warmup_steps: int, warmup_factor: float,
                  lr_steps: Sequence[int] = (), lr_gamma: float = 0.1) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): warm-up times the schedule's decay."""
    if schedule == "multistep":
        decay = multistep_multiplier(step, lr_steps, lr_gamma)
    elif schedule == "cosine":
        decay = cosine_multiplier(step, warmup_steps, total_steps)
    else:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    return warmup_multiplier(step, warmup_steps, warmup_factor) * decay


def lr_scheduler(optimizer: torch.optim.Optimizer, **schedule: object) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` following `lr_multiplier` with these keywords."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, **schedule))
