"""The convolutional encoder and decoder that both model families share.

Each entry of ``widths`` is one stride-2 stage: the encoder halves the image per stage and
the decoder mirrors it, doubling back up to the input size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cellae.errors import CellaeError

GROUPS = 8
# A steeper negative slope than PyTorch's 0.01 keeps dark (near-zero) background pixels from
# starving the early layers of gradient, the usual choice for image autoencoders.
LEAKY_SLOPE = 0.2

# The allowed values of model.norm and model.activation are the keys here (checked in config).
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "group": lambda channels: nn.GroupNorm(GROUPS, channels),
    "none": lambda channels: nn.Identity(),
}
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class DoubleNearest(nn.Module):
    """Nearest-neighbour upsampling by 2, as ``nn.Upsample(scale_factor=2)`` computes it.

    On the CPU, for NCHW tensors, each pixel is repeated by a broadcast and a reshape:
    PyTorch's upsample_nearest2d kernel there is 4x slower forward and 5x slower forward and
    backward (benchmarks/run.py: it was a fifth of a decoder step). Elsewhere (a GPU, or
    channels-last) PyTorch's own kernel is as fast and keeps the memory layout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not x.is_contiguous():
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        b, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


def _resize_then_convolve(in_width: int, out_width: int, bias: bool) -> list[nn.Module]:
    # every output pixel sees the same number of input pixels, so no checkerboard pattern
    # (Odena, Dumoulin and Olah 2016, "Deconvolution and checkerboard artifacts")
    return [DoubleNearest(),
            nn.Conv2d(in_width, out_width, kernel_size=3, padding=1, bias=bias)]


def _transposed_convolution(in_width: int, out_width: int, bias: bool) -> list[nn.Module]:
    return [nn.ConvTranspose2d(in_width, out_width, kernel_size=4, stride=2, padding=1, bias=bias)]


# How the decoder doubles the side; the allowed values of model.upsample are the keys here.
# "transpose" is the study's decoder (and cellae 0.1.0's), kept to reproduce it.
UPSAMPLERS: dict[str, Callable[[int, int, bool], list[nn.Module]]] = {
    "resize": _resize_then_convolve,
    "transpose": _transposed_convolution,
}


def bottleneck_size(image_size: int, n_stages: int) -> int:
    """Side of the smallest feature map, or a CellaeError when the image cannot halve that often."""
    factor = 2**n_stages
    if image_size < factor or image_size % factor:
        raise CellaeError(
            f"model.widths has {n_stages} stages, so the image side must be a multiple of "
            f"{factor} (at least {factor}px), got {image_size}px; use fewer widths"
        )
    return image_size // factor


# a stage of the encoder: strided convolution, norm, activation (a folded norm stays an Identity)
LAYERS_PER_STAGE = 3


class ConvEncoder(nn.Module):
    """Image (B, C, H, W) -> flat features (B, widths[-1] * s * s) with s = H / 2**len(widths)."""

    def __init__(
        self, channels: int, image_size: int, widths: list[int], norm: str, activation: str
    ) -> None:
        super().__init__()
        side = bottleneck_size(image_size, len(widths))
        # A bias before batch or group norm is cancelled by the norm's own shift.
        bias = norm == "none"
        layers: list[nn.Module] = []
        in_channels = channels
        for width in widths:
            layers += [
                nn.Conv2d(in_channels, width, kernel_size=4, stride=2, padding=1, bias=bias),
                NORMS[norm](width),
                ACTIVATIONS[activation](),
            ]
            in_channels = width
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)
        self.out_features = widths[-1] * side * side
        # the memory layout images are given to the first convolution in (see
        # CellAutoencoder.use_channels_last); values are the same in either
        self.input_layout = torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.input_layout))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's feature map (B, width, side, side), from the first (largest) to the
        last; the last flattened is what :meth:`forward` returns."""
        h = x.contiguous(memory_format=self.input_layout)
        maps = []
        for i, layer in enumerate(self.net[:-1]):  # all but the flatten
            h = layer(h)
            if (i + 1) % LAYERS_PER_STAGE == 0:
                maps.append(h)
        return maps


class ConvDecoder(nn.Module):
    """Latent (B, latent_dim) -> logits (B, C, H, W); the mirror image of :class:`ConvEncoder`."""

    def __init__(
        self,
        latent_dim: int,
        channels: int,
        image_size: int,
        widths: list[int],
        norm: str,
        activation: str,
        upsample: str,
    ) -> None:
        super().__init__()
        side = bottleneck_size(image_size, len(widths))
        bias = norm == "none"
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, widths[-1] * side * side),
            nn.Unflatten(1, (widths[-1], side, side)),
            ACTIVATIONS[activation](),
        ]
        reversed_widths = list(reversed(widths))
        # Each stage doubles the side; the last one stays at widths[0] so that a final 3x3
        # convolution, not a strided one, maps features to pixels (fewer checkerboard artefacts).
        for in_width, out_width in zip(
            reversed_widths, reversed_widths[1:] + [widths[0]], strict=True
        ):
            layers += [
                *UPSAMPLERS[upsample](in_width, out_width, bias),
                NORMS[norm](out_width),
                ACTIVATIONS[activation](),
            ]
        layers.append(nn.Conv2d(widths[0], channels, kernel_size=3, padding=1))
        self.net = nn.Sequential(*layers)
        self.first_features = widths[-1] * side * side

    def forward(self, z: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """``shift`` (B, first_features), if given, is added to the first layer's output."""
        if shift is None:
            return self.net(z)
        return self.net[1:](self.net[0](z) + shift)
