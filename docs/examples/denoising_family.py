"""A denoising autoencoder, as a model family that lives outside cellae.

Name it in a config as ``model.family: docs/examples/denoising_family.py:DenoisingAutoencoder``
(a file path, read from the working directory) or, once this file is importable as a module,
``my_package.denoising_family:DenoisingAutoencoder``. See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cellae.columns import Column
from cellae.config import check
from cellae.models import FamilyEvaluation, ModelOutput
from cellae.models.ae import Autoencoder, AutoencoderConfig


@dataclass
class DenoisingConfig(AutoencoderConfig):
    """``noise_std``: standard deviation of the Gaussian noise added to the input while training."""

    noise_std: float = 0.1

    def validate(self, key: str = "model") -> None:
        super().validate(key)
        check(0 <= self.noise_std <= 1, f"{key}.noise_std", "between 0 and 1", self.noise_std)


class DenoisingAutoencoder(Autoencoder):
    """Encodes a noisy copy of the image and is scored on reconstructing the clean one."""

    family = "dae"
    config_class = DenoisingConfig
    config: DenoisingConfig
    report_columns = (Column("dae.noise_psnr_gain", "denoising gain (dB)", "higher", 2),)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if self.training and self.config.noise_std > 0:
            x = (x + self.config.noise_std * torch.randn_like(x)).clamp(0.0, 1.0)
        return super().forward(x)

    def loss_terms(self) -> tuple[str, ...]:
        return super().loss_terms() + ("noise_mse",)

    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        output: ModelOutput,
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        terms = super().loss(x, mask, output, weights)
        # reported, not minimised: how far the reconstruction is from the clean input per pixel
        terms["noise_mse"] = ((output.recon - x) ** 2).mean().detach()
        return terms

    @torch.no_grad()
    def evaluation_numbers(self, view: FamilyEvaluation) -> dict[str, float]:
        """How many dB closer to the clean test images the reconstructions of noisy ones are
        than the noisy images themselves."""
        generator = torch.Generator().manual_seed(view.seed)
        noisy_error = recon_error = 0.0
        for x in view.test_batches():
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            noisy = (x + self.config.noise_std * noise).clamp(0.0, 1.0)
            noisy_error += float(((noisy - x) ** 2).mean()) * len(x)
            recon_error += float(((self.decode(self.encode(noisy)) - x) ** 2).mean()) * len(x)
        gain = 10 * torch.log10(torch.tensor(noisy_error / max(recon_error, 1e-12)))
        return {"noise_psnr_gain": float(gain)}
