"""Augmentations applied to training batches on the device, after the cache and before the model.

A blood cell on a slide has no up, down, left or right: a rotation by a quarter turn or a
mirror image is the same cell. ``dihedral`` gives each image of a training batch one of the
eight symmetries of the square, so the latent need not spend numbers on the cell's
orientation (on the whole NIH set it raised the kNN accuracy of an interior-standardised AE
from 0.86 to 0.89). Images and masks turn together; the test side is never augmented.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

import torch

from cellae.sections import AugmentMode

AUGMENTS = get_args(AugmentMode)
N_SYMMETRIES = 8  # of the square: 4 turns, each mirrored or not


def dihedral(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (image (C, H, W), mask (H, W)) pair turned by one of the 8 symmetries of the square:
    symmetry k mirrors the image left to right if k >= 4, then turns it k % 4 quarter turns.

    The symmetry is drawn per image from torch's generator on the images' device, which the
    run's seed fixes (a resumed run on the CPU draws as an uninterrupted one would; on a GPU
    the turns after a resume differ, which changes nothing an augmentation is for). Each image
    is one gather of its pixels through its symmetry's table: no step waits for a GPU to say
    which images drew which symmetry, as selecting them would.
    """
    tables = _symmetry_tables(_square_side(images, "dihedral"), images.device)
    choice = torch.randint(0, N_SYMMETRIES, (len(images),), device=images.device)
    where = tables[choice]  # (B, H * W)
    flat = images.flatten(-2)
    turned = flat.gather(-1, where[:, None, :].expand_as(flat)).view_as(images)
    turned_masks = masks.flatten(-2).gather(-1, where.view(masks.shape[:-2] + (-1,)))
    return turned, turned_masks.view_as(masks)


def every_symmetry(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """``images`` (..., H, W) under each of the 8 symmetries of the square, in
    :func:`dihedral`'s order (the first is the images as they are)."""
    tables = _symmetry_tables(_square_side(images, "every_symmetry"), images.device)
    flat = images.flatten(-2)
    for table in tables:
        yield flat.index_select(-1, table).view_as(images)


def _square_side(images: torch.Tensor, who: str) -> int:
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{who} needs square images, got {tuple(images.shape[-2:])}")
    return images.shape[-1]


_TABLES: dict[tuple[int, torch.device], torch.Tensor] = {}


def _symmetry_tables(size: int, device: torch.device) -> torch.Tensor:
    """(N_SYMMETRIES, size * size): for each symmetry, the source pixel of each pixel of the turned image."""
    key = (size, device)
    if key not in _TABLES:
        grid = torch.arange(size * size).view(size, size)
        tables = [torch.rot90(grid.flip(-1) if symmetry >= 4 else grid, symmetry % 4,
                              dims=(-2, -1)).flatten() for symmetry in range(N_SYMMETRIES)]
        _TABLES[key] = torch.stack(tables).to(device)
    return _TABLES[key]


def augment(mode: str, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` and ``masks`` under the augmentation ``mode`` (``train.augment``)."""
    if mode == "none":
        return images, masks
    if mode == "dihedral":
        return dihedral(images, masks)
    raise ValueError(f"train.augment must be one of {', '.join(AUGMENTS)}, got {mode!r}")
