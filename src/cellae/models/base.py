"""What every model family offers, and the registry that finds families by name.

A family is one module in this package (or anywhere else, see :mod:`cellae.registry`): a
subclass of :class:`CellAutoencoder` registered with ``@FAMILIES.register``, with a config
section of its own (``config_class``), the loss terms it reports, and hooks that add its own
numbers and figures to the evaluation. The trainer and the evaluation code only talk to this
interface.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from cellae.columns import Column
from cellae.errors import CellaeError
from cellae.models.blocks import ACTIVATIONS, NORMS, UPSAMPLERS, ConvDecoder, ConvEncoder
from cellae.models.condition import UNSEEN, PatientCondition
from cellae.models.losses import LossConfig
from cellae.registry import Registry
from cellae.sections import EvalConfig
from cellae.typed_config import check, fields_of, one_of, plugin_section, upgrade_plugin_fields

# grey, RGB, or a fluorescence image's channels
MAX_CHANNELS = 64
# Bounds on sizes: far beyond any model of these images, and short of a value that would
# allocate petabytes (model.latent_dim=10**12)
MAX_LATENT_DIM = 4096
MAX_WIDTH = 4096
MAX_STAGES = 7
# what the decoder may be told besides the code
CONDITIONS = ("none", "patient")

FAMILIES: Registry[type[CellAutoencoder]] = Registry(
    "families", "cellae.models", "model.family", name_attribute="family",
    is_plugin=lambda item: isinstance(item, type) and issubclass(item, CellAutoencoder),
)


@dataclass
class ModelConfig:
    """What every family takes: its name, the latent size, the convolutional body and the loss.

    A family (``model.family``) extends this with keys of its own (an AE's ``latent_l1``, a
    VAE's ``beta``); a key no part of the chosen family takes is an error.
    """

    family: str = "ae"
    latent_dim: int = 20
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    norm: str = "batch"
    activation: str = "leaky_relu"
    # how the decoder doubles the side: resize then convolve, or transposed convolutions
    upsample: str = "resize"
    loss: LossConfig = field(default_factory=LossConfig)
    # what the decoder is told besides the code: nothing, or the cell's patient (see
    # cellae.models.condition); and the share of training cells drawn as an unseen patient's
    condition: str = "none"
    condition_dropout: float = 0.1

    @classmethod
    def plugin_class(cls, values: dict[str, Any], key: str) -> tuple[type, str]:
        family = values.get("family", cls.family)
        if not isinstance(family, str):
            raise CellaeError(f"config key '{key}.family' must be a string, got {family!r}")
        return family_config_class(family), f"the '{family}' family"

    def validate(self, key: str = "model") -> None:
        """Reject impossible values; a family with keys of its own extends this."""
        check(1 <= self.latent_dim <= MAX_LATENT_DIM, f"{key}.latent_dim",
              f"a positive integer up to {MAX_LATENT_DIM:,}", self.latent_dim)
        check(
            2 <= len(self.widths) <= MAX_STAGES and all(1 <= w <= MAX_WIDTH for w in self.widths),
            f"{key}.widths",
            f"a list of 2 to {MAX_STAGES} channel counts, each 1 to {MAX_WIDTH:,}",
            self.widths,
        )
        check(self.norm in NORMS, f"{key}.norm", one_of(NORMS), self.norm)
        check(self.activation in ACTIVATIONS, f"{key}.activation", one_of(ACTIVATIONS),
              self.activation)
        check(self.upsample in UPSAMPLERS, f"{key}.upsample", one_of(UPSAMPLERS), self.upsample)
        check(self.condition in CONDITIONS, f"{key}.condition", one_of(CONDITIONS),
              self.condition)
        check(0 <= self.condition_dropout < 1, f"{key}.condition_dropout", "0 to below 1",
              self.condition_dropout)
        if self.norm == "group":
            check(all(w % 8 == 0 for w in self.widths), f"{key}.widths",
                  "multiples of 8 when model.norm is 'group'", self.widths)
        self.loss.validate(f"{key}.loss")

    def __post_init__(self) -> None:
        upgrade_plugin_fields(self)


def model_config(**values: Any) -> ModelConfig:
    """A validated model section from keyword values, e.g. ``model_config(family="vae", beta=4)``."""
    config = plugin_section(ModelConfig, values, "model")
    config.validate()
    return config


def family_config_class(family: str) -> type[ModelConfig]:
    """The config section of the family named ``family`` (a registered name or a spec)."""
    return FAMILIES.get(family).config_class


@dataclass
class ModelOutput:
    """One forward pass: the reconstruction in [0, 1], its logits and the latent code ``z``.

    ``extras`` holds what a family's loss needs beyond these (a VAE's ``mu`` and ``log_var``).
    """

    recon: torch.Tensor
    logits: torch.Tensor
    z: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class FamilyEvaluation:
    """What a family's evaluation hooks may use: the test images, their codes and losses."""

    test_batches: Callable[[], Iterator[torch.Tensor]]  # float images in [0, 1] on the model's device
    test_codes: np.ndarray
    test_losses: Mapping[str, float]  # the loss terms, averaged over the test images, full weights
    eval: EvalConfig
    seed: int
    title: str  # the run's name, for figure titles


