"""Open-vocabulary RoI heads on top of torchvision's `RoIHeads`.

What differs from torchvision's Mask R-CNN heads, and nothing else:
- the classifier is V2L logits against class-name embeddings (a buffer, so the
  vocabulary can change at inference), background logit fixed at 0;
- the classification cross-entropy down-weights background (`bg_weight`);
- box regression and masks are class-agnostic (4 deltas, 1 mask channel).
Box math and losses run in fp32 even when the network runs in bf16.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RPNHead

from xpl.model.v2l import V2L


def weighted_fastrcnn_loss(
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    labels: list[torch.Tensor],
    regression_targets: list[torch.Tensor],
    *,
    bg_weight: float,
    unannotated: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast R-CNN losses with a background class weight and class-agnostic boxes.

    Classification: cross-entropy with class weights (bg_weight, 1, ..., 1),
    averaged as PyTorch's weighted mean (sum of w_y * CE / sum of w_y).
    `unannotated` ([C+1] bool) marks classes the images may hold without annotation: their logits
    compete on annotated objects (which are not of those classes) but not on background RoIs.
    Box: smooth-L1 (beta 1/9) on the positives' single delta, summed and divided
    by the number of sampled RoIs (torchvision's normalisation).

    Args:
        class_logits: [N, C+1]. box_regression: [N, 4].
        labels: per image [n_i] in 0..C (0 = background).
        regression_targets: per image [n_i, 4].
    """
    labels_all = torch.cat(labels, dim=0)
    targets_all = torch.cat(regression_targets, dim=0).float()
    weight = torch.ones(class_logits.shape[1], device=class_logits.device)
    weight[0] = bg_weight
    logits = class_logits.float()
    if unannotated is not None:
        hidden = (labels_all == 0)[:, None] & unannotated.to(logits.device)[None, :]
        logits = logits.masked_fill(hidden, float("-inf"))
    classification_loss = F.cross_entropy(logits, labels_all, weight=weight)
    positive = torch.where(labels_all > 0)[0]
    box_loss = F.smooth_l1_loss(
        box_regression.float()[positive], targets_all[positive], beta=1 / 9, reduction="sum"
    ) / max(labels_all.numel(), 1)
    return classification_loss, box_loss


class Fp32RPNHead(RPNHead):
    """torchvision's RPNHead returning fp32 objectness and deltas, so proposals are decoded in fp32."""

    def forward(self, x: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class V2LPredictor(nn.Module):
    """Box predictor: V2L logits over the current vocabulary + one class-agnostic box delta."""

    def __init__(self, in_features: int, embed_dim: int, *, scale: float = 1.0) -> None:
        super().__init__()
        self.v2l = V2L(in_features, embed_dim, scale=scale)
        self.bbox_pred = nn.Linear(in_features, 4)
        # Not in the state dict: the vocabulary is data, chosen per run.
        self.register_buffer("class_embeddings", torch.zeros(0, embed_dim), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[R, F] box-head features -> ([R, C+1] fp32 logits, [R, 4] fp32 deltas)."""
        if self.class_embeddings.shape[0] == 0:
            raise RuntimeError("no class embeddings: call set_class_embeddings(...) before classifying")
        x = x.flatten(start_dim=1)
        logits = self.v2l.logits(self.v2l(x), self.class_embeddings)
        return logits.float(), self.bbox_pred(x).float()


class OpenVocabRoIHeads(RoIHeads):
    """torchvision `RoIHeads` with the open-vocabulary predictor and class-agnostic boxes/masks.

    Takes RoIHeads' arguments (mask parts required) plus `bg_weight`.
    Keypoints are not supported. `unannotated` (None, or [C+1] bool over the current classes) is
    passed to `weighted_fastrcnn_loss` in training.
    """

    def __init__(self, *args, bg_weight: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.has_mask():
            raise ValueError("OpenVocabRoIHeads needs mask_roi_pool, mask_head and mask_predictor")
        self.bg_weight = bg_weight
        self.unannotated: Optional[torch.Tensor] = None

    def box_features(
        self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """[sum R_i, F] box-head features of `boxes` (transformed-image coordinates)."""
        return self.box_head(self.box_roi_pool(features, boxes, image_shapes))

    def mask_logits(
        self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """[sum R_i, 1, M, M] class-agnostic mask logits for `boxes`."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        # The one class-agnostic delta refines the box for every class.
        per_class = box_regression.repeat(1, class_logits.shape[1])
        return super().postprocess_detections(class_logits, per_class, proposals, image_shapes)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, torch.Tensor]]] = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """Training: ([], losses). Eval: (per-image boxes/labels/scores/masks [n,1,M,M], {})."""
        if not self.training:
            class_logits, box_regression = self.box_predictor(self.box_features(features, proposals, image_shapes))
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            logits = self.mask_logits(features, boxes, image_shapes).float()
            # Class-agnostic masks: channel 0 for every detection.
            masks = maskrcnn_inference(logits, [torch.zeros_like(lab) for lab in labels])
            result = [
                {"boxes": b, "labels": lab, "scores": s, "masks": m}
                for b, lab, s, m in zip(boxes, labels, scores, masks)
            ]
            return result, {}

        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(self.box_features(features, proposals, image_shapes))
        loss_classifier, loss_box_reg = weighted_fastrcnn_loss(
            class_logits, box_regression, labels, regression_targets, bg_weight=self.bg_weight,
            unannotated=self.unannotated,
        )
        positives = [torch.where(lab > 0)[0] for lab in labels]
        mask_boxes = [p[pos] for p, pos in zip(proposals, positives)]
        mask_matched = [m[pos] for m, pos in zip(matched_idxs, positives)]
        logits = self.mask_logits(features, mask_boxes, image_shapes)
        gt_masks = [t["masks"] for t in targets]
        channel0 = [torch.zeros_like(t["labels"]) for t in targets]
        loss_mask = maskrcnn_loss(logits.float(), mask_boxes, gt_masks, channel0, mask_matched)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}
        return [], losses
