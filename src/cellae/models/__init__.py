"""Convolutional autoencoders (``ae``) and variational autoencoders (``vae``) for cell images."""

from __future__ import annotations

from cellae.config import ModelConfig
from cellae.errors import CellaeError
from cellae.models.ae import Autoencoder
from cellae.models.base import CellAutoencoder, ModelOutput
from cellae.models.vae import VariationalAutoencoder, kl_divergence

FAMILIES: dict[str, type[CellAutoencoder]] = {
    "ae": Autoencoder,
    "vae": VariationalAutoencoder,
}

__all__ = [
    "FAMILIES",
    "Autoencoder",
    "CellAutoencoder",
    "ModelOutput",
    "VariationalAutoencoder",
    "build_model",
    "kl_divergence",
]


def build_model(config: ModelConfig, image_size: int, channels: int) -> CellAutoencoder:
    """The model ``config.family`` describes, for square images of ``image_size`` px."""
    if config.family not in FAMILIES:
        raise CellaeError(
            f"model.family must be one of {', '.join(FAMILIES)}, got {config.family!r}"
        )
    return FAMILIES[config.family](config, image_size, channels)
