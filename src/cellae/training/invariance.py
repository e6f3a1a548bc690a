"""A VICReg term between the codes of each cell and of a second view of it (``train.invariance``).

Reconstruction alone lets a code spend its numbers on whatever is largest in the pixels: the
pose, the stain's shade, the outline. Bardes et al. (2022, VICReg) keep a code on what two
views of one image share: *invariance* (the mean squared distance of the two codes), *variance*
(each dimension's spread over the batch held up to 1, so the codes cannot shrink to a point)
and *covariance* (dimensions decorrelated, so they do not repeat each other), weighted
25 : 25 : 1 as in the paper; here the sum is scaled to one number, and ``train.invariance``
weighs it beside the reconstruction loss.

The second view is the same cell as a slide would show it again: turned or mirrored, each
channel's gain and offset changed a little (stain and exposure), moved by up to two pixels.
"""

from __future__ import annotations

import torch

from cellae.data.augment import dihedral

# VICReg's weights, relative to its invariance term (25 : 25 : 1 in the paper)
VARIANCE_WEIGHT = 1.0
COVARIANCE_WEIGHT = 0.04
# the second view's colour change: gain within +-10%, offset within +-0.05 of the range
GAIN, OFFSET = 0.10, 0.05
MAX_SHIFT = 2


def second_view(x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``x`` (B, C, H, W in [0, 1]) as another look at the same cells, and the cells'
    ``masks`` (B, H, W) turned and moved alike."""
    view, view_masks = dihedral(x, masks)
    batch, channels = view.shape[:2]
    gain = 1 + GAIN * (2 * torch.rand(batch, channels, 1, 1, device=x.device) - 1)
    offset = OFFSET * (2 * torch.rand(batch, channels, 1, 1, device=x.device) - 1)
    view = (view * gain + offset).clamp_(0.0, 1.0)
    shift = tuple(int(s) for s in torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,)).tolist())
    return (torch.roll(view, shifts=shift, dims=(-2, -1)),
            torch.roll(view_masks, shifts=shift, dims=(-2, -1)))


def vicreg(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """invariance + variance + covariance of two batches of codes (B, D); one number."""
    invariance = (z1 - z2).pow(2).mean()
    terms = [invariance]
    for z in (z1, z2):
        centred = z - z.mean(dim=0)
        std = torch.sqrt(centred.var(dim=0) + 1e-4)
        terms.append(VARIANCE_WEIGHT * torch.relu(1.0 - std).mean())
        if len(z) > 1:
            cov = centred.T @ centred / (len(z) - 1)
            off = cov - torch.diag(torch.diag(cov))
            terms.append(COVARIANCE_WEIGHT * off.pow(2).sum() / z.shape[1])
    return torch.stack(terms).sum()
