"""Reconstruction losses: per image, summed over pixels and channels.

Every loss takes the decoder's logits (not the sigmoid), the target in [0, 1], the cell mask
(B, 1, H, W) with 1 inside the cell, and the background weight. The masked variants weigh
the cell interior by 1 and the background by ``background_weight``, so that the black padding
around a cell does not dominate the loss; the plain ones accept the mask and ignore it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from cellae.errors import CellaeError

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).sum(dim=1)


def pixel_weights(
    mask: torch.Tensor | None, background_weight: float, like: torch.Tensor
) -> torch.Tensor:
    """Weights (B, 1, H, W): 1 inside the cell, ``background_weight`` outside."""
    if mask is None:
        raise CellaeError("a masked reconstruction loss needs the cell mask, got none")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.shape[0] != like.shape[0] or mask.shape[-2:] != like.shape[-2:]:
        raise CellaeError(
            f"the cell mask must be shaped (B, 1, H, W) = "
            f"({like.shape[0]}, 1, {like.shape[-2]}, {like.shape[-1]}), got {tuple(mask.shape)}"
        )
    mask = mask.to(like.dtype)
    # Written as a blend so a soft (fractional) mask still gives weights between the two.
    return background_weight + (1.0 - background_weight) * mask


def mse(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    background_weight: float = 1.0,
) -> torch.Tensor:
    """Squared error between sigmoid(logits) and target, summed per image -> (B,)."""
    return _per_image((torch.sigmoid(logits) - target) ** 2)


def bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    background_weight: float = 1.0,
) -> torch.Tensor:
    """Binary cross-entropy of logits against targets in [0, 1], summed per image -> (B,)."""
    return _per_image(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))


def masked_mse(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    background_weight: float,
) -> torch.Tensor:
    """:func:`mse` with the background weighed by ``background_weight`` -> (B,)."""
    weights = pixel_weights(mask, background_weight, logits)
    return _per_image(weights * (torch.sigmoid(logits) - target) ** 2)


def masked_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    background_weight: float,
) -> torch.Tensor:
    """:func:`bce` with the background weighed by ``background_weight`` -> (B,)."""
    weights = pixel_weights(mask, background_weight, logits)
    return _per_image(
        weights * F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    )


RECONSTRUCTION_LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "bce": bce,
    "masked_mse": masked_mse,
    "masked_bce": masked_bce,
}
MASKED_LOSSES = frozenset({"masked_mse", "masked_bce"})


def check_loss_name(name: str) -> None:
    if name not in RECONSTRUCTION_LOSSES:
        raise CellaeError(
            f"model.loss must be one of {', '.join(RECONSTRUCTION_LOSSES)}, got {name!r}"
        )


def reconstruction_loss(
    name: str,
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    background_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-image loss (B,) and the per-image total weight (B,) it was summed over.

    The weight is C*H*W for a plain loss and the summed pixel weights (times C) for a masked
    one, so that loss / weight is a per-pixel figure comparable across image sizes.
    """
    check_loss_name(name)
    per_image = RECONSTRUCTION_LOSSES[name](logits, target, mask, background_weight)
    channels = logits.shape[1]
    if name in MASKED_LOSSES:
        weight = _per_image(pixel_weights(mask, background_weight, logits)) * channels
    else:
        weight = torch.full_like(per_image, float(logits[0].numel()))
    return per_image, weight
