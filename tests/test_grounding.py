"""OVR-CNN grounding loss: exact values, padding, matched vs shuffled pairs."""

import math

import pytest
import torch
import torch.nn.functional as F

from xpl.model.grounding import caption_label_loss, grounding_loss, pair_scores


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def _hand_scores(regions, tokens, tau):
    """S and S' for one image (list of vectors) and one caption, in plain python."""
    s = [[_dot(v, w) / tau for w in tokens] for v in regions]  # s[i][j]
    w2r = []
    for j in range(len(tokens)):
        col = [s[i][j] for i in range(len(regions))]
        w2r.append(sum(a * x for a, x in zip(_softmax(col), col)))
    r2w = [sum(a * x for a, x in zip(_softmax(row), row)) for row in s]
    return sum(w2r) / len(w2r), sum(r2w) / len(r2w)


ALL2 = torch.ones(2, 2, dtype=torch.bool)
REGIONS = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.5, -1.0]]]  # B=2, N=2, D=2
TOKENS = [[[1.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [-1.0, 0.5]]]  # B=2, T=2, D=2


def test_pair_scores_match_hand_computation():
    tau = 0.5
    scores, scores_r2w = pair_scores(torch.tensor(REGIONS), ALL2, torch.tensor(TOKENS), ALL2, tau)
    for b in range(2):
        for c in range(2):
            s, s_r2w = _hand_scores(REGIONS[b], TOKENS[c], tau)
            assert scores[b, c].item() == pytest.approx(s, abs=1e-6)
            assert scores_r2w[b, c].item() == pytest.approx(s_r2w, abs=1e-6)
    # One entry spelled out: image 0 regions (1,0),(0,1), caption 0 tokens (1,0),(0,2), tau 0.5:
    # s = [[2, 0], [0, 4]]; word 1 attends softmax([2, 0]), word 2 softmax([0, 4]).
    e2, e4 = math.exp(2), math.exp(4)
    expected = 0.5 * (2 * e2 / (e2 + 1) + 4 * e4 / (e4 + 1))
    assert scores[0, 0].item() == pytest.approx(expected, abs=1e-6)


def test_grounding_loss_matches_hand_computation():
    tau = 1.0
    loss = grounding_loss(torch.tensor(REGIONS), ALL2, torch.tensor(TOKENS), ALL2, tau)
    pairs = [[_hand_scores(REGIONS[b], TOKENS[c], tau) for c in range(2)] for b in range(2)]
    terms = []
    for k in range(2):  # S, then S'
        m = [[pairs[b][c][k] for c in range(2)] for b in range(2)]
        for b in range(2):  # caption for each image (rows)
            terms.append(-math.log(_softmax(m[b])[b]))
        for c in range(2):  # image for each caption (columns)
            terms.append(-math.log(_softmax([m[b][c] for b in range(2)])[c]))
    # Each of the 4 cross-entropies is a mean over the batch; the loss sums the 4, as the release does.
    assert loss.item() == pytest.approx(sum(terms) / 2, abs=1e-6)


def test_padding_does_not_change_scores():
    torch.manual_seed(0)
    regions, tokens = torch.randn(3, 4, 8), torch.randn(3, 5, 8)
    rmask, tmask = torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool)
    rmask[1, 3] = False
    tmask[2, 3:] = False
    padded_regions = regions.clone()
    padded_regions[1, 3] = 100.0
    padded_tokens = tokens.clone()
    padded_tokens[2, 3:] = -50.0
    a = pair_scores(regions, rmask, tokens, tmask)
    b = pair_scores(padded_regions, rmask, padded_tokens, tmask)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    # Same as dropping the padded entries altogether.
    s_short, r2w_short = pair_scores(regions[1:2, :3], rmask[1:2, :3], tokens[2:3, :3], tmask[2:3, :3])
    torch.testing.assert_close(a[0][1, 2], s_short[0, 0])
    torch.testing.assert_close(a[1][1, 2], r2w_short[0, 0])
    assert torch.isfinite(grounding_loss(padded_regions, rmask, padded_tokens, tmask))


def test_matched_pairs_score_lower_loss_than_shuffled():
    torch.manual_seed(0)
    regions = torch.randn(6, 10, 16)
    tokens = regions[:, :4] + 0.1 * torch.randn(6, 4, 16)  # each caption names 4 of its image's regions
    rmask, tmask = torch.ones(6, 10, dtype=torch.bool), torch.ones(6, 4, dtype=torch.bool)
    matched = grounding_loss(regions, rmask, tokens, tmask)
    shuffled = grounding_loss(regions, rmask, tokens.roll(1, dims=0), tmask)
    assert matched < 0.5 * shuffled


def test_gradient_flows_to_both_sides():
    regions = torch.randn(2, 3, 4, requires_grad=True)
    tokens = torch.randn(2, 2, 4, requires_grad=True)
    loss = grounding_loss(regions, torch.ones(2, 3, dtype=torch.bool), tokens, torch.ones(2, 2, dtype=torch.bool))
    loss.backward()
    assert regions.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0


def test_caption_label_loss_matches_hand_computation():
    regions = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [9.0, 9.0]],   # third region is padding
                            [[-1.0, 0.5], [0.0, 0.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # image 0: class scores max(1, 0) = 1 and max(0, 2) = 2; image 1: -1 and 0.5
    scores = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    expected = F.binary_cross_entropy_with_logits(scores, labels)
    assert caption_label_loss(regions, valid, classes, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_caption_label_loss_skips_images_without_regions_and_trains_the_best_region_only():
    regions = torch.tensor([[[1.0, 0.0], [0.5, 0.0]], [[3.0, 3.0], [3.0, 3.0]]], requires_grad=True)
    valid = torch.tensor([[True, True], [False, False]])
    loss = caption_label_loss(regions, valid, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [0.0]]))
    assert loss.item() == pytest.approx(F.softplus(torch.tensor(-1.0)).item(), rel=1e-6)
    loss.backward()
    assert regions.grad[0, 0, 0] < 0 and regions.grad[0, 1].abs().sum() == 0 and regions.grad[1].abs().sum() == 0
