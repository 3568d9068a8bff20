"""RoIAlign on CPU as a weighted gather of bilinear taps: torchvision's numbers, faster to train through
(docs/benchmarks.md).

torchvision's CPU `roi_align` backward recomputes every sample point's bilinear weights once per channel
and adds them into the input gradient one value at a time; it is the largest single cost of a Mask
R-CNN training step here. The same operator is linear in the features: each output value is a weighted
sum of 4 x sampling_ratio^2 feature-map rows. `bilinear_taps` computes those rows and weights once per
RoI bin, both passes are `embedding_bag` calls over channels-last rows (the backward one over the taps
grouped by row), which vectorise over channels. All FPN levels share one table, so a multi-level pool
is one gather. Off the CPU, or with an adaptive sampling ratio, torchvision's kernels run unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """[K, 5] rows (image index, x1, y1, x2, y2) from per-image [n, 4] boxes."""
    if not boxes:
        return torch.zeros((0, 5))
    index = [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(index), torch.cat(list(boxes))], dim=1)


def _axis(pos: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's bilinear rule along one axis: low/high cells, the high cell's weight, validity.

    A point beyond one cell outside the map contributes 0; points within it are clamped to the edge.
    """
    valid = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, size - 1, low)
    high = torch.where(edge, size - 1, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low)
    return low, high, frac, valid


def bilinear_taps(
    rois: Tensor,
    *,
    scale: Tensor,
    height: Tensor,
    width: Tensor,
    row_offset: Tensor,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool = False,
) -> tuple[Tensor, Tensor]:
    """Feature-table rows and weights whose weighted sum is each RoIAlign output bin.

    Args:
        rois: [K, 5] (image index, x1, y1, x2, y2) in image coordinates.
        scale, height, width, row_offset: [K] per RoI: the spatial scale and size of the map it pools
            from, and where that map's image 0 starts in the table (rows are (image, y, x), channels-last).
        output_size: (bins high, bins wide).
        sampling_ratio: sample points per bin along each axis (> 0).
        aligned: torchvision's `aligned` (shift by half a pixel, no minimum RoI size of 1).
    Returns:
        rows, weights: [K * ph * pw, 4 * sampling_ratio^2]; row-major over (RoI, bin y, bin x).
    """
    ph, pw = output_size
    s = sampling_ratio
    dtype = torch.float32
    shift = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:].to(dtype) * scale.to(dtype)[:, None] - shift).unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    steps_x = (torch.arange(pw * s, dtype=dtype, device=rois.device) + 0.5) / s
    steps_y = (torch.arange(ph * s, dtype=dtype, device=rois.device) + 0.5) / s
    xs = x1[:, None] + steps_x[None] * (roi_w / pw)[:, None]
    ys = y1[:, None] + steps_y[None] * (roi_h / ph)[:, None]
    x_low, x_high, fx, vx = _axis(xs, width[:, None])
    y_low, y_high, fy, vy = _axis(ys, height[:, None])
    k = len(rois)
    base = (row_offset + rois[:, 0].long() * height * width).view(k, 1, 1)
    # [K, ph*s, pw*s] per corner, then bins with their s x s points as the last axes.
    y_rows = [(y_low * width[:, None])[:, :, None], (y_high * width[:, None])[:, :, None]]
    x_cols = [x_low[:, None, :], x_high[:, None, :]]
    y_wts = [(1 - fy)[:, :, None], fy[:, :, None]]
    x_wts = [(1 - fx)[:, None, :], fx[:, None, :]]
    inside = (vy[:, :, None] & vx[:, None, :]).to(dtype) / (s * s)
    rows = torch.stack([base + yr + xc for yr in y_rows for xc in x_cols], dim=-1)
    weights = torch.stack([yw * xw * inside for yw in y_wts for xw in x_wts], dim=-1)

    def per_bin(t: Tensor) -> Tensor:
        return t.view(k, ph, s, pw, s, 4).permute(0, 1, 3, 2, 4, 5).reshape(k * ph * pw, s * s * 4)

    return per_bin(rows), per_bin(weights)


class _TapSum(torch.autograd.Function):
    """out[i] = sum_t weights[i, t] * table[rows[i, t]]; the backward pass gathers by table row."""

    @staticmethod
    def forward(ctx, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(rows, weights)
        ctx.table_rows = table.shape[0]
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        rows, weights = ctx.saved_tensors
        flat = rows.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=ctx.table_rows)
        offsets = torch.cumsum(counts, 0) - counts
        sources = torch.div(order, rows.shape[1], rounding_mode="floor")
        table_grad = F.embedding_bag(sources, grad.contiguous(), offsets,
                                     per_sample_weights=weights.reshape(-1)[order], mode="sum")
        return table_grad, None, None


def _table(maps: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
    """All maps' features as one channels-last [rows, C] table, and where each map starts."""
    flats = [m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps]
    starts = [0]
    for f in flats[:-1]:
        starts.append(starts[-1] + f.shape[0])
    return torch.cat(flats), starts


def pool_levels(
    maps: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: Sequence[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool = False,
) -> Tensor:
    """[K, C, ph, pw] RoIAlign of each RoI on the map `levels` picks for it (fp32 CPU maps)."""
    ph, pw = output_size
    channels = maps[0].shape[1]
    if len(rois) == 0:
        return maps[0].new_zeros((0, channels, ph, pw))
    table, starts = _table(maps)

    def per_roi(values: Sequence[float | int], dtype: torch.dtype) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=rois.device)[levels]

    rows, weights = bilinear_taps(
        rois,
        scale=per_roi(scales, torch.float32),
        height=per_roi([m.shape[2] for m in maps], torch.long),
        width=per_roi([m.shape[3] for m in maps], torch.long),
        row_offset=per_roi(starts, torch.long),
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    out = _TapSum.apply(table, rows, weights)
    return out.view(len(rois), ph, pw, channels).permute(0, 3, 1, 2)


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """torchvision's `roi_align` (same arguments and numbers); the tap gather on fp32 CPU input."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if input.device.type != "cpu" or input.dtype != torch.float32 or sampling_ratio <= 0:
        return tv_roi_align(input, boxes, size, spatial_scale, sampling_ratio, aligned)
    rois = boxes if isinstance(boxes, Tensor) else boxes_to_rois(boxes)
    levels = torch.zeros(len(rois), dtype=torch.long, device=rois.device)
    return pool_levels([input], rois, levels, [spatial_scale], size, sampling_ratio, aligned)
