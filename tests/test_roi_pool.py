"""The tap-gather RoIAlign against hand-computed values and torchvision's kernels."""

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from xpl.model.backbones import Fp32MultiScaleRoIAlign
from xpl.model.roi_pool import boxes_to_rois, roi_align


def _ramp(height: int = 4, width: int = 4) -> torch.Tensor:
    """One channel whose value at (y, x) is 10 y + x: bilinear sampling of it is exact."""
    y = torch.arange(height, dtype=torch.float32)[:, None]
    x = torch.arange(width, dtype=torch.float32)[None, :]
    return (10 * y + x)[None, None]


def test_known_values_on_a_ramp():
    # Box (0, 0, 2, 2) in one 1x1 bin with 2x2 samples: points at 0.5 and 1.5 on each axis, mean (1, 1) -> 11.
    out = roi_align(_ramp(), [torch.tensor([[0.0, 0.0, 2.0, 2.0]])], 1, 1.0, 2)
    assert out.shape == (1, 1, 1, 1)
    assert out.item() == pytest.approx(11.0)
    # 2x2 bins of a (0, 0, 4, 4) box, 1 sample per bin: bin centres (1, 1), (1, 3), (3, 1), (3, 3);
    # x = 3 lies on the last column and y = 3 on the last row (clamped there), so the values are exact.
    out = roi_align(_ramp(), [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 2, 1.0, 1)
    assert out[0, 0].tolist() == [[11.0, 13.0], [31.0, 33.0]]


def test_points_beyond_one_cell_outside_count_zero():
    # Box (-4, 0, -2, 1), one bin, one sample at (x=-3, y=0.5): more than one cell left of the map -> 0.
    out = roi_align(_ramp(), [torch.tensor([[-4.0, 0.0, -2.0, 1.0]])], 1, 1.0, 1)
    assert out.item() == 0.0
    # A sample at x = -0.5 is within one cell: clamped to column 0 (y = 0.5 -> 5).
    out = roi_align(_ramp(), [torch.tensor([[-1.0, 0.0, 0.0, 1.0]])], 1, 1.0, 1)
    assert out.item() == pytest.approx(5.0)


def _random_boxes(generator: torch.Generator, images: int, per_image: int, size: float) -> list[torch.Tensor]:
    boxes = []
    for _ in range(images):
        xy = torch.rand(per_image, 2, generator=generator) * (size + 12) - 6
        wh = torch.rand(per_image, 2, generator=generator) * size * 0.6 + 0.2
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return boxes


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio,output_size", [(2, 7), (1, (3, 5)), (3, 2)])
def test_matches_torchvision_values_and_gradients(aligned, sampling_ratio, output_size):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 5, 12, 10, generator=gen)
    boxes = _random_boxes(gen, 3, 9, 48.0)
    mine, theirs = features.clone().requires_grad_(), features.clone().requires_grad_()
    got = roi_align(mine, boxes, output_size, 0.25, sampling_ratio, aligned)
    want = tv_roi_align(theirs, boxes, output_size, 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    weights = torch.randn(want.shape, generator=gen)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5, rtol=1e-5)
    # The [K, 5] form gives the same.
    torch.testing.assert_close(roi_align(features, boxes_to_rois(boxes), output_size, 0.25, sampling_ratio, aligned),
                               want.detach(), atol=1e-5, rtol=1e-5)


def test_multiscale_pooler_matches_torchvision():
    gen = torch.Generator().manual_seed(1)
    maps = {"0": torch.randn(2, 4, 32, 32, generator=gen), "1": torch.randn(2, 4, 16, 16, generator=gen),
            "2": torch.randn(2, 4, 8, 8, generator=gen)}
    boxes = [torch.cat([xy, xy + wh], dim=1) for xy, wh in
             ((torch.rand(30, 2, generator=gen) * 40, torch.rand(30, 2, generator=gen) * 84 + 4) for _ in range(2))]
    ours = Fp32MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2, canonical_scale=64)
    ref = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2, canonical_scale=64)
    mine = {k: v.clone().requires_grad_() for k, v in maps.items()}
    theirs = {k: v.clone().requires_grad_() for k, v in maps.items()}
    got = ours(mine, boxes, [(128, 128)] * 2)
    want = ref(theirs, boxes, [(128, 128)] * 2)
    levels = ref.map_levels(boxes)
    assert len(set(levels.tolist())) == 3  # every level pools some box
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    weights = torch.randn(want.shape, generator=gen)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    for k in maps:
        torch.testing.assert_close(mine[k].grad, theirs[k].grad, atol=1e-5, rtol=1e-5)


def test_no_boxes_give_an_empty_result():
    out = roi_align(torch.randn(1, 3, 8, 8), [torch.zeros((0, 4))], 7, 1.0, 2)
    assert out.shape == (0, 3, 7, 7)
