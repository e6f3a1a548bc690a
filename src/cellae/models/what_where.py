"""An autoencoder whose code is split into *what* the cell holds and *where* things lie in it.

A plain AE reads its code off the last feature map laid out flat, one weight per position:
"a dark spot somewhere in the cell" is then a different direction of the code for each place
the spot can be, which a linear probe cannot add up. Here most of the code (``latent_dim -
where_dim`` numbers, the *what*) is read from every stage's feature maps pooled over the whole
cell (each channel's largest and mean response), so it says which patterns occur, and how
strongly, wherever they are, as the hand-made spot features do. A few numbers (``where_dim``,
the *where*) are read from the last map laid out flat, as the AE's are, for what needs a place
(the outline, the pose). The decoder draws the cell from both; every number is the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cellae.models.ae import Autoencoder, AutoencoderConfig
from cellae.models.base import FAMILIES
from cellae.typed_config import check

# what each channel of a stage's map gives the *what* code: its largest and its mean response
POOLS = 2


@dataclass
class WhatWhereConfig(AutoencoderConfig):
    """``where_dim``: numbers of the code read from the last feature map's layout (0 to
    latent_dim - 1); the rest are read from the feature maps pooled over the cell."""

    where_dim: int = 8

    def validate(self, key: str = "model") -> None:
        super().validate(key)
        check(0 <= self.where_dim < self.latent_dim, f"{key}.where_dim",
              f"0 to latent_dim - 1 ({self.latent_dim - 1})", self.where_dim)


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

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.encoder.stages(x)
        pooled = torch.cat([torch.cat([m.amax(dim=(2, 3)), m.mean(dim=(2, 3))], dim=1)
                            for m in maps], dim=1)
        what = self.to_what(pooled)
        if self.to_latent is None:
            return what
        return torch.cat([what, self.to_latent(maps[-1].flatten(1))], dim=1)

