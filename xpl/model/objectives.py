"""Training objectives as modules: each wraps the detector so that one forward call computes a stage's
losses (DDP and DeepSpeed see every trained parameter used inside `forward`)."""

from __future__ import annotations

from typing import Optional

import torch

from xpl.model.detector import OpenVocabMaskRCNN
from xpl.model.grounding import grounding_loss

CaptionBatch = tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]  # images, [B, T, D] tokens, [B, T] mask


class GridGrounding(torch.nn.Module):
    """Caption pretraining: the detector seen through its grid-cell region embeddings."""

    def __init__(self, detector: OpenVocabMaskRCNN, grid: int, max_cells: int) -> None:
        super().__init__()
        self.detector, self.grid, self.max_cells = detector, grid, max_cells

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        """[B, N, D] V2L embeddings of sampled grid cells."""
        return self.detector.grid_embeddings(images, grid=self.grid, max_cells=self.max_cells)


class DetectionWithGrounding(torch.nn.Module):
    """Mask R-CNN losses on annotated images plus, when a caption batch comes along, the caption-grounding
    loss over the detector's candidate regions (`loss_grounding`): the words of each caption attend over
    the regions pseudo-labeling will choose from, so the region embeddings stay grounded in words, novel
    ones included, while the detector learns the base classes."""

    def __init__(self, detector: OpenVocabMaskRCNN, *, max_regions: int = 32, tau: float = 1.0) -> None:
        super().__init__()
        self.detector, self.max_regions, self.tau = detector, max_regions, tau

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                captions: Optional[CaptionBatch] = None) -> dict[str, torch.Tensor]:
        losses = self.detector(images, targets)
        if captions is not None:
            caption_images, tokens, token_mask = captions
            regions, valid = self.detector.candidate_embeddings(caption_images, max_regions=self.max_regions)
            losses["loss_grounding"] = grounding_loss(regions, valid, tokens, token_mask, tau=self.tau)
        return losses
