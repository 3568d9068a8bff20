"""The robust student's objective on a tiny detector: what each branch trains, and the sigma head's freeze."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from presets import SHAPES
from xpl.config import load_config
from xpl.model.detector import OpenVocabMaskRCNN
from xpl.model.objectives import DetectionWithCaptions
from xpl.model.student import RobustStudent

DIM = 16


def _detector() -> OpenVocabMaskRCNN:
    torch.manual_seed(0)
    model = OpenVocabMaskRCNN(embed_dim=DIM, image_size=64)
    embeddings = torch.nn.functional.normalize(torch.randn(4, DIM), dim=1)  # labels 1..4; base = 1, 3
    model.set_class_embeddings(embeddings)
    return model


def make_student(detector: OpenVocabMaskRCNN | None = None, **changes) -> RobustStudent:
    """The student of the shapes preset's `student` section with `changes`, base classes 1 and 3."""
    section = OmegaConf.merge(load_config(SHAPES).student, changes)
    return RobustStudent.from_config(section, detector or _detector(), [1, 3], ["a", "b", "c", "d"])


def _target(box: list[float], label: int, size: int = 64) -> dict[str, torch.Tensor]:
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    masks[0, y0:y1, x0:x1] = 1
    return {"boxes": torch.tensor([box]), "labels": torch.tensor([label]), "masks": masks}


def test_gt_branch_is_the_detector_over_base_classes_only() -> None:
    det = _detector()
    student = make_student(det).train()
    image = torch.rand(3, 64, 64)
    torch.manual_seed(1)
    losses, _ = student([image], [_target([8, 8, 30, 30], 2)], [], [])  # 2 = the second base class
    reference = _detector().train()
    reference.set_class_embeddings(det.class_embeddings[[0, 2]])
    torch.manual_seed(1)
    expected = reference([image], [_target([8, 8, 30, 30], 2)])
    assert set(losses) == set(expected)
    for name in expected:
        assert losses[name].item() == pytest.approx(expected[name].item(), rel=1e-5)
    assert student.detector.class_embeddings.shape[0] == 4  # the whole vocabulary again after the step


def test_gt_all_classes_labels_base_objects_in_the_whole_vocabulary() -> None:
    det = _detector()
    student = make_student(det, gt_all_classes=True).train()
    image = torch.rand(3, 64, 64)
    target = _target([8, 8, 30, 30], 2)  # the second base class: label 3 of the vocabulary
    torch.manual_seed(1)
    losses, _ = student([image], [target], [], [])
    assert target["labels"].tolist() == [2]  # the caller's targets are left as they were
    reference = _detector().train()
    reference.roi_heads.unannotated = torch.tensor([False, False, True, False, True])
    torch.manual_seed(1)
    expected = reference([image], [_target([8, 8, 30, 30], 3)])
    for name in expected:
        assert losses[name].item() == pytest.approx(expected[name].item(), rel=1e-5)
    assert student.detector.roi_heads.unannotated is None  # the pseudo branch and inference see every class
    base_student = make_student().train()
    torch.manual_seed(1)
    base_only, _ = base_student([image], [target], [], [])
    assert losses["loss_mask"].item() == pytest.approx(base_only["loss_mask"].item(), rel=1e-6)
    assert losses["loss_classifier"].item() != pytest.approx(base_only["loss_classifier"].item(), rel=1e-3)


def test_teacher_with_base_labels_classifies_annotated_images_like_the_student() -> None:
    image, target = torch.rand(3, 64, 64), _target([8, 8, 30, 30], 2)
    student = make_student(gt_all_classes=True).train()
    torch.manual_seed(1)
    expected, _ = student([image], [target], [], [])
    det = _detector()
    vocabulary = det.class_embeddings.clone()
    det.set_class_embeddings(vocabulary[[0, 2]])  # the teacher's detector holds the base classes
    teacher = DetectionWithCaptions(det, vocabulary, max_regions=32, tau=1.0, caption_label_weight=0.0,
                                    grounding_weight=0.0, base_labels=[1, 3]).train()
    torch.manual_seed(1)
    losses = teacher([image], [target])
    for name in expected:
        assert losses[name].item() == pytest.approx(expected[name].item(), rel=1e-5)
    assert torch.equal(det.class_embeddings, vocabulary[[0, 2]])


