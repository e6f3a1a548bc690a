"""The variational autoencoder: a Gaussian posterior per image and a standard normal prior."""

from __future__ import annotations

import torch
from torch import nn

from cellae.config import ModelConfig
from cellae.errors import CellaeError
from cellae.models.base import CellAutoencoder, ModelOutput

# exp(-10) ~ 5e-5 and exp(10) ~ 2e4 as variances: far outside what a trained posterior needs,
# yet early in training this keeps exp(log_var) from overflowing and the KL from exploding.
LOG_VAR_MIN = -10.0
LOG_VAR_MAX = 10.0


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(log_var))) || N(0, I)) per row -> (B,).

    Closed form 0.5 * sum(exp(log_var) + mu^2 - 1 - log_var): the variance is exp(log_var),
    not exp(log_var / 2) (that is the standard deviation, which the original study used here).
    """
    return 0.5 * (log_var.exp() + mu.pow(2) - 1.0 - log_var).sum(dim=1)


class VariationalAutoencoder(CellAutoencoder):
    """loss = recon + beta * kl_weight * KL, with KL averaged over the batch."""

    family = "vae"

    def __init__(self, config: ModelConfig, image_size: int, channels: int) -> None:
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

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Samples z by reparameterisation while training; z = mu in eval mode."""
        mu, log_var = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if self.training else mu
        logits = self.decode_logits(z)
        return ModelOutput(recon=torch.sigmoid(logits), logits=logits, z=z, mu=mu, log_var=log_var)

    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        output: ModelOutput,
        kl_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Terms recon, recon_per_pixel, kl (per image, unweighted) and loss.

        ``kl_weight`` is the warm-up factor in [0, 1]; it multiplies ``beta``.
        """
        if output.mu is None or output.log_var is None:
            raise CellaeError("a VAE loss needs the output of a VAE forward pass (mu and log_var)")
        terms = self.reconstruction_terms(x, mask, output)
        terms["kl"] = kl_divergence(output.mu, output.log_var).mean()
        terms["loss"] = terms["recon"] + self.config.beta * kl_weight * terms["kl"]
        return terms

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images (n, C, H, W) in [0, 1] decoded from z ~ N(0, I)."""
        if n < 1:
            raise CellaeError(f"the number of samples must be a positive integer, got {n}")
        device = next(self.parameters()).device
        # Draw where the generator lives (a CPU generator is the portable, seedable choice).
        draw_device = generator.device if generator is not None else device
        z = torch.randn(n, self.latent_dim, generator=generator, device=draw_device)
        return self.decode(z.to(device))
