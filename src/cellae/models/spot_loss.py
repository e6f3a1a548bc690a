"""A loss that makes a small dark spot inside the cell cost as much as the cell's outline.

Under a plain squared error a parasite of a few pixels is a sliver of the loss, so an
autoencoder reproduces the cell's outline and stain and lets the parasite go (the study's
finding). ``spot_mse`` weighs each interior pixel by how far its colour lies from the cell's
own mean interior colour, relative to how far the cell's pixels lie on average: a uniform
cytoplasm keeps weight about 1, a dark spot gets up to ``1 + gain * (its distance / the mean
distance)``. The background keeps ``background_weight``. No pretrained network is involved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cellae.models.losses import LOSSES, MSE, pixel_weights
from cellae.typed_config import check


@LOSSES.register
@dataclass
class SpotMSE(MSE):
    name: str = "spot_mse"
    gain: float = 1.0
    background_weight: float = 1.0

    def weights(self, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if mask is None:
            raise ValueError(f"the loss '{self.name}' needs the cell mask, got none")
        base = pixel_weights(mask, self.background_weight, like)
        inside = mask.reshape(base.shape).to(like.dtype)
        area = inside.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        mean = (like * inside).sum(dim=(2, 3), keepdim=True) / area
        distance = (like - mean).norm(dim=1, keepdim=True) * inside
        typical = distance.sum(dim=(2, 3), keepdim=True) / area
        # weights are data, not something to learn through
        return (base + self.gain * inside * distance / typical.clamp_min(1e-6)).detach()

    def validate(self, key: str) -> None:
        check(self.gain >= 0, f"{key}.gain", "0 or more", self.gain)
        check(self.background_weight >= 0, f"{key}.background_weight", "0 or more",
              self.background_weight)