def test_pseudo_branch_trains_positives_only_and_sigma_head_freezes() -> None:
    student = make_student(samples=3, sigma_freeze_step=1, corrupt={"share": 0.5}).train()
    image = torch.rand(3, 64, 64)
    target = {**_target([10, 10, 40, 40], 4), "corrupted": torch.tensor([True])}
    losses, stats = student([], [], [image], [target])
    assert set(losses) == {"loss_pseudo_classifier", "loss_pseudo_mask"}  # no RPN, no box, no background loss
    assert all(torch.isfinite(v) for v in losses.values())
    n = stats["pseudo_positives"]
    assert n >= 1 and stats["share.d.sum"] == n and stats["share.a.sum"] == 0 and stats["share.d.count"] == n
    assert stats["sigma.sum"] / stats["sigma.count"] == pytest.approx(1.0, rel=1e-4)
    assert stats["sigma_corrupted.count"] == n and stats["sigma_clean.count"] == 0
    sum(losses.values()).backward()
    assert student.sigma_head.conv.weight.grad is not None  # first call: sigma learns
    student.zero_grad()
    losses, _ = student([], [], [image], [target])
    sum(losses.values()).backward()
    assert student.sigma_head.conv.weight.grad is None  # after sigma_freeze_step calls: frozen


def test_positives_are_rois_overlapping_a_pseudo_box() -> None:
    student = make_student()
    proposals = [torch.tensor([[10.0, 10, 40, 40], [12, 12, 40, 40], [0, 0, 8, 8], [30, 30, 60, 60]])]
    boxes, index, labels = student._positives(proposals, [_target([10, 10, 40, 40], 2)])
    assert boxes[0].tolist() == [[10.0, 10, 40, 40], [12, 12, 40, 40], [10, 10, 40, 40]]  # 2 proposals + the box
    assert index[0].tolist() == [0, 0, 0] and labels[0].tolist() == [2, 2, 2]
    many = [torch.tensor([[10.0, 10, 40, 40 + k / 10] for k in range(40)])]
    assert len(student._positives(many, [_target([10, 10, 40, 40], 2)])[0][0]) == 16  # 64 RoIs x 0.25 positive


def test_release_student_samples_background_and_weights_each_image_by_its_mean_sigma() -> None:
    from xpl.model.robust import image_weights

    student = make_student(instance_weight="image", c=0.01, sigma0=2.0, pseudo_background=True,
                           pseudo_box_loss=True).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [_target([10, 10, 40, 40], 4), _target([5, 5, 30, 50], 2)]
    torch.manual_seed(3)
    boxes, _, labels = student._sampled([torch.tensor([[0.0, 0, 20, 20], [10, 10, 38, 40]])] * 2, targets)
    assert all(bool((lab == 0).any()) and bool((lab > 0).any()) for lab in labels)  # background RoIs sampled too
    losses, stats = student([], [], images, targets)
    assert set(losses) == {"loss_pseudo_classifier", "loss_pseudo_mask", "loss_pseudo_box_reg"}
    assert stats["instance_weight_std"] == pytest.approx(0.0, abs=1e-7)  # sigma starts at sigma0 everywhere
    log_var = torch.full((3, 2, 2), 2 * math.log(2.0))
    log_var[2] = 2 * math.log(4.0)  # the second image's one positive is noisier
    weights = image_weights(log_var, torch.tensor([0, 0, 1]), 3, c=0.01)
    assert weights.tolist() == pytest.approx([0.005, 0.0025, 0.0])  # no positive in the third image: no weight


def test_plain_mode_weights_every_instance_equally() -> None:
    student = make_student(mode="plain").train()
    losses, stats = student([], [], [torch.rand(3, 64, 64)], [_target([5, 5, 50, 50], 3)])
    assert stats["instance_weight_std"] == 0.0
    assert torch.isfinite(losses["loss_pseudo_mask"])


def test_caption_labels_add_the_teachers_caption_label_loss_over_the_whole_vocabulary() -> None:
    from xpl.model.grounding import caption_label_loss

    student = make_student().train()
    image, named = torch.rand(3, 64, 64), torch.tensor([[0.0, 1.0, 0.0, 1.0]])  # the caption names classes 2, 4
    without, _ = student([], [], [image], [_target([10, 10, 40, 40], 2)])
    losses, _ = student([], [], [image], [_target([10, 10, 40, 40], 2)], named)
    assert set(losses) == set(without) | {"loss_caption_labels"}
    regions, valid = student.detector.candidate_embeddings([image])
    expected = caption_label_loss(regions, valid, student.all_embeddings, named)
    assert losses["loss_caption_labels"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["loss_caption_labels"].backward()
    assert student.detector.roi_heads.box_head.fc6.weight.grad is not None


def test_class_noise_weighs_the_pseudo_classification_and_joins_the_pixel_noise() -> None:
    import math

    student = make_student(class_noise=True, sigma0=1.0).train()
    image, target = torch.rand(3, 64, 64), _target([10, 10, 40, 40], 4)
    losses, _ = student([], [], [image], [target])
    sum(losses.values()).backward()
    assert student.class_noise_head.out.weight.grad is not None  # the class noise learns from the class loss
    assert {id(p) for p in student.noise_parameters()} >= {id(p) for p in student.class_noise_head.parameters()}
    ((sigma, _, _),) = student.eval().noise_on_pseudo_boxes([image], [target])
    assert torch.allclose(sigma, torch.full_like(sigma, math.sqrt(2.0)))  # pixel variance 1 + class variance 1
