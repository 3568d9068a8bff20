"""The optimizer from a stage's `train` settings: SGD with momentum (the paper's) or AdamW, biases apart.

Detection recipes (maskrcnn-benchmark, which the XPM release builds on) give biases twice the
learning rate and no weight decay; `bias_lr_factor` and `bias_weight_decay` say so per stage.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

OPTIMIZERS = ("sgd", "adamw")


def split_biases(model: torch.nn.Module, groups: list[dict[str, Any]], *, lr_factor: float,
                 weight_decay: Optional[float]) -> list[dict[str, Any]]:
    """Each parameter group as its weights and its biases (parameters named `*.bias`), the biases at
    `lr_factor` times the group's `lr` and with `weight_decay` (None: the optimizer's). Groups come back
    unchanged when neither applies, and empty groups are dropped."""
    if lr_factor == 1.0 and weight_decay is None:
        return groups
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in groups:
        biases = [p for p in group["params"] if names.get(id(p), "").endswith("bias")]
        ids = {id(p) for p in biases}
        weights = [p for p in group["params"] if id(p) not in ids]
        bias_group = {**group, "params": biases, "lr": group["lr"] * lr_factor}
        if weight_decay is not None:
            bias_group["weight_decay"] = weight_decay
        out += [g for g in ({**group, "params": weights}, bias_group) if g["params"]]
    return out


def build_optimizer(model: torch.nn.Module, groups: list[dict[str, Any]], *, optimizer: str, lr: float,
                    momentum: float, weight_decay: float, bias_lr_factor: float,
                    bias_weight_decay: Optional[float]) -> torch.optim.Optimizer:
    """`optimizer` ("sgd" | "adamw") over `groups` (each with its `lr`), biases split off (`split_biases`)."""
    groups = split_biases(model, groups, lr_factor=bias_lr_factor, weight_decay=bias_weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
