"""Model families (one module each), reconstruction losses, and the registries that find them."""

from cellae.models.base import (
    FAMILIES,
    CellAutoencoder,
    FamilyEvaluation,
    ModelOutput,
    build_model,
)
from cellae.models.losses import LOSSES

__all__ = ["FAMILIES", "LOSSES", "CellAutoencoder", "FamilyEvaluation", "ModelOutput", "build_model"]
