"""Reconstruction losses: per image, summed over pixels and channels.

A loss is a registered dataclass whose fields are its parameters (``model.loss`` in the config).
It takes the decoder's logits (not the sigmoid), the target in [0, 1] and the cell mask
(B, 1, H, W) with 1 inside the cell. The masked variants weigh the cell interior by 1 and the
background by ``background_weight``, so that the black padding around a cell does not dominate
the loss; the plain ones ignore the mask. A new loss is a new module in this package that
registers a subclass of :class:`ReconstructionLoss` with ``@LOSSES.register``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from cellae.errors import CellaeError
from cellae.registry import Registry
from cellae.typed_config import NAME_KEY, check, upgrade_plugin_fields

LOSSES: Registry[type[ReconstructionLoss]] = Registry(
    "losses", "cellae.models", "model.loss.name", name_attribute="name",
    is_plugin=lambda item: isinstance(item, type) and issubclass(item, ReconstructionLoss),
)


@dataclass
class LossConfig:
    """A reconstruction loss: ``name`` picks a registered loss, which may add parameters of its own.

    In YAML either a name (``loss: mse``) or a section (``loss: {name: masked_mse,
    background_weight: 0.2}``).
    """

    name: str = "mse"
    name_key: ClassVar[str] = NAME_KEY

    @classmethod
    def plugin_class(cls, values: dict[str, Any], key: str) -> tuple[type, str]:
        name = values.get("name", cls.name)
        if not isinstance(name, str):
            raise CellaeError(f"config key '{key}.name' must be a string, got {name!r}")
        return LOSSES.get(name), f"the loss '{name}'"

    def validate(self, key: str) -> None:
        """Reject impossible parameter values; a loss with parameters extends this."""

    def __post_init__(self) -> None:
        upgrade_plugin_fields(self)


def per_image(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).sum(dim=1)


def pixel_weights(mask: torch.Tensor, background_weight: float, like: torch.Tensor) -> torch.Tensor:
    """Weights (B, 1, H, W): 1 inside the cell, ``background_weight`` outside."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.shape[0] != like.shape[0] or mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(
            f"the cell mask must be shaped (B, 1, H, W) = "
            f"({like.shape[0]}, 1, {like.shape[-2]}, {like.shape[-1]}), got {tuple(mask.shape)}"
        )
    mask = mask.to(like.dtype)
    # Written as a blend so a soft (fractional) mask still gives weights between the two.
    return background_weight + (1.0 - background_weight) * mask


@dataclass
class ReconstructionLoss(LossConfig):
    """Elementwise error, optionally weighted per pixel, summed per image."""

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weights(self, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """Per-pixel weights, or None when every pixel counts the same.

        ``like`` is the target (B, C, H, W): its shape and dtype, and for a loss that weighs
        pixels by what they show, its values.
        """
        return None

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-image loss (B,) and the per-image total weight (B,) it was summed over.

        The weight is C*H*W for an unweighted loss and the summed pixel weights (times C) for a
        weighted one, so that loss / weight is a per-pixel figure comparable across image sizes.
        """
        values = self.elementwise(logits, target)
        weights = self.weights(mask, target)
        if weights is None:
            loss = per_image(values)
            return loss, torch.full_like(loss, float(logits[0].numel()))
        return per_image(weights * values), per_image(weights) * logits.shape[1]


@LOSSES.register
@dataclass
class MSE(ReconstructionLoss):
    """Squared error between sigmoid(logits) and the target."""

    name: str = "mse"

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits) - target) ** 2


@LOSSES.register
@dataclass
class BCE(ReconstructionLoss):
    """Binary cross-entropy of the logits against targets in [0, 1]."""

    name: str = "bce"

    def elementwise(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


@dataclass
class _Masked:
    """Mixin: the background counts ``background_weight`` as much as the cell's interior."""

    background_weight: float = 0.1

    def weights(self, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if mask is None:
            raise ValueError(f"the loss '{self.name}' needs the cell mask, got none")  # type: ignore[attr-defined]
        return pixel_weights(mask, self.background_weight, like)

    def validate(self, key: str) -> None:
        check(self.background_weight >= 0, f"{key}.background_weight", "0 or more",
              self.background_weight)


@LOSSES.register
@dataclass
class MaskedMSE(_Masked, MSE):
    name: str = "masked_mse"


@LOSSES.register
@dataclass
class MaskedBCE(_Masked, BCE):
    name: str = "masked_bce"
