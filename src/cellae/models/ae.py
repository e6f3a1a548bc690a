"""The deterministic autoencoder, with an optional L1 penalty that keeps the latent sparse."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cellae.models.base import FAMILIES, CellAutoencoder, ModelConfig, ModelOutput
from cellae.typed_config import check


@dataclass
class AutoencoderConfig(ModelConfig):
    """``latent_l1``: weight of the mean over the batch of sum |z| (0: off)."""

    latent_l1: float = 0.0

    def validate(self, key: str = "model") -> None:
        super().validate(key)
        check(self.latent_l1 >= 0, f"{key}.latent_l1", "0 or more", self.latent_l1)


@FAMILIES.register
class Autoencoder(CellAutoencoder):
    """z = Linear(encoder(x)); loss = recon + latent_l1 * mean over the batch of sum |z|."""

    family = "ae"
    config_class = AutoencoderConfig
    term_titles = CellAutoencoder.term_titles | {"l1": "latent L1 (sum |z|)"}
    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, image_size: int, channels: int) -> None:
        super().__init__(config, image_size, channels)
        self.to_latent = nn.Linear(self.encoder.out_features, config.latent_dim)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Codes of images ``x``; the cells' ``mask`` is read by a subclass that pools over it."""
        return self.to_latent(self.encoder(x))

    def forward(self, x: torch.Tensor, patients: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> ModelOutput:
        z = self.encode(x, mask)
        logits = self.decode_logits(z, patients)
        return ModelOutput(recon=torch.sigmoid(logits), logits=logits, z=z)

    def loss_terms(self) -> tuple[str, ...]:
        return super().loss_terms() + (("l1",) if self.config.latent_l1 > 0 else ())

    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        output: ModelOutput,
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Terms recon, recon_per_pixel, loss, and l1 (unweighted mean sum |z|) when enabled."""
        terms = self.reconstruction_terms(x, mask, output)
        loss = terms["recon"]
        if self.config.latent_l1 > 0:
            terms["l1"] = output.z.abs().sum(dim=1).mean()
            loss = loss + self.config.latent_l1 * terms["l1"]
        terms["loss"] = loss
        return terms