class CellAutoencoder(nn.Module):
    """The shared convolutional body; a family defines the latent, the loss and its own hooks."""

    family: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # report columns of the numbers evaluation_numbers returns, keyed "<family>.<number>"
    report_columns: ClassVar[tuple[Column, ...]] = ()
    # how the loss terms read on the learning curves' panels
    term_titles: ClassVar[dict[str, str]] = {"recon": "reconstruction"}
    # the figures of cellae's own (cellae.evaluate.FAMILY_FIGURES) this family wants drawn
    # besides every run's; a model draws nothing itself
    figures: ClassVar[tuple[str, ...]] = ()

    @property
    def reads_mask(self) -> bool:
        """Whether :meth:`encode` and :meth:`forward` take each cell's mask (``mask=``, B x H x
        W, non-zero inside the cell) and need it; a family that does not takes images only,
        so a plug-in's ``encode(x)`` keeps working (see :func:`mask_argument`)."""
        return False

    def __init__(self, config: ModelConfig, image_size: int, channels: int) -> None:
        super().__init__()
        if not 1 <= channels <= MAX_CHANNELS:
            raise CellaeError(f"image channels must be 1 to {MAX_CHANNELS}, got {channels}")
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"the '{self.family}' family needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}; build it with cellae.config.model_config"
            )
        # A private copy: the caller's config may be edited later, this model's shape may not.
        self.config = dataclasses.replace(config, widths=list(config.widths))
        self.latent_dim = config.latent_dim
        self.image_size = image_size
        self.channels = channels
        self.encoder = ConvEncoder(
            channels, image_size, config.widths, config.norm, config.activation
        )
        self.decoder = ConvDecoder(
            config.latent_dim, channels, image_size, config.widths, config.norm, config.activation,
            config.upsample,
        )
        self.condition = (PatientCondition(self.decoder.first_features)
                          if config.condition == "patient" else None)

    def use_channels_last(self, on: bool) -> CellAutoencoder:
        """Weights, and images as they enter, in the channels-last memory layout (or back).

        A speed setting only: the values computed are the same, up to the order of float sums.
        """
        layout = torch.channels_last if on else torch.contiguous_format
        self.to(memory_format=layout)
        self.encoder.input_layout = layout
        return self

    def inference_copy(self) -> CellAutoencoder:
        """A copy in eval mode with each batch norm folded into the convolution before it.

        In eval mode a batch norm is a fixed scale and shift per channel, which the
        convolution's weights and bias can carry (``torch.nn.utils.fusion``): the same values
        up to float rounding (1.5e-6 on a trained AE), a forward pass 13% faster on 2 CPU
        cores. For evaluation only; the copy's parameters no longer match a checkpoint.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        copy = deepcopy(self).eval()
        for sequence in [m for m in copy.modules() if isinstance(m, nn.Sequential)]:
            for i in range(len(sequence) - 1):
                conv, norm = sequence[i], sequence[i + 1]
                if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(
                        norm, nn.BatchNorm2d) and norm.track_running_stats:
                    sequence[i] = fuse_conv_bn_eval(
                        conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d))
                    sequence[i + 1] = nn.Identity()
        # the folded weights are new tensors, in the default layout
        return copy.use_channels_last(copy.encoder.input_layout == torch.channels_last)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> latent codes (B, latent_dim), the same in any mode."""
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor, patients: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the images of codes ``z``; ``patients``, each cell's patient slot (see
        :mod:`cellae.models.condition`), counts only where ``model.condition`` is "patient",
        and None there is a patient never seen."""
        if self.condition is None:
            return self.decoder(z)
        if patients is None:
            patients = torch.full((len(z),), UNSEEN, dtype=torch.long, device=z.device)
        return self.decoder(z, shift=self.condition(patients))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes (B, latent_dim) -> images (B, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor, patients: torch.Tensor | None = None) -> ModelOutput:
        """The code of images ``x`` and their reconstruction; ``patients`` as in
        :meth:`decode_logits`."""
        raise NotImplementedError

    # ------------------------------------------------------------ the objective

    def loss_terms(self) -> tuple[str, ...]:
        """Names of the terms :meth:`loss` returns besides "loss", in the order to show them."""
        return ("recon", "recon_per_pixel")

    def schedule(self, epochs_done: float) -> dict[str, float]:
        """Loss weights that change during training (a KL warm-up), by epochs done so far."""
        return {}

    def loss(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        output: ModelOutput,
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Scalar terms; "loss" is the one to minimise. ``weights`` come from :meth:`schedule`;
        None means the full objective (evaluation)."""
        raise NotImplementedError

    def reconstruction_terms(
        self, x: torch.Tensor, mask: torch.Tensor | None, output: ModelOutput
    ) -> dict[str, torch.Tensor]:
        """The "recon" (per image, mean over batch) and "recon_per_pixel" (per unit weight) terms."""
        per_image, weight = self.config.loss(output.logits, x, mask)
        # Guards a batch whose every pixel has weight 0 (empty masks with background_weight 0).
        per_pixel = per_image.sum() / weight.sum().clamp_min(1e-12)
        return {"recon": per_image.mean(), "recon_per_pixel": per_pixel}

    # ------------------------------------------------------------ evaluation hooks

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images decoded from draws of the prior; only a family with a prior has them."""
        raise CellaeError(
            f"sampling needs a family with a prior, such as 'vae'; this model is "
            f"'{self.family}', which has none to draw from"
        )

    def evaluation_numbers(self, view: FamilyEvaluation) -> dict[str, Any]:
        """The family's own numbers for ``metrics.json`` (under its name); none by default."""
        return {}

    def draw_figures(self, view: FamilyEvaluation, numbers: dict[str, Any], figures: Path) -> None:
        """A plug-in family's figures of a kind cellae does not draw, written into ``figures``;
        none by default. A built-in family asks for cellae's figures by name (``figures``)."""


