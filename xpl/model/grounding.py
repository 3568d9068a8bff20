"""OVR-CNN caption-grounding loss: pure functions over region and token embeddings.

For image b's regions v_i and caption c's tokens w_j, s_ij = <v_i, w_j> / tau.
- word-to-region: a_ji = softmax_i(s_ij), S(b, c) = mean_j sum_i a_ji s_ij
- region-to-word: a'_ij = softmax_j(s_ij), S'(b, c) = mean_i sum_j a'_ij s_ij
Means and softmaxes run over valid (unpadded) entries only. The loss is the
in-batch cross-entropy over S and over S', each both ways (the caption for each
image, the image for each caption): the sum of these four terms, as OVR-CNN and the XPM
release add them to the pretraining loss.
`caption_label_loss` is the multiple-instance twin over a fixed vocabulary: the classes a caption
names must be found in some region of its image, the others in none.
Computed in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _attended(s: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """sum over `dim` of softmax_dim(s) * s, restricted to the `valid` entries."""
    masked = s.masked_fill(~valid, torch.finfo(s.dtype).min)
    attention = torch.softmax(masked, dim=dim)
    return (attention * s * valid).sum(dim)


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x over its last dim where `valid`; 0 where nothing is valid."""
    valid = valid.to(x.dtype)
    return (x * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def pair_scores(
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    tau: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-caption scores for every image/caption pair of a batch.

    Args:
        regions: [B, N, D] region embeddings v_i per image.
        region_mask: [B, N] bool, True for real regions.
        tokens: [B, T, D] token embeddings w_j per caption (caption b belongs to image b).
        token_mask: [B, T] bool, True for real tokens.
        tau: temperature.

    Returns:
        (S, S_r2w), each [B_img, B_cap]: word-to-region and region-to-word scores.
        An image with no valid region or a caption with no valid token scores 0.
    """
    s = torch.einsum("bnd,ctd->bcnt", regions.float(), tokens.float()) / tau  # [B, C, N, T]
    rvalid = region_mask[:, None, :, None]
    tvalid = token_mask[None, :, None, :]
    word_to_region = _attended(s, rvalid, dim=2)  # [B, C, T]
    region_to_word = _attended(s, tvalid, dim=3)  # [B, C, N]
    scores = _masked_mean(word_to_region, token_mask[None, :, :])
    scores_r2w = _masked_mean(region_to_word, region_mask[:, None, :])
    return scores, scores_r2w


def grounding_loss(
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    tau: float = 1.0,
) -> torch.Tensor:
    """Scalar in-batch grounding loss: the sum of the four cross-entropies (see module doc)."""
    scores, scores_r2w = pair_scores(regions, region_mask, tokens, token_mask, tau)
    target = torch.arange(scores.shape[0], device=scores.device)
    terms = [F.cross_entropy(m, target) for m in (scores, scores.T, scores_r2w, scores_r2w.T)]
    return torch.stack(terms).sum()


def caption_label_loss(
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    class_embeddings: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Multiple-instance loss of caption-named classes over an image's regions (fp32).

    Each image scores each vocabulary class by its best region, `max_i <v_i, t_c>`, and that score is
    pushed up for the classes its caption names (`labels` 1) and down for the others (binary cross-
    entropy; the background's fixed logit 0 is the decision point, as in the detector's classifier).

    Args:
        regions: [B, N, D] region embeddings. region_mask: [B, N] bool, True for real regions.
        class_embeddings: [C, D] vocabulary embeddings. labels: [B, C] in {0, 1}.
    """
    logits = regions.float() @ class_embeddings.float().T  # [B, N, C]
    logits = logits.masked_fill(~region_mask[..., None], torch.finfo(torch.float32).min)
    scores = logits.max(dim=1).values
    has_region = region_mask.any(dim=1)
    return F.binary_cross_entropy_with_logits(scores[has_region], labels.float()[has_region])
