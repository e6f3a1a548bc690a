"""The variational autoencoder: a Gaussian posterior per image and a standard normal prior."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cellae.columns import SAME_IMAGES, Column
from cellae.models.base import FAMILIES, CellAutoencoder, FamilyEvaluation, ModelConfig, ModelOutput
from cellae.typed_config import check

# exp(-10) ~ 5e-5 and exp(10) ~ 2e4 as variances: far outside what a trained posterior needs,
# yet early in training this keeps exp(log_var) from overflowing and the KL from exploding.
LOG_VAR_MIN = -10.0
LOG_VAR_MAX = 10.0
# Var over images of a dimension's posterior mean above which the unit counts as active
ACTIVE_UNIT_THRESHOLD = 0.01


def kl_terms(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_d, exp(log_var_d)) || N(0, 1)) of each image and latent dimension -> (B, D).

    Closed form 0.5 * (exp(log_var) + mu^2 - 1 - log_var): the variance is exp(log_var), not
    exp(log_var / 2) (that is the standard deviation, which the original study used here).
    """
    return 0.5 * (log_var.exp() + mu.pow(2) - 1.0 - log_var)


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(log_var))) || N(0, I)) per row -> (B,)."""
    return kl_terms(mu, log_var).sum(dim=1)


def kl_per_dimension(mu: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """KL(q(z_d | x) || N(0, 1)) of each latent dimension d, averaged over images -> (D,).

    Summed over d it is the KL term of the loss. A dimension with KL near zero carries no
    information about the image.
    """
    mu, log_var = np.asarray(mu, dtype=np.float64), np.asarray(log_var, dtype=np.float64)
    if mu.shape != log_var.shape or mu.ndim != 2:
        raise ValueError(
            f"expected mu and log_var shaped (N, D) alike, got {mu.shape} and {log_var.shape}"
        )
    return kl_terms(torch.from_numpy(mu), torch.from_numpy(log_var)).mean(dim=0).numpy()


def active_units(mu: np.ndarray, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Latent dimensions whose posterior mean varies across images: Var_x(E[z_d | x]) > threshold.

    The definition of Burda, Grosse and Salakhutdinov (2015), with the variance over images
    (population variance) of the posterior means ``mu`` (N, D).
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2:
        raise ValueError(f"expected mu shaped (N, D), got {mu.shape}")
    return int((mu.var(axis=0) > threshold).sum())


@dataclass
class VAEConfig(ModelConfig):
    """``beta`` weighs the KL term; it rises linearly from 0 over ``kl_warmup_epochs``.

    ``free_bits`` (nats): each latent dimension's KL, averaged over the batch, is not pushed
    below this (Kingma et al. 2016), which keeps units from collapsing to the prior early on.
    """

    beta: float = 1.0
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0

    def validate(self, key: str = "model") -> None:
        super().validate(key)
        check(self.beta >= 0, f"{key}.beta", "0 or more", self.beta)
        check(self.kl_warmup_epochs >= 0, f"{key}.kl_warmup_epochs", "0 or more",
              self.kl_warmup_epochs)
        check(self.free_bits >= 0, f"{key}.free_bits", "0 (off) or more nats", self.free_bits)


@FAMILIES.register
class VariationalAutoencoder(CellAutoencoder):
    """loss = recon + beta * kl_weight * KL, with KL averaged over the batch."""

    family = "vae"
    config_class = VAEConfig
    term_titles = CellAutoencoder.term_titles | {"kl": "KL divergence"}
    # draws of the prior, and traversals of the dimensions of highest KL (kl_per_dimension)
    figures = ("prior_samples", "traversals")
    config: VAEConfig
    report_columns = (
        Column("vae.elbo", "ELBO (VAE)", "higher", 2, SAME_IMAGES + ("model.loss",)),
        Column("vae.kl", "KL (VAE)", "", 2),
        Column("vae.active_units", "active units (VAE)", "", 0),
    )

    def __init__(self, config: VAEConfig, image_size: int, channels: int) -> None:
        super().__init__(config, image_size, channels)
        self.to_mu = nn.Linear(self.encoder.out_features, config.latent_dim)
        self.to_log_var = nn.Linear(self.encoder.out_features, config.latent_dim)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_var) of q(z | x), each (B, latent_dim); log_var is clamped to a safe range."""
        features = self.encoder(x)
        log_var = self.to_log_var(features).clamp(LOG_VAR_MIN, LOG_VAR_MAX)
        return self.to_mu(features), log_var

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean, in any mode, so that embeddings are deterministic."""
        return self.posterior(x)[0]

    def forward(self, x: torch.Tensor, patients: torch.Tensor | None = None) -> ModelOutput:
        """Samples z by reparameterisation while training; z = mu in eval mode."""
        mu, log_var = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        logits = self.decode_logits(z, patients)
        return ModelOutput(recon=torch.sigmoid(logits), logits=logits, z=z,
                           extras={"mu": mu, "log_var": log_var})

    def loss_terms(self) -> tuple[str, ...]:
        return super().loss_terms() + ("kl",)

    def schedule(self, epochs_done: float) -> dict[str, float]:
        warmup = self.config.kl_warmup_epochs
        return {"kl_weight": 1.0 if warmup == 0 else min(1.0, epochs_done / warmup)}

    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        output: ModelOutput,
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Terms recon, recon_per_pixel, kl (per image, unweighted) and loss.

        ``weights["kl_weight"]`` is the warm-up factor in [0, 1]; it multiplies ``beta``.
        """
        if "mu" not in output.extras or "log_var" not in output.extras:
            raise ValueError("a VAE loss needs the output of a VAE forward pass (mu and log_var)")
        mu, log_var = output.extras["mu"], output.extras["log_var"]
        terms = self.reconstruction_terms(x, mask, output)
        terms["kl"] = kl_divergence(mu, log_var).mean()
        penalised = terms["kl"]
        if self.config.free_bits > 0:
            per_dimension = kl_terms(mu, log_var).mean(dim=0)
            penalised = per_dimension.clamp_min(self.config.free_bits).sum()
        kl_weight = (weights or {}).get("kl_weight", 1.0)
        terms["loss"] = terms["recon"] + self.config.beta * kl_weight * penalised
        return terms

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images (n, C, H, W) in [0, 1] decoded from z ~ N(0, I)."""
        if n < 1:
            raise ValueError(f"the number of samples must be a positive integer, got {n}")
        device = next(self.parameters()).device
        # Draw where the generator lives (a CPU generator is the portable, seedable choice).
        draw_device = generator.device if generator is not None else device
        z = torch.randn(n, self.latent_dim, generator=generator, device=draw_device)
        return self.decode(z.to(device))

    # ------------------------------------------------------------ evaluation hooks

    @torch.no_grad()
    def evaluation_numbers(self, view: FamilyEvaluation) -> dict[str, Any]:
        """ELBO, KL per latent dimension and active units of the test images."""
        log_vars = [self.posterior(x)[1].cpu() for x in view.test_batches()]
        log_var = torch.cat(log_vars).numpy()
        recon, kl = view.test_losses["recon"], view.test_losses["kl"]
        return {
            "elbo": -(recon + kl),
            "recon": recon,
            "kl": kl,
            "kl_per_dimension": kl_per_dimension(view.test_codes, log_var).tolist(),
            "active_units": active_units(view.test_codes),
        }
