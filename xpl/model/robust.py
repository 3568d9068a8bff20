"""The robust student's noise model: per-pixel mask uncertainty and the losses it attenuates.

For each pseudo-labeled RoI r and mask pixel p the mask head gives a logit `mu_rp`; a sigma head
(the paper's: a 1x1 conv on the stop-gradient mask-head features; `SigmaHead` may also read the logits
and the pseudo label) gives `log sigma^2_rp`. The mask loss is the
negative log of the expected likelihood of the pseudo mask under logits perturbed by that noise,
estimated with T Monte-Carlo samples (heteroscedastic classification, Kendall & Gal 2017):

    z_t = mu + sigma * eps_t,   L = - mean_{r,p} [ logsumexp_t( -BCE(z_t, m) ) - log T ]

A pixel the student cannot fit (a wrong pseudo label) lowers its loss by growing sigma, and then
pulls less on mu. Averaging the BCE over samples instead (`sampled_bce`, the form of the XPM release)
gives sigma no reason to grow, since BCE is convex in the logit: E[BCE(mu + sigma eps)] >= BCE(mu).
It is kept, with `plain` BCE on mu, as an ablation. Pseudo instances also weigh in the
classification loss by `lambda_r = c / stopgrad(mean_p sigma_rp)`: noisier masks count less.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTINGS = ("image", "instance", "none")


SIGMA_INPUTS = ("features", "logits", "pseudo_mask")


class SigmaHead(nn.Module):
    """`log sigma^2` per RoI and mask pixel, from what `inputs` names, none of which it trains:
    - `features`: the mask head's last features (the paper's head: a 1x1 conv on them alone);
    - `logits`: the student's own mask logits `mu`;
    - `pseudo_mask`: the pseudo label itself.
    A head that sees neither the label nor the logits can only learn noise the features predict (object
    boundaries, hard classes); one that sees both can learn where the label and the student disagree.
    `hidden` > 0 puts a per-pixel layer of that width with a ReLU before the output (a 1x1 conv cannot
    express such a disagreement, which is not linear in `mu` and the label); `instance` adds a per-RoI term
    from the pooled hidden features (one log variance for a wholly wrong instance).

    The output layer starts at zero with bias `log sigma0^2`, so sigma starts at `sigma0` everywhere (near 0
    the noise gradient vanishes and sigma would never grow); the output is clamped to [min, max] log variance.
    """

    def __init__(self, in_channels: int, *, sigma0: float = 1.0, inputs: Sequence[str] = ("features",),
                 hidden: int = 0, instance: bool = False, min_log_var: float = -8.0, max_log_var: float = 6.0) -> None:
        super().__init__()
        if sigma0 <= 0:
            raise ValueError(f"sigma0 must be positive, got {sigma0}")
        unknown = [name for name in inputs if name not in SIGMA_INPUTS]
        if unknown or not inputs:
            raise ValueError(f"sigma inputs must be among {SIGMA_INPUTS}, got {list(inputs)}")
        if instance and hidden <= 0:
            raise ValueError("a per-instance sigma term needs a hidden layer (hidden > 0)")
        self.inputs = tuple(inputs)
        channels = (in_channels if "features" in self.inputs else 0) + sum(n != "features" for n in self.inputs)
        self.hidden = nn.Sequential(nn.Conv2d(channels, hidden, kernel_size=1), nn.ReLU()) if hidden else None
        self.conv = nn.Conv2d(hidden or channels, 1, kernel_size=1)
        self.instance = nn.Linear(hidden, 1) if instance else None
        for layer in (self.conv, self.instance):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        nn.init.constant_(self.conv.bias, 2 * math.log(sigma0))
        self.min_log_var, self.max_log_var = min_log_var, max_log_var

    def forward(self, features: torch.Tensor, logits: Optional[torch.Tensor] = None,
                pseudo_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[R, C, M, M] mask-head features, [R, M, M] logits and pseudo mask -> [R, M, M] log sigma^2 (fp32).
        Every input is detached: sigma learns from the mask loss alone and never moves what it reads."""
        given = {"features": features, "logits": logits, "pseudo_mask": pseudo_mask}
        missing = [name for name in self.inputs if given[name] is None]
        if missing:
            raise ValueError(f"the sigma head reads {missing}: pass them")
        x = torch.cat([given[name].detach().float() if name == "features" else given[name].detach().float()[:, None]
                       for name in self.inputs], dim=1).to(self.conv.weight.dtype)
        if self.hidden is not None:
            x = self.hidden(x)
        log_var = self.conv(x).float()[:, 0]
        if self.instance is not None:
            log_var = log_var + self.instance(x.mean(dim=(2, 3))).float()[:, :, None]
        return log_var.clamp(self.min_log_var, self.max_log_var)


