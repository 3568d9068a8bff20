"""The robust student's noise model: exact values, gradients, and what sigma learns on flipped pixels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xpl.model.robust import MODES, SigmaHead, expected_likelihood_loss, instance_weights, robust_mask_loss


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sigma_to_zero_with_one_sample_is_bce() -> None:
    mu = torch.tensor([[[-2.0, 0.5], [3.0, -0.1]]])
    target = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    tiny = torch.full_like(mu, -60.0)  # sigma = e^-30
    bce = F.binary_cross_entropy_with_logits(mu, target)
    for mode in ("expected_likelihood", "sampled_bce"):
        assert robust_mask_loss(mu, tiny, target, mode=mode, samples=1, generator=_gen()) == pytest.approx(
            bce.item(), abs=1e-6)
    assert robust_mask_loss(mu, None, target, mode="plain", samples=1) == pytest.approx(bce.item(), abs=1e-7)
    assert [name for name, m in MODES.items() if m.uses_sigma] == ["expected_likelihood", "sampled_bce"]


def test_expected_likelihood_known_value_with_fixed_noise() -> None:
    mu, target, log_var = torch.tensor([[[0.5]]]), torch.tensor([[[1.0]]]), torch.tensor([[[math.log(4.0)]]])
    eps = torch.randn((3, 1, 1, 1), generator=_gen(5))
    z = 0.5 + 2.0 * eps.flatten()
    expected = -math.log(torch.sigmoid(z).mean().item())
    loss = robust_mask_loss(mu, log_var, target, mode="expected_likelihood", samples=3, generator=_gen(5))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_on_a_misfit_pixel_shrinks_as_sigma_grows() -> None:
    grads = []
    for sigma in (0.25, 1.0, 2.0, 4.0):
        mu = torch.tensor([[[-2.0]]], requires_grad=True)
        log_var = torch.tensor([[[2 * math.log(sigma)]]])
        robust_mask_loss(mu, log_var, torch.ones(1, 1, 1), mode="expected_likelihood", samples=4000,
                         generator=_gen(1)).backward()
        grads.append(abs(mu.grad.item()))
    assert grads == sorted(grads, reverse=True) and grads[-1] < 0.5 * grads[0]


def test_sigma_head_starts_at_sigma0_and_never_trains_the_features() -> None:
    head = SigmaHead(8, sigma0=1.5)
    features = torch.randn(3, 8, 5, 5, requires_grad=True)
    log_var = head(features)
    assert log_var.shape == (3, 5, 5)
    assert torch.allclose(log_var, torch.full_like(log_var, 2 * math.log(1.5)))
    log_var.sum().backward()
    assert features.grad is None and head.conv.weight.grad is not None
    assert head(torch.full((1, 8, 2, 2), 1e6)).max() <= head.max_log_var


def test_instance_weights_known_values() -> None:
    log_var = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 2 * math.log(2.0))])  # sigma 1 and 2
    assert torch.allclose(instance_weights(log_var, c=1.0), torch.tensor([4 / 3, 2 / 3]))
    assert torch.allclose(instance_weights(torch.full((2, 1, 1), -20.0), max_weight=10.0), torch.ones(2))
    assert instance_weights(torch.zeros(0, 2, 2)).shape == (0,)


def test_unknown_mode_and_missing_log_var_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown robust loss mode"):
        robust_mask_loss(torch.zeros(1, 2, 2), None, torch.zeros(1, 2, 2), mode="bce", samples=1)
    with pytest.raises(ValueError, match="needs log_var"):
        robust_mask_loss(torch.zeros(1, 2, 2), None, torch.zeros(1, 2, 2), mode="sampled_bce", samples=1)


def _fit_flipped(mode: str, steps: int = 400) -> tuple[float, float]:
    """Fit a disc mask whose labels are flipped on a known 15 % of pixels. The logit is a*feature + b
    (the feature knows the clean disc, not the flips), so mu cannot fit the flipped pixels; log sigma^2 is
    free per pixel. Returns mean sigma on flipped and on clean pixels."""
    size = 16
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    clean = (((yy - 7.5) ** 2 + (xx - 7.5) ** 2) < 30).float()[None]
    flipped = torch.rand(clean.shape, generator=_gen(2)) < 0.15
    target = torch.where(flipped, 1 - clean, clean)
    feature = 2 * clean - 1
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    log_var = torch.zeros_like(clean, requires_grad=True)  # sigma0 = 1
    opt = torch.optim.Adam([a, b, log_var], lr=0.05)
    gen = _gen(3)
    for _ in range(steps):
        loss = robust_mask_loss(a * feature + b, log_var, target, mode=mode, samples=8, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sigma = torch.exp(0.5 * log_var.detach())
    return sigma[flipped].mean().item(), sigma[~flipped].mean().item()


def test_learned_sigma_is_larger_on_flipped_pixels_only_with_the_expected_likelihood() -> None:
    noisy, clean = _fit_flipped("expected_likelihood")
    assert noisy > 3 * clean and noisy > 1.0 and clean < 1.0
    # Averaged BCE is convex in the logit: noise only adds loss, so sigma shrinks on every pixel and
    # learns nothing about which labels are wrong.
    noisy_bce, clean_bce = _fit_flipped("sampled_bce")
    assert noisy_bce < 1.0 and clean_bce < 1.0 and noisy_bce < 1.5 * clean_bce


def test_sigma_head_reads_the_logits_and_the_pseudo_mask_and_starts_at_sigma0() -> None:
    torch.manual_seed(0)
    head = SigmaHead(4, sigma0=2.0, inputs=("features", "logits", "pseudo_mask"), hidden=8, instance=True)
    features, mu, label = torch.randn(3, 4, 5, 5), torch.randn(3, 5, 5, requires_grad=True), torch.ones(3, 5, 5)
    log_var = head(features, mu, label)
    assert torch.allclose(log_var, torch.full((3, 5, 5), 2 * math.log(2.0)))
    expected_likelihood_loss(mu, log_var, label, 2, generator=_gen()).backward()
    assert head.conv.weight.grad.abs().sum() > 0 and mu.grad is not None  # sigma learns; mu's gradient is the loss's
    with torch.no_grad():  # a known head: log sigma^2 = the margin by which mu disagrees with the label
        head.hidden[0].weight.zero_(), head.hidden[0].bias.zero_(), head.conv.weight.zero_(), head.conv.bias.zero_()
        head.instance.weight.zero_()
        head.hidden[0].weight[0, 4] = -1.0  # channel 4 is mu (after the 4 features): relu(-mu)
        head.conv.weight[0, 0] = 1.0
    out = head(torch.zeros(3, 4, 1, 2), torch.tensor([-2.0, 3.0]).view(1, 1, 2).expand(3, 1, 2), torch.ones(3, 1, 2))
    assert out[0].tolist() == [[2.0, 0.0]]
    with pytest.raises(ValueError, match="reads \\['pseudo_mask'\\]"):
        head(features, mu)
    with pytest.raises(ValueError, match="needs a hidden layer"):
        SigmaHead(4, instance=True)


def test_class_margin_and_the_class_noise_loss_known_values() -> None:
    from xpl.model.robust import class_margin, class_noise_loss

    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, -1.0, 2.0]])
    labels = torch.tensor([1, 1])
    assert class_margin(logits, labels).tolist() == [2.0, -3.0]  # the second RoI looks like class 2
    tiny = torch.full((2,), -60.0)  # no noise: the cross-entropy
    assert torch.allclose(class_noise_loss(logits, tiny, labels, 3, generator=_gen()),
                          F.cross_entropy(logits, labels, reduction="none"), atol=1e-5)
    eps = torch.randn((2, 2, 3), generator=_gen(4))
    z = logits[None] + 2.0 * eps
    expected = -torch.log(torch.softmax(z, dim=-1)[:, :, 1].mean(0))
    loss = class_noise_loss(logits, torch.full((2,), math.log(4.0)), labels, 2, generator=_gen(4))
    assert torch.allclose(loss, expected, atol=1e-5)
    hopeless = torch.tensor([[0.0, -6.0, 6.0]])  # the label is far behind: noise raises its likelihood
    assert class_noise_loss(hopeless, torch.tensor([math.log(9.0)]), torch.tensor([1]), 4000, generator=_gen()) < \
        class_noise_loss(hopeless, torch.tensor([-20.0]), torch.tensor([1]), 4000, generator=_gen())
