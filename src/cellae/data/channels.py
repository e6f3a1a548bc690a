"""A source's channels, the ones a run keeps, and how their intensities become 8 bits.

The cache stores uint8, the models see [0, 1]. An 8-bit crop (the malaria set, any RGB or grey
PNG/JPEG) is kept as it is. Anything deeper (16-bit fluorescence, float TIFFs) is scaled per
channel between two robust percentiles measured over the whole source (``data.percentiles``,
0.1 and 99.9 by default), the same limits for every cell, so that a cell brighter than another
stays brighter; the pixels outside the limits are counted (``meta.json``, ``cellae data
prepare``) rather than clipped silently. ``data.intensity: full_range`` divides by the sample
type's range instead, ``percentile`` scales 8-bit images too.

``data.channel_names`` names the channels by position where the files do not (an OME-TIFF
names its own); ``data.channels`` keeps some of them, in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cellae.data.decode import BadImage
from cellae.errors import CellaeError

RGB_NAMES = ("red", "green", "blue")
# images the levels are measured on, spread evenly over the source, and pixels taken from each
LEVEL_IMAGES = 64
LEVEL_PIXELS = 1 << 16
# a share of pixels outside the limits above which cellae warns (the percentiles put about
# 0.1% on each side by construction)
CLIPPED_WARNING = 0.01


@dataclass(frozen=True)
class ChannelLayout:
    """What each image of a source holds: its channels by name and its sample type."""

    names: tuple[str, ...]
    dtype: str

    @property
    def bits(self) -> str:
        kind = np.dtype(self.dtype)
        return f"{kind.itemsize * 8}-bit {'float' if kind.kind == 'f' else 'integer'}"

    def describe(self) -> str:
        return (f"{len(self.names)} channel{'s' if len(self.names) != 1 else ''} "
                f"({', '.join(self.names)}), {self.bits}")


def default_names(count: int, dtype: str, given: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The names of a source's channels where the config names none: the file's own, red /
    green / blue for 8-bit colour, else ch0, ch1, ..."""
    if given and len(given) == count:
        return given
    if count == 3 and dtype == "uint8":
        return RGB_NAMES
    if count == 1:
        return ("gray",) if dtype == "uint8" else ("ch0",)
    return tuple(f"ch{i}" for i in range(count))


def conform(pixels: np.ndarray, layout: ChannelLayout) -> np.ndarray:
    """``pixels`` (H, W, C) as the source's layout has them, or :class:`BadImage` saying why
    not. A grey 8-bit crop among colour ones is repeated into three channels, as cellae always
    read it."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    count = len(layout.names)
    if pixels.shape[2] == 1 and count == 3 and pixels.dtype == np.uint8:
        return np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] != count:
        raise BadImage(f"has {pixels.shape[2]} channels where this source's images have {count} "
                       f"({', '.join(layout.names)})")
    return pixels


@dataclass(frozen=True)
class ChannelPlan:
    """Which of the source's channels a run keeps and how each becomes uint8; goes to the
    cache's worker processes as it is."""

    layout: ChannelLayout
    indices: tuple[int, ...]  # into the source's channels, in the run's order
    mode: str  # "none" (8-bit as it is), "percentile" or "full_range"
    low: tuple[float, ...] = ()  # per kept channel, for "percentile"
    high: tuple[float, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.layout.names[i] for i in self.indices)

    def apply(self, pixels: np.ndarray, inside: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (H, W, C) of the kept channels, (C, 2) counts of pixels below / above the
        limits, inside the cell where ``inside`` is given)."""
        pixels = conform(pixels, self.layout)[..., list(self.indices)]
        counted = pixels if inside is None else pixels[inside]
        counted = counted.reshape(-1, pixels.shape[2])
        clipped = np.zeros((pixels.shape[2], 2), dtype=np.int64)
        if self.mode == "none":
            return np.ascontiguousarray(pixels, dtype=np.uint8), clipped
        if self.mode == "full_range":
            low, high = _type_range(pixels.dtype)
        else:
            low, high = np.asarray(self.low), np.asarray(self.high)
        clipped[:, 0] = (counted < low).sum(axis=0)
        clipped[:, 1] = (counted > high).sum(axis=0)
        scale = 255.0 / np.maximum(np.asarray(high, np.float64) - low, 1e-12)
        out = (pixels.astype(np.float64) - low) * scale
        return np.clip(np.rint(out), 0, 255).astype(np.uint8), clipped

    @classmethod
    def from_summary(cls, block: dict[str, Any]) -> ChannelPlan:
        """The plan a :meth:`summary` (a cache's ``meta.json``, a run's ``run.json``) records."""
        layout = ChannelLayout(tuple(block["source_channels"]), str(block["dtype"]))
        return cls(layout, tuple(layout.names.index(name) for name in block["names"]),
                   str(block["intensity"]), tuple(block.get("low", ())),
                   tuple(block.get("high", ())))

    @property
    def changes_pixels(self) -> bool:
        """Whether the plan does anything to an image but keep it: scale it, or pick channels."""
        return self.mode != "none" or self.indices != tuple(range(len(self.layout.names)))

    def summary(self, clipped: np.ndarray, counted: int) -> dict[str, object]:
        """What ``meta.json`` records of the channels: names, sample type, limits, clipping."""
        share = clipped / max(counted, 1)
        block: dict[str, object] = {
            "names": list(self.names), "source_channels": list(self.layout.names),
            "dtype": self.layout.dtype, "intensity": self.mode,
            "clipped_low": [round(float(v), 6) for v in share[:, 0]],
            "clipped_high": [round(float(v), 6) for v in share[:, 1]],
        }
        if self.mode == "percentile":
            block |= {"low": list(self.low), "high": list(self.high)}
        return block


def clipping_warning(block: dict[str, object]) -> str:
    """A line naming the channels of which more than 1% of the cells' pixels were clipped."""
    names = list(block.get("names", []))  # type: ignore[call-overload]
    low = list(block.get("clipped_low", []))  # type: ignore[call-overload]
    high = list(block.get("clipped_high", []))  # type: ignore[call-overload]
    bad = [f"{name} {100 * lo:.1f}% low, {100 * hi:.1f}% high"
           for name, lo, hi in zip(names, low, high, strict=True)
           if lo + hi > 2 * CLIPPED_WARNING]
    if not bad:
        return ""
    return ("intensity: pixels outside the scaling limits were set to 0 or 255: "
            + "; ".join(bad) + " (widen data.percentiles, or data.intensity: full_range)")


