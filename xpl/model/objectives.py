"""Training objectives as modules: each wraps the detector so that one forward call computes a stage's
losses (DDP and DeepSpeed see every trained parameter used inside `forward`)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from xpl.model.detector import OpenVocabMaskRCNN
from xpl.model.grounding import caption_label_loss, grounding_loss

# images, [B, T, D] caption tokens, [B, T] token mask, [B, C] vocabulary classes each caption names
CaptionBatch = tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]


def weighted_total(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """The training loss: each named loss times its weight in `weights` (1 when not named there), summed. The
    objectives own their weights (`.weights`), so the stages log each loss as computed and train on this."""
    return sum(weights.get(name, 1.0) * value for name, value in losses.items())


def whole_vocabulary_losses(detector: OpenVocabMaskRCNN, images: list[torch.Tensor],
                            targets: list[dict[str, torch.Tensor]], vocabulary: torch.Tensor,
                            base_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The detector's losses on base-annotated images (target labels 1..B pick `base_labels`, the
    vocabulary labels of the base classes), classifying over the whole `vocabulary` [C, D]: an annotated
    object is of its class and of no other, novel ones included, while background RoIs compete over
    background and the base classes only, since objects of other classes may lie there unannotated.
    The detector's class embeddings are restored afterwards."""
    heads = detector.roi_heads
    kept = detector.class_embeddings
    label_map = torch.cat([base_labels.new_zeros(1), base_labels])
    unannotated = torch.ones(vocabulary.shape[0] + 1, dtype=torch.bool, device=label_map.device)
    unannotated[label_map] = False
    heads.box_predictor.class_embeddings, heads.unannotated = vocabulary, unannotated
    losses = detector(images, [{**t, "labels": label_map[t["labels"]]} for t in targets])
    heads.box_predictor.class_embeddings, heads.unannotated = kept, None
    return losses


class GridGrounding(torch.nn.Module):
    """Caption pretraining: the detector seen through its grid-cell region embeddings."""

    def __init__(self, detector: OpenVocabMaskRCNN, grid: int, max_cells: int) -> None:
        super().__init__()
        self.detector, self.grid, self.max_cells = detector, grid, max_cells
        self.weights: dict[str, float] = {}

    @classmethod
    def from_config(cls, pretrain: Any, detector: OpenVocabMaskRCNN) -> "GridGrounding":
        """The objective of a `pretrain` config section."""
        return cls(detector, int(pretrain.grid), int(pretrain.max_cells))

    def forward(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N, D] V2L embeddings of sampled grid cells and their [B, N] validity."""
        return self.detector.grid_embeddings(images, grid=self.grid, max_cells=self.max_cells)


class DetectionWithCaptions(torch.nn.Module):
    """Mask R-CNN losses on annotated images plus, when a caption batch comes along, two caption losses
    over the detector's candidate regions, the regions pseudo-labeling will choose from:
    - `loss_caption_labels` (`caption_label_loss`): the vocabulary classes a caption names, novel ones
      included, must score high on some region of its image, the others on none;
    - `loss_grounding` (`grounding_loss`): the caption's words attend over the regions, in-batch contrast.
    So region embeddings learn the novel names from captions while the detector learns the base classes.
    `vocabulary`: [C, D] embeddings of every class (base and novel), in label order. `base_labels` (the
    vocabulary labels of the base classes, whose order the targets' labels 1..B follow): the annotated
    images classify over the whole vocabulary (`whole_vocabulary_losses`); None: over the detector's
    current (base) classes only. `caption_label_weight` and `grounding_weight` weigh the two caption losses
    (`weights`)."""

    def __init__(self, detector: OpenVocabMaskRCNN, vocabulary: torch.Tensor, *, max_regions: int, tau: float,
                 caption_label_weight: float, grounding_weight: float,
                 base_labels: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.detector, self.max_regions, self.tau = detector, max_regions, tau
        self.weights = {"loss_caption_labels": caption_label_weight, "loss_grounding": grounding_weight}
        self.register_buffer("vocabulary", vocabulary.detach().float().clone(), persistent=False)
        self.register_buffer("base_labels", None if base_labels is None else torch.tensor(list(base_labels)),
                             persistent=False)

    @classmethod
    def from_config(cls, cfg: Any, detector: OpenVocabMaskRCNN, vocabulary: torch.Tensor,
                    base_labels: Sequence[int]) -> "DetectionWithCaptions":
        """The teacher's objective of a config (its `teacher` section; the grounding temperature is pretraining's)."""
        teacher = cfg.teacher
        return cls(detector, vocabulary, max_regions=int(teacher.caption_regions), tau=float(cfg.pretrain.tau),
                   caption_label_weight=float(teacher.caption_label_weight),
                   grounding_weight=float(teacher.grounding_weight),
                   base_labels=base_labels if teacher.gt_all_classes else None)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                captions: Optional[CaptionBatch] = None) -> dict[str, torch.Tensor]:
        if self.base_labels is None:
            losses = self.detector(images, targets)
        else:
            losses = whole_vocabulary_losses(self.detector, images, targets, self.vocabulary, self.base_labels)
        if captions is not None:
            caption_images, tokens, token_mask, labels = captions
            regions, valid = self.detector.candidate_embeddings(caption_images, max_regions=self.max_regions)
            losses["loss_caption_labels"] = caption_label_loss(regions, valid, self.vocabulary, labels)
            losses["loss_grounding"] = grounding_loss(regions, valid, tokens, token_mask, tau=self.tau)
        return losses
