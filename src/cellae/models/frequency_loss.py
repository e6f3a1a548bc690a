"""``spot_fft``: ``spot_mse`` with a term on the interior's spatial frequencies.

A squared error is content with a blurred reconstruction, and a blur removes the high
frequencies a small parasite lives in. Recursion's microscopy MAE adds the L1 distance of the
FFT magnitudes of reconstruction and target; here it is taken of the cell's interior (the
outline and padding zeroed, so the frame of the crop adds no frequencies), per channel, and
weighed by ``fft_weight`` against the pixel term. The per-pixel weight the loss reports stays
the pixel term's, so ``recon_per_pixel`` compares with ``spot_mse``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cellae.models.losses import LOSSES, per_image
from cellae.models.spot_loss import SpotMSE
from cellae.typed_config import check


@LOSSES.register
@dataclass
class SpotFFT(SpotMSE):
    name: str = "spot_fft"
    fft_weight: float = 0.1

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, weight = super().__call__(logits, target, mask)
        if self.fft_weight == 0 or mask is None:
            return loss, weight
        inside = mask.reshape(len(target), 1, *target.shape[-2:]).to(target.dtype)
        # the FFT in float32 whatever the autocast: bfloat16 has no FFT on most devices
        recon = (torch.sigmoid(logits) * inside).float()
        clean = (target * inside).float()
        spectra = (torch.fft.rfft2(recon, norm="ortho").abs()
                   - torch.fft.rfft2(clean, norm="ortho").abs()).abs()
        return loss + self.fft_weight * per_image(spectra).to(loss.dtype), weight

    def validate(self, key: str) -> None:
        super().validate(key)
        check(self.fft_weight >= 0, f"{key}.fft_weight", "0 or more", self.fft_weight)