def _type_range(dtype: np.dtype) -> tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(max(info.min, 0)), float(info.max)
    return 0.0, 1.0  # float images are taken to be in [0, 1]


def select(layout: ChannelLayout, wanted: list[str], where: str) -> tuple[int, ...]:
    """The positions of the channels ``wanted`` (all, in order, when empty)."""
    if not wanted:
        return tuple(range(len(layout.names)))
    positions = []
    for name in wanted:
        if name not in layout.names:
            raise CellaeError(f"data.channels: '{name}' is not a channel of {where} (its "
                              f"channels: {', '.join(layout.names)}; name them with "
                              f"data.channel_names)")
        positions.append(layout.names.index(name))
    return tuple(positions)


def resolve_mode(intensity: str, dtype: str) -> str:
    """``data.intensity`` for a source of ``dtype``: "auto" keeps 8 bits and scales the rest
    by percentiles."""
    if intensity == "auto":
        return "none" if dtype == "uint8" else "percentile"
    if intensity == "full_range" and dtype == "uint8":
        return "none"
    return intensity


def measure_levels(samples: list[np.ndarray], percentiles: tuple[float, float]
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel, the two percentiles of the pixels of ``samples`` ((P, C) arrays each)."""
    if not samples:
        raise CellaeError("no image could be read to measure the intensity range")
    pixels = np.concatenate(samples).astype(np.float64)
    low = np.percentile(pixels, percentiles[0], axis=0)
    high = np.percentile(pixels, percentiles[1], axis=0)
    high = np.where(high > low, high, low + 1.0)  # a flat channel: any one step
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


def sample_pixels(pixels: np.ndarray, inside: np.ndarray | None, rng: np.random.Generator
                  ) -> np.ndarray:
    """At most :data:`LEVEL_PIXELS` of an image's pixels (inside the cell where known), (P, C)."""
    flat = pixels[inside] if inside is not None and inside.any() else pixels.reshape(
        -1, pixels.shape[-1])
    if len(flat) > LEVEL_PIXELS:
        flat = flat[rng.choice(len(flat), LEVEL_PIXELS, replace=False)]
    return flat


def level_sample(count: int) -> list[int]:
    """Which images the levels are measured on: :data:`LEVEL_IMAGES` spread evenly."""
    if count <= LEVEL_IMAGES:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, LEVEL_IMAGES)})


def make_plan(source: Any, color: str, channels: tuple[str, ...], intensity: str,
              percentiles: tuple[float, ...]) -> ChannelPlan:
    """The plan for ``source`` (a :class:`~cellae.data.sources.Source`): its layout, the kept
    channels, and for percentile scaling the limits measured on a spread of its images."""
    layout = source.channel_layout()
    indices = select(layout, list(channels), source.description)
    if color == "gray" and len(indices) != 3:
        kept = ", ".join(layout.names[i] for i in indices)
        raise CellaeError(f"data.color: 'gray' is the luma of RGB crops, but {source.description} "
                          f"gives {len(indices)} channel(s) ({kept}); use 'rgb' to keep them as "
                          "they are")
    mode = resolve_mode(intensity, layout.dtype)
    if mode != "percentile":
        return ChannelPlan(layout, indices, mode)
    rng = np.random.default_rng(0)
    samples = []
    for index in level_sample(len(source)):
        try:
            pixels = conform(source.load(index), layout)[..., list(indices)]
            inside = source.load_mask(index)
        except BadImage:
            continue  # skipped by the build, with its reason
        samples.append(sample_pixels(pixels, inside, rng))
    low, high = measure_levels(samples, (float(percentiles[0]), float(percentiles[1])))
    return ChannelPlan(layout, indices, mode, low, high)
