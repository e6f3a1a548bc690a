"""Augmentations applied to training batches on the device, after the cache and before the model.

A blood cell on a slide has no up, down, left or right: a rotation by a quarter turn or a
mirror image is the same cell. ``dihedral`` gives each image of a training batch one of the
eight symmetries of the square, so the latent need not spend numbers on the cell's
orientation (on the whole NIH set it raised the kNN accuracy of an interior-standardised AE
from 0.86 to 0.89). Images and masks turn together; the test side is never augmented.
"""

from __future__ import annotations

from typing import get_args

import torch

from cellae.sections import AugmentMode

AUGMENTS = get_args(AugmentMode)


def dihedral(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (image (C, H, W), mask (H, W)) pair turned by one of the 8 symmetries of the square.

    The symmetry is drawn per image from torch's generator on the images' device, which the
    run's seed fixes (a resumed run on the CPU draws as an uninterrupted one would; on a GPU
    the turns after a resume differ, which changes nothing an augmentation is for).
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral needs square images, got {tuple(images.shape[-2:])}")
    choice = torch.randint(0, 8, (len(images),), device=images.device)
    images, masks = images.clone(), masks.clone()
    for symmetry in range(1, 8):
        picked = (choice == symmetry).nonzero().flatten()
        if len(picked) == 0:
            continue
        turns, mirror = symmetry % 4, symmetry >= 4
        image, mask = images[picked], masks[picked]
        if mirror:
            image, mask = image.flip(-1), mask.flip(-1)
        images[picked] = torch.rot90(image, turns, dims=(-2, -1))
        masks[picked] = torch.rot90(mask, turns, dims=(-2, -1))
    return images, masks


def augment(mode: str, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` and ``masks`` under the augmentation ``mode`` (``train.augment``)."""
    if mode == "none":
        return images, masks
    if mode == "dihedral":
        return dihedral(images, masks)
    raise ValueError(f"train.augment must be one of {', '.join(AUGMENTS)}, got {mode!r}")
