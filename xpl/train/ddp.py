"""Plain torch DDP behind the same small interface as a DeepSpeed engine (the benchmark's baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DDP_STATE = "ddp_state.pt"


def save_state(path: Path, tag: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Model, optimizer and schedule state as plain tensors and containers (loadable with weights_only)."""
    torch.save({"tag": tag, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, path)


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler) -> str:
    """Restore what `save_state` wrote; return its tag. Unpickles tensors and containers only (weights_only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["tag"]


class DDPEngine:
    """Ray Train's `prepare_model` (DDP) with an optimizer and schedule; duck-types the DeepSpeed engine calls."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float, find_unused_parameters: bool) -> None:
        from ray.train.torch import prepare_model

        self.wrapped = prepare_model(model, parallel_strategy="ddp",
                                     parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters})
        self.optimizer, self.scheduler, self.grad_clip = optimizer, scheduler, grad_clip

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.wrapped, "module", self.wrapped)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)

    def train(self) -> None:
        self.wrapped.train()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.grad is not None], self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save_checkpoint(self, directory: str, tag: str) -> None:
        """Rank 0 writes model, optimizer and schedule (DDP replicas are identical)."""
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        save_state(Path(directory) / DDP_STATE, tag, self.module, self.optimizer, self.scheduler)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        load_state(Path(directory) / DDP_STATE, self.module, self.optimizer, self.scheduler)
