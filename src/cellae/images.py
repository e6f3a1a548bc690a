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
