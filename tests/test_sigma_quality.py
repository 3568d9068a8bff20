"""What sigma says of pseudo labels: the statistics on known values, and the measurement on a constructed case."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from presets import SHAPES
from xpl.config import load_config
from xpl.eval.pseudo_quality import SampleTruth, TruthObject
from xpl.eval.sigma_quality import InstanceNoise, auroc, match_objects, spearman, summarize


def test_auroc_and_spearman_known_values():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 2.0]), np.array([1, 1])) is None  # one kind only: undefined
    assert spearman([1, 2, 3, 4], [10, 9, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) is None


def test_instances_match_the_best_box_of_their_class_at_iou_half():
    truth = SampleTruth([TruthObject(1, (0, 0, 10, 10)), TruthObject(2, (0, 0, 10, 10)), TruthObject(1, (20, 0, 30, 10))],
                        frozenset({1, 2}))
    instances = [{"category_id": 1, "bbox": [19, 0, 11, 10]}, {"category_id": 2, "bbox": [5, 0, 10, 10]},
                 {"category_id": 1, "bbox": [50, 50, 5, 5]}]
    assert match_objects(instances, truth) == [2, None, None]  # the second overlaps by IoU 1/3 only


def test_summary_counts_wrong_pixels_and_ranks_noisy_instances():
    def inst(sigma, wrong, iou):
        grid = np.zeros((2, 2), bool)
        return InstanceNoise(1, np.array(sigma, float).reshape(2, 2), np.array(wrong, bool).reshape(2, 2), iou,
                             grid, grid, np.zeros((4, 4, 3), np.uint8), (0, 0, 2, 2))

    found = summarize([inst([3, 3, 1, 1], [1, 1, 0, 0], 0.5), inst([1, 1, 1, 1], [0, 0, 0, 0], 1.0),
                       inst([4, 4, 4, 4], [1, 1, 1, 1], 0.0)])
    assert found["auroc"] == pytest.approx(1.0) and found["wrong_share"] == pytest.approx(0.5)
    assert found["spearman"] == pytest.approx(-1.0)
    assert found["sigma_wrong"] == pytest.approx(22 / 6) and found["sigma_right"] == pytest.approx(1.0)


def test_student_sigma_on_pseudo_boxes_is_sigma0_before_training(shapes_world, random_teacher, text_encoder):
    from xpl.model.checkpoint import load_model
    from xpl.model.student import RobustStudent
    from xpl.vocab import Vocabulary

    vocab = Vocabulary.load(shapes_world / "vocab.json")
    detector = load_model(random_teacher)
    detector.set_class_names(text_encoder, vocab.names)
    section = OmegaConf.merge(load_config(SHAPES).student, {"sigma0": 1.5, "sigma_inputs": ["features", "logits",
                                                                                            "pseudo_mask"],
                                                             "sigma_hidden": 4})
    student = RobustStudent.from_config(section, detector, vocab.labels("base"), vocab.names).eval()
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 10:30], masks[1, 40:60, 20:50] = 1, 1
    target = {"boxes": torch.tensor([[10.0, 10, 30, 30], [20.0, 40, 50, 60]]), "masks": masks,
              "labels": torch.tensor([1, 9])}
    ((sigma, grid, boxes),) = student.noise_on_pseudo_boxes([torch.rand(3, 64, 64)], [target])
    assert sigma.shape == grid.shape == (2, 28, 28) and torch.allclose(sigma, torch.full_like(sigma, 1.5))
    assert bool((grid[:, :-1, :-1] >= 0.5).all()) and torch.equal(boxes, target["boxes"])  # the masks fill their boxes
