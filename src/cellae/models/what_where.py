"""An autoencoder whose code is split into *what* the cell holds and *where* things lie in it.

A plain AE reads its code off the last feature map laid out flat, one weight per position:
"a dark spot somewhere in the cell" is then a different direction of the code for each place
the spot can be, which a linear probe cannot add up. Here most of the code (``latent_dim -
where_dim`` numbers, the *what*) is read from every stage's feature maps pooled over the whole
cell (each channel's largest and mean response), so it says which patterns occur, and how
strongly, wherever they are, as the hand-made spot features do. A few numbers (``where_dim``,
the *where*) are read from the last map laid out flat, as the AE's are, for what needs a place
(the outline, the pose). The decoder draws the cell from both; every number is the code.

With ``pool_over: cell`` the pools cover the cell only (each stage's positions weighed by the
share of their footprint inside the cell's mask; the largest response over positions mostly
inside): pooled over the whole image, the mean counts the padding, so a larger cell reads
differently with the same content, and the largest response may sit on the edge between
cell and padding, where a notched or crenated outline looks like a spot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cellae.models.ae import Autoencoder, AutoencoderConfig
from cellae.models.base import FAMILIES
from cellae.typed_config import check, one_of

# what each channel of a stage's map gives the *what* code: its largest and its mean response
POOLS = 2
# what the pools cover: the whole image, or the cell's mask only (model.pool_over)
POOL_OVER = ("image", "cell")
# a stage position counts for the largest response where at least this share of it is cell
MOSTLY_INSIDE = 0.5


@dataclass
class WhatWhereConfig(AutoencoderConfig):
    """``where_dim``: numbers of the code read from the last feature map's layout (0 to
    latent_dim - 1); the rest are read from the feature maps pooled over the whole image
    (``pool_over: image``) or over the cell's mask only (``cell``)."""

    where_dim: int = 8
    pool_over: str = "image"

    def validate(self, key: str = "model") -> None:
        super().validate(key)
        check(0 <= self.where_dim < self.latent_dim, f"{key}.where_dim",
              f"0 to latent_dim - 1 ({self.latent_dim - 1})", self.where_dim)
        check(self.pool_over in POOL_OVER, f"{key}.pool_over", one_of(POOL_OVER),
              self.pool_over)


@FAMILIES.register
class WhatWhereAutoencoder(Autoencoder):
    """z = [what, where]: what = Linear(max and mean of every stage's maps), where =
    Linear(the last map, flat); the AE's loss, with its ``latent_l1``."""

    family = "what_where"
    config_class = WhatWhereConfig
    config: WhatWhereConfig

    def __init__(self, config: WhatWhereConfig, image_size: int, channels: int) -> None:
        super().__init__(config, image_size, channels)
        what_dim = config.latent_dim - config.where_dim
        self.to_what = nn.Linear(POOLS * sum(config.widths), what_dim)
        # the AE's flat head, narrowed to the where numbers (none: no flat head at all)
        self.to_latent = (nn.Linear(self.encoder.out_features, config.where_dim)
                          if config.where_dim else None)

    @property
    def reads_mask(self) -> bool:
        return self.config.pool_over == "cell"

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Codes of images ``x``; ``mask`` (B x H x W, the cells'), needed with pool_over: cell."""
        maps = self.encoder.stages(x)
        if self.reads_mask:
            if mask is None:
                raise ValueError("model.pool_over is 'cell': encode needs the cells' masks")
            pooled = pool_over_cell(maps, mask.reshape(len(x), 1, *x.shape[-2:]).float())
        else:
            pooled = torch.cat([torch.cat([m.amax(dim=(2, 3)), m.mean(dim=(2, 3))], dim=1)
                                for m in maps], dim=1)
        what = self.to_what(pooled)
        if self.to_latent is None:
            return what
        return torch.cat([what, self.to_latent(maps[-1].flatten(1))], dim=1)


def pool_over_cell(maps: list[torch.Tensor], inside: torch.Tensor) -> torch.Tensor:
    """Each map's (B, C, s, s) largest and mean response per channel over the cell: ``inside``
    (B, 1, H, W), 1 in the cell, averaged down to each map's side gives the share of every
    position's footprint that is cell; the mean weighs positions by it, the largest takes the
    positions mostly inside (0 for a cell too small to have one)."""
    parts = []
    for m in maps:
        cover = nn.functional.adaptive_avg_pool2d(inside, m.shape[-1])
        mean = (m * cover).sum(dim=(2, 3)) / cover.sum(dim=(2, 3)).clamp_min(1e-6)
        kept = cover >= MOSTLY_INSIDE
        largest = m.masked_fill(~kept, float("-inf")).amax(dim=(2, 3))
        largest = torch.where(kept.any(dim=(2, 3)), largest, torch.zeros_like(largest))
        parts.append(torch.cat([largest, mean], dim=1))
    return torch.cat(parts, dim=1)
