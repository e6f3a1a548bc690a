"""What every model family offers: encode, decode, forward, loss and sample.

The trainer and the evaluation code only talk to :class:`CellAutoencoder`; a family adds
its latent (deterministic or Gaussian) and its regulariser on top of the shared
convolutional encoder and decoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from cellae.config import ModelConfig
from cellae.errors import CellaeError
from cellae.models.blocks import ConvDecoder, ConvEncoder
from cellae.models.losses import check_loss_name, reconstruction_loss

CHANNELS = (1, 3)


@dataclass
class ModelOutput:
    """One forward pass: the reconstruction in [0, 1], its logits and the latent code.

    ``mu`` and ``log_var`` are the Gaussian posterior of a VAE and None for an AE.
    """

    recon: torch.Tensor
    logits: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor | None = None
    log_var: torch.Tensor | None = None


class CellAutoencoder(nn.Module):
    """Shared body of both families; subclasses define the latent and the regulariser."""

    family: str = ""

    def __init__(self, config: ModelConfig, image_size: int, channels: int) -> None:
        super().__init__()
        if channels not in CHANNELS:
            raise CellaeError(f"image channels must be 1 (gray) or 3 (rgb), got {channels}")
        if config.latent_dim < 1:
            raise CellaeError(
                f"model.latent_dim must be a positive integer, got {config.latent_dim}"
            )
        if not config.widths or any(w < 1 for w in config.widths):
            raise CellaeError(
                f"model.widths must be a list of positive channel counts, got {config.widths}"
            )
        check_loss_name(config.loss)
        # A private copy: the caller's config may be edited later, this model's shape may not.
        self.config = dataclasses.replace(config, widths=list(config.widths))
        self.latent_dim = config.latent_dim
        self.image_size = image_size
        self.channels = channels
        self.encoder = ConvEncoder(
            channels, image_size, config.widths, config.norm, config.activation
        )
        self.decoder = ConvDecoder(
            config.latent_dim, channels, image_size, config.widths, config.norm, config.activation
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> latent codes (B, latent_dim)."""
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, latent_dim) -> images (B, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        raise NotImplementedError

    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        output: ModelOutput,
        kl_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Scalar terms; "loss" is the one to minimise. ``kl_weight`` only matters to a VAE."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images decoded from draws of the prior; only a VAE has one."""
        raise CellaeError(
            f"sampling needs model.family 'vae'; this model is '{self.family}', "
            "which has no prior to draw from"
        )

    def reconstruction_terms(
        self, x: torch.Tensor, mask: torch.Tensor | None, output: ModelOutput
    ) -> dict[str, torch.Tensor]:
        """The "recon" (per image, mean over batch) and "recon_per_pixel" (per unit weight) terms."""
        per_image, weight = reconstruction_loss(
            self.config.loss, output.logits, x, mask, self.config.background_weight
        )
        # Guards a batch whose every pixel has weight 0 (empty masks with background_weight 0).
        per_pixel = per_image.sum() / weight.sum().clamp_min(1e-12)
        return {"recon": per_image.mean(), "recon_per_pixel": per_pixel}
