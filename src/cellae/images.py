"""Pixel conventions in one place: the cache stores uint8 (0-255), models see floats in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float32 in [0, 1]; float images are taken to be in [0, 1] already."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def unit_float_array(images: np.ndarray) -> np.ndarray:
    """:func:`unit_float` for NumPy arrays, in float64 (for image-quality numbers)."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return array.astype(np.float64, copy=False)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (any float) as uint8 0-255, rounded; uint8 images are returned as they are."""
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array
    return (np.clip(array.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)


# a channel's colour on screen beyond RGB: blue first (a nuclear stain, DAPI/Hoechst, is
# nearly always channel one), then green, red, magenta, cyan, yellow, as microscopy viewers do
DISPLAY_COLOURS = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 0, 1], [0, 1, 1], [1, 1, 0]],
                           dtype=np.float64)


def display_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 images (..., C, H, W) as RGB (..., 3, H, W) to look at: grey repeated, RGB as it
    is, any other channel count mixed additively in :data:`DISPLAY_COLOURS`."""
    array = to_uint8(np.asarray(images))
    channels = array.shape[-3]
    if channels == 3:
        return array
    if channels == 1:
        return np.repeat(array, 3, axis=-3)
    colours = DISPLAY_COLOURS[np.arange(channels) % len(DISPLAY_COLOURS)]  # (C, 3)
    mixed = np.tensordot(array.astype(np.float64), colours, axes=([-3], [0]))  # (..., H, W, 3)
    return np.clip(np.moveaxis(mixed, -1, -3), 0, 255).round().astype(np.uint8)
