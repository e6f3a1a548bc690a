"""Stain jitter: the encoder sees each training cell as another slide might show it, while the
loss still compares the reconstruction with the cell as it is (``train.stain_jitter``).

Standardising each cell's interior per channel (``data.normalize: per_cell``) takes away the
stain's shade and strength, but not how the channels mix (a bluer or redder Giemsa) nor how
deep the dark spots and the pale centre run against the rest of the cell. On the sample, the
interiors of most slides' infected cells are skewed dark (the spots), but those of patient C116,
whose fold reads worst, are skewed pale like uninfected cells (docs/latent_quality.md): a probe
fit on the other slides places its threshold where C116's cells do not lie. So each training
image's interior is, per channel, standardised, bent by a contrast curve ``|z|^gamma`` with one
gamma for the dark side and another for the pale side (which moves the skew), mixed with the other
channels by a matrix near the identity, standardised again and put back at the channel's own
mean and spread: the input keeps every statistic per-cell standardisation fixes, and changes in
those it does not. The target stays clean, as a denoising autoencoder's does, so the code is
rewarded for what survives the jitter. The padding and the test side are never touched.
"""

from __future__ import annotations

import torch

# at strength s: each gamma within exp(+-s), each mixing weight within +-s/2 of the identity's
MIXING_SHARE = 0.5
# the spread below which a channel is flat (a blank cell): left as it is
MIN_SPREAD = 1e-3


def _interior_moments(x: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel, the mean and standard deviation of the ``inside`` pixels."""
    count = inside.sum(dim=(-2, -1), keepdim=True).clamp(min=1)
    mean = (x * inside).sum(dim=(-2, -1), keepdim=True) / count
    spread = ((x - mean).pow(2) * inside).sum(dim=(-2, -1), keepdim=True) / count
    return mean, spread.sqrt()


def stain_jitter(x: torch.Tensor, masks: torch.Tensor, strength: float) -> torch.Tensor:
    """Images ``x`` (B, C, H, W, floats) with each interior (``masks`` (B, H, W) or (B, 1, H, W),
    non-zero inside the cell) re-stained at random; ``strength`` 0 returns ``x`` itself.

    Drawn from torch's generator on ``x``'s device, which the run's seed fixes.
    """
    if strength <= 0:
        return x
    batch, channels = x.shape[:2]
    inside = (masks.reshape(batch, 1, *x.shape[-2:]) > 0).to(x.dtype)
    mean, spread = _interior_moments(x, inside)
    flat = spread < MIN_SPREAD
    z = (x - mean) / spread.clamp(min=MIN_SPREAD)
    # per image and channel, one gamma for the dark side (z < 0) and one for the pale side
    gammas = torch.exp(strength * (2 * torch.rand(2, batch, channels, 1, 1, device=x.device) - 1))
    z = z.sign() * z.abs().pow(torch.where(z < 0, gammas[0], gammas[1]))
    noise = 2 * torch.rand(batch, channels, channels, device=x.device, dtype=x.dtype) - 1
    mixing = torch.eye(channels, device=x.device, dtype=x.dtype) + MIXING_SHARE * strength * noise
    z = torch.einsum("bij,bjhw->bihw", mixing, z)
    z_mean, z_spread = _interior_moments(z, inside)
    jittered = mean + spread * (z - z_mean) / z_spread.clamp(min=MIN_SPREAD)
    jittered = torch.where(flat, x, jittered)
    return torch.where(inside > 0, jittered, x).clamp(0.0, 1.0)