class ClassNoiseHead(nn.Module):
    """`log sigma^2` of each pseudo-labeled RoI's class logits (one per instance), from its box features and how far
    its logits put its pseudo class behind the best other class, both detached: a caption word that pointed at
    the wrong object leaves a RoI whose features say another class, and its class noise grows (heteroscedastic
    classification, Kendall & Gal 2017). A small MLP; the output layer starts at zero with bias `log sigma0^2`."""

    def __init__(self, in_features: int, *, sigma0: float = 1.0, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_features + 1, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, 2 * math.log(sigma0))

    def forward(self, box_features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[R, F] box features, [R, C+1] logits, [R] pseudo labels -> [R] log sigma^2 (fp32)."""
        return self.out(self.hidden(torch.cat([box_features.detach().float(),
                                               class_margin(logits.detach().float(), labels)[:, None]], dim=1)))[:, 0]


def class_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[R] logit of each RoI's label minus the best other logit (negative: the RoI looks like another class)."""
    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf")).max(dim=1).values
    return own - others


def class_noise_loss(logits: torch.Tensor, log_var: torch.Tensor, labels: torch.Tensor, samples: int,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[R] - log of the probability of each RoI's label averaged over T noisy logits `logits + sigma_r eps_t` (the
    expected likelihood, as for masks): a RoI whose label the student cannot reach lowers it by a larger sigma."""
    sigma = torch.exp(0.5 * log_var.float())[None, :, None]
    eps = torch.randn((samples, *logits.shape), device=logits.device, generator=generator)
    log_probs = torch.log_softmax(logits.float()[None] + sigma * eps, dim=-1)  # [T, R, C+1]
    own = log_probs.gather(2, labels[None, :, None].expand(samples, -1, 1))[..., 0]
    return -(torch.logsumexp(own, dim=0) - math.log(samples))


def _noisy_bce(mu: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, samples: int,
               generator: Optional[torch.Generator]) -> torch.Tensor:
    """[T, R, M, M] BCE of the pseudo mask under T noisy logits `mu + sigma * eps_t`."""
    sigma = torch.exp(0.5 * log_var.float())
    eps = torch.randn((samples, *mu.shape), device=mu.device, generator=generator)
    z = mu.unsqueeze(0) + sigma.unsqueeze(0) * eps
    return F.binary_cross_entropy_with_logits(z, target.expand_as(z), reduction="none")


def expected_likelihood_loss(mu: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, samples: int,
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """- mean log of the likelihood averaged over T samples (the paper's equation)."""
    log_likelihood = torch.logsumexp(-_noisy_bce(mu, log_var, target, samples, generator), dim=0) - math.log(samples)
    return -log_likelihood.mean()


def sampled_bce_loss(mu: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, samples: int,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The BCE averaged over T samples (the XPM release's code, with T = 1 there)."""
    return _noisy_bce(mu, log_var, target, samples, generator).mean()


def plain_bce_loss(mu: torch.Tensor, log_var: Optional[torch.Tensor], target: torch.Tensor, samples: int,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The ordinary BCE on `mu` (no noise model)."""
    return F.binary_cross_entropy_with_logits(mu, target)


@dataclass(frozen=True)
class LossMode:
    """A pseudo mask loss: its function of (mu, log_var, target, samples, generator), and whether it has a sigma
    (which then also weighs the pseudo classification and box losses)."""

    loss: Callable[..., torch.Tensor]
    uses_sigma: bool


MODES = {
    "expected_likelihood": LossMode(expected_likelihood_loss, uses_sigma=True),
    "sampled_bce": LossMode(sampled_bce_loss, uses_sigma=True),
    "plain": LossMode(plain_bce_loss, uses_sigma=False),
}


def robust_mask_loss(mu: torch.Tensor, log_var: Optional[torch.Tensor], target: torch.Tensor, *,
                     mode: str, samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Scalar mask loss of `MODES[mode]` over RoIs and pixels (see the module docstring), computed in fp32.

    Args:
        mu: [R, M, M] mask logits. log_var: [R, M, M] log sigma^2 (unused without sigma).
        target: [R, M, M] pseudo mask in {0, 1}. samples: T Monte-Carlo draws.
        generator: for the noise draws (tests); the noise lives on `mu`'s device.
    """
    if mode not in MODES:
        raise ValueError(f"unknown robust loss mode {mode!r}; choose one of {', '.join(MODES)}")
    mu, target = mu.float(), target.float()
    if mu.numel() == 0:
        return mu.sum() * 0.0
    if MODES[mode].uses_sigma and log_var is None:
        raise ValueError(f"mode {mode!r} needs log_var")
    return MODES[mode].loss(mu, log_var, target, samples, generator)


def instance_weights(log_var: torch.Tensor, *, c: float = 1.0, min_weight: float = 0.1,
                     max_weight: float = 10.0) -> torch.Tensor:
    """[R] weights `c / mean_p sigma_rp` of pseudo instances (no gradient), clamped to
    [min_weight, max_weight] and then scaled to mean 1, so they reweigh instances without changing
    the loss's overall scale."""
    if log_var.shape[0] == 0:
        return log_var.new_zeros(0)
    sigma = torch.exp(0.5 * log_var.detach().float()).flatten(1).mean(1)
    weights = (c / sigma).clamp(min_weight, max_weight)
    return weights / weights.mean()


def image_weights(log_var: torch.Tensor, images: torch.Tensor, n_images: int, *, c: float = 0.01) -> torch.Tensor:
    """[n_images] weights `lambda_i = c / stopgrad(mean sigma)` over the pixels of image i's positive RoIs
    (the XPM release's lambda, which scales an image's pseudo classification and box losses); 0 for an
    image without positives, which has no pseudo instance to learn from.

    Args:
        log_var: [R, M, M] log sigma^2 of the positive RoIs. images: [R] the image index of each.
    """
    sigma = torch.exp(0.5 * log_var.detach().float()).flatten(1).mean(1)
    totals = sigma.new_zeros(n_images).index_add_(0, images, sigma)
    counts = sigma.new_zeros(n_images).index_add_(0, images, torch.ones_like(sigma))
    mean = totals / counts.clamp_min(1)
    return torch.where(counts > 0, c / mean.clamp_min(1e-12), torch.zeros_like(mean))
