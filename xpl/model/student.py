"""The robust student's training objective: a GT branch on base-annotated images and a pseudo branch on
pseudo-labeled caption images, in one forward call (DDP and DeepSpeed see every parameter used there).

GT branch: the detector's standard Mask R-CNN losses, its classifier restricted to the base classes
(+ background): base images say nothing about novel classes, so they never push novel logits down.
With `gt_all_classes` the classifier spans the whole vocabulary on the annotated objects, which are of
base classes and so not of any novel class, and stays restricted to base + background on background
RoIs, where unannotated novel objects may lie.

Pseudo branch (per caption image, boxes in its pixels):
- RPN proposals (no gradient to the boxes) plus the pseudo boxes themselves; RoIs with IoU >= 0.5 to
  a pseudo box are positives with its class over the whole vocabulary. With `pseudo_background` the
  detector's own sampler also takes background RoIs (the XPM release's student); without it only the
  positives count, at most the sampler's share of positives per image: an object the caption did not
  name is not background.
- classification: cross-entropy over the vocabulary (+ the fixed background logit, weighted by the
  detector's `bg_weight`), each RoI weighted by `instance_weight`: per `image`, the release's
  `lambda_i = c / stopgrad(mean sigma)` over its positive RoIs (`xpl.model.robust.image_weights`), per
  `instance` (`xpl.model.robust.instance_weights`), or `none`;
- mask: `robust_mask_loss` between the mask logits `mu` and the pseudo mask, with `log sigma^2` from a
  `SigmaHead` on the mask predictor's last features; the sigma head stops learning after
  `sigma_freeze_step` forward calls (its log variance is detached from then on);
- box regression on the positives when `pseudo_box_loss`, weighted as the classification; no RPN loss.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import project_masks_on_boxes

from xpl.model.detector import OpenVocabMaskRCNN
from xpl.model.grounding import caption_label_loss
from xpl.model.objectives import whole_vocabulary_losses
from xpl.model.robust import (MODES, WEIGHTINGS, ClassNoiseHead, SigmaHead, class_noise_loss, image_weights,
                              instance_weights, robust_mask_loss)

Targets = list[dict[str, torch.Tensor]]


class RobustStudent(torch.nn.Module):
    """The detector plus its sigma head; `forward` returns (losses, stats).

    Args:
        detector: the student detector (weights from the teacher), class embeddings of the whole vocabulary.
        base_labels: the detector labels (1..C) of the base classes, in order; GT targets use 1..len(base_labels).
        mode, samples, sigma0: the robust mask loss (`xpl.model.robust.MODES`); sigma_inputs, sigma_hidden,
            sigma_instance: what the sigma head reads and its shape (`xpl.model.robust.SigmaHead`).
        class_noise: each pseudo instance also has a class noise (`xpl.model.robust.ClassNoiseHead`): its pseudo
            classification loss is the expected likelihood under it, and it adds to its pixels' mask noise.
        instance_weight, c: how pseudo RoIs weigh in the classification and box losses, and the numerator
            of those weights. sigma_freeze_step: forward calls after which sigma stops learning.
        pseudo_background: background RoIs of caption images count in the classification loss.
        pseudo_box_loss: the positives regress to their pseudo boxes.
        gt_all_classes: the GT branch's annotated objects push down every other class, novel ones included.
        caption_label_weight: the weight of `loss_caption_labels` (`weights`), on when a batch brings caption labels.
        names: the vocabulary's names (labels 1..C), for the per-class statistics.
        track_corruption: targets carry `corrupted` flags (the noise study); sigma is reported for both kinds.
    `from_config` takes these from the `student` config section, whose keys they are.
    """

    CONFIG_KEYS = ("mode", "samples", "instance_weight", "c", "sigma0", "sigma_inputs", "sigma_hidden",
                   "sigma_instance", "class_noise", "sigma_freeze_step", "pseudo_background", "pseudo_box_loss",
                   "gt_all_classes", "caption_label_weight")

    def __init__(self, detector: OpenVocabMaskRCNN, base_labels: list[int], *, mode: str, samples: int,
                 instance_weight: str, c: float, sigma0: float, sigma_inputs: Sequence[str], sigma_hidden: int,
                 sigma_instance: bool, class_noise: bool, sigma_freeze_step: int, pseudo_background: bool,
                 pseudo_box_loss: bool,
                 gt_all_classes: bool, caption_label_weight: float, names: Optional[Sequence[str]] = None,
                 track_corruption: bool = False) -> None:
        super().__init__()
        self.detector = detector
        predictor = detector.roi_heads.mask_predictor
        self.sigma_head = SigmaHead(predictor.mask_fcn_logits.in_channels, sigma0=sigma0, inputs=sigma_inputs,
                                    hidden=sigma_hidden, instance=sigma_instance)
        box_head = detector.roi_heads.box_head
        self.class_noise_head = ClassNoiseHead(box_head.fc7.out_features, sigma0=sigma0) if class_noise else None
        all_embeddings = detector.class_embeddings
        if all_embeddings.shape[0] == 0:
            raise ValueError("set the detector's class embeddings (the whole vocabulary) before building the student")
        self.register_buffer("all_embeddings", all_embeddings.clone(), persistent=False)
        self.register_buffer("base_embeddings", all_embeddings[torch.tensor(base_labels) - 1].clone(), persistent=False)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("base_labels", torch.tensor(base_labels), persistent=False)
        self.gt_all_classes = gt_all_classes
        if mode not in MODES:
            raise ValueError(f"unknown robust loss mode {mode!r}; choose one of {', '.join(MODES)}")
        if instance_weight not in WEIGHTINGS:
            raise ValueError(f"unknown instance weighting {instance_weight!r}; choose one of {WEIGHTINGS}")
        self.mode, self.samples, self.instance_weight, self.c = mode, samples, instance_weight, c
        self.sigma_freeze_step, self.pseudo_box_loss = sigma_freeze_step, pseudo_box_loss
        self.pseudo_background = pseudo_background
        self.names = list(names) if names is not None else [f"label{i}" for i in range(1, all_embeddings.shape[0] + 1)]
        if len(self.names) != all_embeddings.shape[0]:
            raise ValueError(f"{len(self.names)} names for {all_embeddings.shape[0]} class embeddings")
        self.track_corruption = track_corruption
        self.weights = {"loss_caption_labels": caption_label_weight}

    @classmethod
    def from_config(cls, student: Any, detector: OpenVocabMaskRCNN, base_labels: list[int],
                    names: Sequence[str]) -> "RobustStudent":
        """The student of a `student` config section (the noise study's `corrupt.share` > 0 tracks corruption)."""
        corrupted = student.corrupt.share > 0 or any(v > 0 for v in student.corrupt.classes.values())
        return cls(detector, base_labels, names=names, track_corruption=corrupted,
                   **{key: student[key] for key in cls.CONFIG_KEYS})

    def noise_parameters(self) -> list[torch.nn.Parameter]:
        """The noise heads' parameters (the sigma head's, and the class noise head's when there is one)."""
        heads = [self.sigma_head] + ([self.class_noise_head] if self.class_noise_head is not None else [])
        return [p for head in heads for p in head.parameters()]

    def _use_classes(self, embeddings: torch.Tensor) -> None:
        self.detector.roi_heads.box_predictor.class_embeddings = embeddings

    def forward(self, gt_images: list[torch.Tensor], gt_targets: Targets, pseudo_images: list[torch.Tensor],
                pseudo_targets: Targets, caption_labels: Optional[torch.Tensor] = None,
                ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """`caption_labels` ([B, C] in {0, 1}: the classes each pseudo image's caption names) adds
        `loss_caption_labels` over the pseudo images' candidate regions (unweighted: `weights` has its weight)."""
        losses: dict[str, torch.Tensor] = {}
        if gt_images:
            losses.update(self._gt_branch(gt_images, gt_targets))
        self._use_classes(self.all_embeddings)
        stats: dict[str, float] = {}
        if pseudo_images:
            pseudo_losses, stats = self._pseudo_branch(pseudo_images, pseudo_targets, caption_labels)
            losses.update(pseudo_losses)
        if self.training:
            self.calls += 1
        return losses, stats

    def _gt_branch(self, images: list[torch.Tensor], targets: Targets) -> dict[str, torch.Tensor]:
        """The detector's losses on base-annotated images (labels 1..len(base_labels))."""
        if self.gt_all_classes:
            return whole_vocabulary_losses(self.detector, images, targets, self.all_embeddings, self.base_labels)
        self._use_classes(self.base_embeddings)
        return self.detector(images, targets)

    def _positives(self, proposals: list[torch.Tensor], targets: Targets) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                                                list[torch.Tensor]]:
        """Per image: positive RoIs (IoU >= 0.5 with a pseudo box, pseudo boxes included), their
        matched pseudo instance and label; at most the sampler's positives per image."""
        heads = self.detector.roi_heads
        sampler = heads.fg_bg_sampler
        most = int(sampler.batch_size_per_image * sampler.positive_fraction)
        proposals = heads.add_gt_proposals(proposals, [t["boxes"] for t in targets])
        matched, labels = heads.assign_targets_to_proposals(proposals, [t["boxes"] for t in targets],
                                                            [t["labels"] for t in targets])
        boxes, index, classes = [], [], []
        for props, match, lab in zip(proposals, matched, labels):
            keep = torch.where(lab > 0)[0]
            if len(keep) > most:
                keep = keep[torch.randperm(len(keep), device=keep.device)[:most]]
            boxes.append(props[keep])
            index.append(match[keep])
            classes.append(lab[keep])
        return boxes, index, classes

    def _sampled(self, proposals: list[torch.Tensor], targets: Targets) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                                               list[torch.Tensor]]:
        """Per image: the RoIs the pseudo losses see, the pseudo instance each matches (read where the label
        is positive) and its label, 0 for background (`pseudo_background` only)."""
        if not self.pseudo_background:
            return self._positives(proposals, targets)
        boxes, matched, labels, _ = self.detector.roi_heads.select_training_samples(proposals, targets)
        return boxes, matched, labels

    def _roi_weights(self, log_var: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
        """[N] weight of each sampled RoI in the pseudo classification and box losses (`instance_weight`);
        1 everywhere when the mask loss has no sigma (`plain`)."""
        labels_all = torch.cat(labels)
        weights = torch.ones(len(labels_all), device=labels_all.device)
        if not MODES[self.mode].uses_sigma or self.instance_weight == "none":
            return weights
        positive = labels_all > 0
        if self.instance_weight == "instance":
            weights[positive] = instance_weights(log_var, c=self.c)
            return weights
        image = torch.cat([torch.full((len(lab),), i, device=labels_all.device) for i, lab in enumerate(labels)])
        return image_weights(log_var, image[positive], len(labels), c=self.c)[image]

    def _pseudo_branch(self, images: list[torch.Tensor], targets: Targets,
                       caption_labels: Optional[torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        det = self.detector
        heads = det.roi_heads
        images = det._cast(images)
        image_list, targets = det.transform(images, targets)
        features = det.backbone(image_list.tensors)
        sizes = image_list.image_sizes
        losses: dict[str, torch.Tensor] = {}
        if caption_labels is not None:
            regions, valid = det.candidate_embeddings_of(image_list, features)
            losses["loss_caption_labels"] = caption_label_loss(regions, valid, self.all_embeddings, caption_labels)
        with torch.no_grad():
            proposals, _ = det._proposals_with_objectness(image_list, features)
        boxes, index, labels = self._sampled([p.detach() for p in proposals], targets)
        box_features = heads.box_features(features, boxes, sizes)
        class_logits, deltas = heads.box_predictor(box_features)
        positive = [lab > 0 for lab in labels]
        pos_boxes = [b[p] for b, p in zip(boxes, positive)]
        pos_index = [i[p] for i, p in zip(index, positive)]
        labels_all = torch.cat(labels)
        is_positive = labels_all > 0
        mu, log_var, mask_targets, class_log_var = self._masks_and_noise(
            features, pos_boxes, pos_index, targets, sizes, labels_all[is_positive], box_features[is_positive],
            class_logits[is_positive])
        if self.calls >= self.sigma_freeze_step:
            log_var = log_var.detach()
            class_log_var = None if class_log_var is None else class_log_var.detach()
        weights = self._roi_weights(log_var, labels)
        class_weight = torch.ones(class_logits.shape[1], device=class_logits.device)
        class_weight[0] = heads.bg_weight
        ce = F.cross_entropy(class_logits.float(), labels_all, weight=class_weight, reduction="none")
        if class_log_var is not None:
            ce = ce.masked_scatter(is_positive, class_noise_loss(class_logits[is_positive], class_log_var,
                                                                 labels_all[is_positive], self.samples))
        n = max(len(labels_all), 1)
        losses["loss_pseudo_classifier"] = (weights * ce).sum() / n
        losses["loss_pseudo_mask"] = robust_mask_loss(mu, log_var, mask_targets, mode=self.mode, samples=self.samples)
        if self.pseudo_box_loss:
            matched_boxes = torch.cat([t["boxes"][i] for t, i in zip(targets, pos_index)])
            regression = heads.box_coder.encode([matched_boxes], [torch.cat(pos_boxes)])[0]
            box_loss = F.smooth_l1_loss(deltas.float()[is_positive], regression.float(), beta=1 / 9, reduction="none")
            losses["loss_pseudo_box_reg"] = (weights[is_positive, None] * box_loss).sum() / n
        corrupted = (torch.cat([t["corrupted"][i] for t, i in zip(targets, pos_index)])
                     if "corrupted" in targets[0] else None)
        stats = self._stats(log_var.detach(), weights[is_positive].detach(), labels_all[is_positive], corrupted)
        return losses, stats

    def _masks_and_noise(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], index: list[torch.Tensor],
                         targets: Targets, sizes: list[tuple[int, int]], labels: torch.Tensor,
                         box_features: Optional[torch.Tensor] = None, logits: Optional[torch.Tensor] = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """On the RoIs `boxes` (transformed-image coordinates, per image) matching pseudo instances `index` of
        `labels`: the mask logits `mu`, the log sigma^2 of each pixel's mask noise and the pseudo masks, all
        [R, M, M], and with `class_noise` the [R] log variance of the class noise (which the pixels' noise then
        includes). The RoIs' box features and class logits are computed unless given."""
        heads = self.detector.roi_heads
        mask_features = heads.mask_predictor.relu(heads.mask_predictor.conv5_mask(
            heads.mask_head(heads.mask_roi_pool(features, boxes, sizes))))
        mu = heads.mask_predictor.mask_fcn_logits(mask_features)[:, 0].float()
        mask_targets = torch.cat([project_masks_on_boxes(t["masks"], b, i, mu.shape[-1])
                                  for t, b, i in zip(targets, boxes, index)])
        log_var = self.sigma_head(mask_features, mu, mask_targets)
        if self.class_noise_head is None:
            return mu, log_var, mask_targets, None
        if box_features is None:
            box_features = heads.box_features(features, boxes, sizes)
            logits = heads.box_predictor(box_features)[0]
        class_log_var = self.class_noise_head(box_features, logits, labels)
        return mu, torch.logaddexp(log_var, class_log_var[:, None, None]), mask_targets, class_log_var

    @torch.no_grad()
    def noise_on_pseudo_boxes(self, images: list[torch.Tensor], targets: Targets) -> list[tuple[torch.Tensor, ...]]:
        """Per image, on its pseudo instances' own boxes: ([K, M, M] sigma, [K, M, M] pseudo mask in the box grid,
        [K, 4] boxes in the image's pixels). What sigma says of each pseudo label (the measurement of
        `xpl.eval.sigma_quality`); call in eval mode."""
        det = self.detector
        image_list, moved = det.transform(det._cast(images), [{k: v for k, v in t.items()} for t in targets])
        features = det.backbone(image_list.tensors)
        boxes = [t["boxes"] for t in moved]
        index = [torch.arange(len(b), device=b.device) for b in boxes]
        labels = torch.cat([t["labels"] for t in moved])
        _, log_var, masks, _ = self._masks_and_noise(features, boxes, index, moved, image_list.image_sizes, labels)
        counts = [len(b) for b in boxes]
        return [(s, m, t["boxes"]) for s, m, t in zip(torch.exp(0.5 * log_var).split(counts), masks.split(counts),
                                                          targets)]

    def _stats(self, log_var: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                corrupted: Optional[torch.Tensor]) -> dict[str, float]:
        """The same names every step (ranks all-reduce them, `xpl.train.meter`): positives, the instance
        weights' spread, and as `.sum`/`.count` pairs the mean sigma on pseudo pixels, each class's share
        of the positives, and with `track_corruption` the mean sigma of corrupted and of clean instances."""
        sigma = torch.exp(0.5 * log_var).flatten(1).mean(1)
        n = float(len(labels))
        stats = {"pseudo_positives": n, "sigma.sum": float(sigma.sum()), "sigma.count": n,
                 "instance_weight_std": float(weights.std()) if len(weights) > 1 else 0.0}
        counts = torch.bincount(labels, minlength=len(self.names) + 1).tolist()
        for label, name in enumerate(self.names, start=1):
            stats[f"share.{name}.sum"], stats[f"share.{name}.count"] = float(counts[label]), n
        if self.track_corruption:
            flags = corrupted.bool() if corrupted is not None else torch.zeros_like(labels, dtype=torch.bool)
            for name, chosen in (("sigma_corrupted", flags), ("sigma_clean", ~flags)):
                stats[f"{name}.sum"], stats[f"{name}.count"] = float(sigma[chosen].sum()), float(chosen.sum())
        return stats