def mask_argument(model: CellAutoencoder, masks: torch.Tensor | None) -> dict[str, Any]:
    """The keyword arguments that hand ``masks`` (B x H x W, the cells' own) to the ``encode``
    or ``forward`` of a model that reads them: ``{"mask": masks}``, or nothing for one that
    does not. Where the model reads masks and none are given, a CellaeError."""
    if not model.reads_mask:
        return {}
    if masks is None:
        raise CellaeError(f"this '{model.family}' model reads each cell's mask "
                          "(model.pool_over: cell), and none was given with the images")
    return {"mask": masks}


def prefers_channels_last(device: torch.device, setting: str = "auto") -> bool:
    """Whether a model on ``device`` runs channels-last: ``setting`` is "always", "never" or
    "auto", which is channels-last on the CPU and on CUDA GPUs. Measured on 2 CPU cores
    (benchmarks/run.py), the default AE trains 1.6x and encodes 1.5x faster channels-last;
    cuDNN's tensor-core convolutions read it natively."""
    return setting == "always" or (setting == "auto" and device.type in ("cpu", "cuda"))


def build_model(config: ModelConfig, image_size: int, channels: int) -> CellAutoencoder:
    """The model ``config.family`` names, for square images of ``image_size`` px.

    A bare :class:`ModelConfig` (the keys every family shares) gets the family's defaults.
    """
    if type(config) is ModelConfig:
        config = model_config(**fields_of(config))
    return FAMILIES.get(config.family)(config, image_size, channels)
