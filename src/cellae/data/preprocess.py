"""Turn one cell crop into model input: a square uint8 image and the mask of the cell in it.

The malaria crops come in many sizes, each cell on black zero padding, and the models want a
fixed ``image_size``. Four choices matter for what a model can learn, so they are settings:

* ``color``: ``rgb``, or ``gray`` (ITU-R 601 luma) to ask how much the stain's colour carries.
* ``resize``: ``stretch`` to the square, as the original study did (cells change shape), or
  ``pad``, which keeps the aspect ratio and centres the cell on black.
* ``background``: ``keep`` the black padding, or ``fill_mean``: paint the padding and a thin
  band at the cell's edge (also where the cell is cut by the crop's frame) with the cell's
  mean colour, so that a reconstruction loss is not dominated by the sharp black outline and
  frame shape.
* ``normalize``: ``none``, or ``per_cell``: standardise each channel of the cell's interior
  by the cell's own mean and standard deviation (stored as ``128 + 32 z``, the outside at
  128), so the stain's shade and strength, which differ by slide and not by infection, are
  gone and what is left is the pattern inside the cell; or ``local``: each channel of the
  interior less its own blurred self (a Gaussian of ``image_size / 32`` px, within the cell),
  over the robust spread of what is left (stored as ``128 + 16 z``), so that large-scale
  shading (a pale centre, a stain gradient, a slide's contrast) is gone too and what is left is
  the small things: spots, rings, edges.

The mask is computed on the original crop, where the padding is exactly black (or given by
the source: a segmenter's label of the cell), and resized with the same filter and geometry as
the image, so both stay aligned. A crop may have any number of channels (fluorescence); the
8-bit RGB crop is the common case and keeps its fast path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
from PIL import Image
from scipy import ndimage

from cellae.sections import (
    BackgroundMode,
    ColorMode,
    DataConfig,
    IntensityMode,
    NormalizeMode,
    ResizeMode,
)

# The padding is exactly 0; stained cell pixels never come near this, even dark parasites.
DARK_THRESHOLD = 10
# Pillow's BILINEAR widens its support when shrinking, so it averages like an area filter and,
# unlike LANCZOS, cannot overshoot into a dark or bright halo at the cell's black edge.
RESAMPLE = Image.Resampling.BILINEAR
LUMA = (299, 587, 114)  # ITU-R 601, in thousandths so that rounding stays in integers
_SQUARE = np.ones((3, 3), dtype=bool)
_DATA_DEFAULTS = DataConfig()
# per_cell keeps z from -4 to +4 standard deviations in uint8: parasites lie 2-4 below the
# cell's mean, and a wider range would spend the 8 bits on the rare outliers
STANDARD_MID = 128
STANDARD_SCALE = 32
# local keeps z from -8 to +8 robust deviations: against the median deviation of the fine
# detail, a parasite reaches -5 to -30, and the fine texture of the cytoplasm lies within 2
LOCAL_SCALE = 16
# the Gaussian the spot features measure against, and local subtracts unless data.local_blur
# says otherwise, in pixels per pixel of image side: 2 px at 64, about a parasite's radius
# there, so the parasite stays and the shading of the whole cell goes
LOCAL_BLUR_PER_PX = _DATA_DEFAULTS.local_blur
# a median absolute deviation of a normal distribution times this is its standard deviation
MAD_TO_SD = 1.4826
# in uint8 grey levels: below this the cell is flat (a synthetic blank, a saturated crop)
MIN_STD = 2.0


@dataclass(frozen=True)
class PreprocessSettings:
    """How crops become model input; part of the cache key, so it round-trips via ``to_dict``.

    The defaults and allowed values are the data config's. A run's settings come through
    :meth:`from_config` after the config was validated, so the checks here only stop code
    that passes something no config could hold.
    """

    image_size: int = _DATA_DEFAULTS.image_size
    color: ColorMode = _DATA_DEFAULTS.color
    resize: ResizeMode = _DATA_DEFAULTS.resize
    background: BackgroundMode = _DATA_DEFAULTS.background
    normalize: NormalizeMode = _DATA_DEFAULTS.normalize
    local_blur: float = _DATA_DEFAULTS.local_blur
    # which channels, named how, scaled how: read by cellae.data.channels before preprocess
    channel_names: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    intensity: IntensityMode = _DATA_DEFAULTS.intensity
    percentiles: tuple[float, ...] = tuple(_DATA_DEFAULTS.percentiles)

    def __post_init__(self) -> None:
        for name in ("channel_names", "channels", "percentiles"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        # Any positive size works here (tests and tools use odd ones); the run config keeps to
        # IMAGE_SIZES, which the models' halvings are built around.
        if type(self.image_size) is not int:
            raise TypeError(f"image_size must be an int, got {self.image_size!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, data: DataConfig) -> PreprocessSettings:
        """The settings of ``data``; every field is named as the data config's key."""
        return cls(**{f.name: getattr(data, f.name) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        # the channel settings join the cache key only where given, so that the key (and the
        # cache) of every 8-bit RGB set stays what it was before channels were settings
        for name in ("channel_names", "channels"):
            if not values[name]:
                del values[name]
            else:
                values[name] = list(values[name])
        # likewise the blur, where local does not use it or it is the one before it was a setting
        if values["normalize"] != "local" or values["local_blur"] == _DATA_DEFAULTS.local_blur:
            del values["local_blur"]
        if values["intensity"] == "auto" and tuple(values["percentiles"]) == tuple(
                _DATA_DEFAULTS.percentiles):
            del values["intensity"], values["percentiles"]
        else:
            values["percentiles"] = list(values["percentiles"])
        return values

    @property
    def rim(self) -> int:
        """Pixels of the cell's edge that ``fill_mean`` paints over: 2 at 32, 3 at 64, 6 at 128.

        The resized edge blends cell and black over about a pixel, real crops have a
        segmentation seam there, and the membrane is a pale ring inside it; with two pixels at
        64 the ring still showed as a faint outline on the fill. The band scales with the
        image; below 32 px it is 1, since the blended pixel is there at any size.
        """
        return max(1, round(3 * self.image_size / 64))


# every Literal-typed setting, with the values its config alias allows
_CHOICES = {
    name: get_args(hint)
    for name, hint in get_type_hints(PreprocessSettings).items()
    if get_origin(hint) is Literal
}


def _check_crop(image: Any, rgb: bool = False) -> None:
    if not (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and (image.shape[2] == 3 or (not rgb and image.shape[2] >= 1))
        and image.shape[0] > 0
        and image.shape[1] > 0
    ):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        kind = "HxWx3 uint8 RGB" if rgb else "HxWxC uint8"
        raise ValueError(f"expected an {kind} image, got shape {shape} and dtype {dtype}")


# ndimage.label's default connectivity, built once rather than on every call
_CROSS = ndimage.generate_binary_structure(2, 1)


def cell_mask(image: np.ndarray) -> np.ndarray:
    """The cell's interior as a bool HxW array.

    Pixels brighter than the padding, the largest connected piece only (crops often catch a
    sliver of a neighbouring cell in a corner), with holes filled (a parasite can be dark
    enough to read as padding, but it lies inside the cell). Any channel count: the brightest
    channel decides.
    """
    _check_crop(image)
    # channel by channel: numpy's max over a last axis of 3 is some 15x slower, and this line
    # was a quarter of a cache build
    brightest = image[..., 0]
    for channel in range(1, image.shape[2]):
        brightest = np.maximum(brightest, image[..., channel])
    bright = brightest > DARK_THRESHOLD
    labels, count = ndimage.label(bright, structure=_CROSS)
    if count == 0:
        return bright
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        bright = labels == int(sizes.argmax())
    # A hole is any dark region that does not reach the frame's border; labelling the dark
    # pixels once is faster than binary_fill_holes' repeated dilation on these frame sizes.
    dark, count = ndimage.label(~bright, structure=_CROSS)
    if count:
        border = np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]])
        is_hole = np.ones(count + 1, dtype=bool)
        is_hole[border] = False
        is_hole[0] = False
        if is_hole.any():  # none in the 4,504 crops of the malaria sample: skip the lookup
            bright = bright | is_hole[dark]
    return bright


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an ...x3 uint8 array, rounded half up, as uint8."""
    weighted = rgb.astype(np.uint32) @ np.array(LUMA, dtype=np.uint32)
    return ((weighted + 500) // 1000).astype(np.uint8)


def _geometry(height: int, width: int, settings: PreprocessSettings) -> tuple[int, int, int, int]:
    """(new height, new width, top, left) of the resized crop inside the square."""
    size = settings.image_size
    if settings.resize == "stretch":
        return size, size, 0, 0
    scale = size / max(height, width)
    new_h = min(size, max(1, round(height * scale)))
    new_w = min(size, max(1, round(width * scale)))
    return new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


def preprocess(
    image: np.ndarray, settings: PreprocessSettings, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image CxSxS uint8, mask SxS uint8 of 0/1) for one HxWxC uint8 crop.

    ``mask`` is the cell's own (a segmenter's label), where the source has one; otherwise it
    is found as the bright piece on the black padding (:func:`cell_mask`). With ``fill_mean``
    the returned mask is the interior less the painted rim, so that everything outside it is
    the one fill colour and everything inside is the cell untouched.
    """
    _check_crop(image)
    if settings.color == "gray" and image.shape[2] != 3:
        raise ValueError(f"color 'gray' is the luma of an RGB crop, got {image.shape[2]} channels")
    size = settings.image_size
    mask = cell_mask(image) if mask is None else np.asarray(mask, dtype=bool)
    new_h, new_w, top, left = _geometry(image.shape[0], image.shape[1], settings)
    if image.shape[2] != 3:
        resized, resized_mask = _resize_bands(image, mask, new_w, new_h)
    else:
        resized, resized_mask = _resize_rgb(image, mask, new_w, new_h)
    channels = image.shape[2]

    if (new_h, new_w) == (size, size):
        rgb, inside = resized, resized_mask
    else:
        rgb = np.zeros((size, size, channels), dtype=np.uint8)
        inside = np.zeros((size, size), dtype=bool)
        rgb[top : top + new_h, left : left + new_w] = resized
        inside[top : top + new_h, left : left + new_w] = resized_mask

    out = to_gray(rgb)[None] if settings.color == "gray" else np.ascontiguousarray(
        rgb.transpose(2, 0, 1)
    )
    return _finish(out, inside, settings)


def _resize_rgb(image: np.ndarray, mask: np.ndarray, new_w: int, new_h: int
                ) -> tuple[np.ndarray, np.ndarray]:
    # The mask goes through the same filter and is cut at half, so its edge sits where the
    # resized image is half cell, half padding. It rides as the fourth band of an RGBX image:
    # Pillow filters each band alike, so this is the same as two resizes, at half the calls.
    # The bands are joined by Pillow: numpy's strided copy into an (H, W, 4) array took a
    # fifth of this function (same pixels either way)
    mask_band = Image.fromarray(mask.view(np.uint8) * np.uint8(255))
    both = Image.merge("RGBX", (*Image.fromarray(image).split(), mask_band))
    resized_bands = np.asarray(both.resize((new_w, new_h), RESAMPLE))
    return resized_bands[..., :3], resized_bands[..., 3] >= 128


def _resize_bands(image: np.ndarray, mask: np.ndarray, new_w: int, new_h: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_resize_rgb` for any channel count: each band, then the mask, alike."""
    bands = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
        (new_w, new_h), RESAMPLE)) for c in range(image.shape[2])]
    resized_mask = np.asarray(Image.fromarray(mask.view(np.uint8) * np.uint8(255)).resize(
        (new_w, new_h), RESAMPLE)) >= 128
    return np.stack(bands, axis=2), resized_mask


def _finish(out: np.ndarray, inside: np.ndarray, settings: PreprocessSettings
            ) -> tuple[np.ndarray, np.ndarray]:
    """The background and normalisation settings on the resized crop (C, S, S)."""
    if settings.background == "fill_mean" and inside.any():
        # border_value=0: where the frame cuts a cell, the crop's edge is the segmentation's
        # edge too (pale membrane, a blended pixel); kept, it showed as cream stubs on the fill
        core = ndimage.binary_erosion(
            inside, structure=_SQUARE, iterations=settings.rim, border_value=0
        )
        if core.any():  # a cell smaller than the rim keeps its whole interior
            inside = core
        fill = np.rint(out[:, inside].mean(axis=1)).astype(np.uint8)
        out = np.where(inside[None], out, fill[:, None, None])
        if settings.normalize == "per_cell":
            out = standardise_interior(out, inside)
        elif settings.normalize == "local":
            out = local_contrast(out, inside, settings.local_blur * settings.image_size)
    elif settings.normalize in ("per_cell", "local"):
        out = np.full_like(out, STANDARD_MID)  # no cell found: nothing to standardise, all mean

    return out, inside.astype(np.uint8)


def standardise_interior(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``image`` (C, S, S uint8) with each channel of the ``inside`` pixels standardised.

    Stored as ``STANDARD_MID + STANDARD_SCALE * z``, clipped to 0-255; outside is the mean.
    """
    pixels = image[:, inside].astype(np.float64)
    mean = pixels.mean(axis=1)
    # a flat cell has no pattern to scale up; its one grey level maps to the mean
    std = np.maximum(pixels.std(axis=1), MIN_STD)
    z = (image.astype(np.float64) - mean[:, None, None]) / std[:, None, None]
    standard = np.clip(np.rint(STANDARD_MID + STANDARD_SCALE * z), 0, 255).astype(np.uint8)
    return np.where(inside[None], standard, np.uint8(STANDARD_MID))


def local_residual(planes: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """``planes`` (..., H, W) less their Gaussian blur of ``sigma`` px taken over the ``inside``
    pixels (H, W or ..., H, W) only: a normalised convolution, the blur of the interior over
    the blur of its mask, so that what lies outside the cell does not bleed in at its edge."""
    blur = (0,) * (planes.ndim - 2) + (sigma, sigma)
    weight = np.broadcast_to(inside, planes.shape).astype(planes.dtype)
    local = ndimage.gaussian_filter(planes * weight, blur, mode="constant")
    cover = ndimage.gaussian_filter(weight, blur, mode="constant")
    return planes - local / np.maximum(cover, 1e-6)


def local_contrast(image: np.ndarray, inside: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` (C, S, S uint8) with each channel of the ``inside`` pixels less their local
    mean (a Gaussian of ``sigma`` px over the interior only, so the fill does not bleed in),
    over the robust spread of that residual (1.4826 x its median absolute deviation: a few
    dark spots do not widen it, as they widen a standard deviation, so a cell's parasites are
    measured against its cytoplasm, not against themselves).

    Stored as ``STANDARD_MID + LOCAL_SCALE * z``, clipped to 0-255; outside is the mid level.
    """
    residual = local_residual(image.astype(np.float64), inside, sigma)
    inner = residual[:, inside]
    centre = np.median(inner, axis=1)
    spread = MAD_TO_SD * np.median(np.abs(inner - centre[:, None]), axis=1)
    # a flat cell (or one whose detail is below a grey level) keeps its one level at the mid
    z = (residual - centre[:, None, None]) / np.maximum(spread, MIN_STD / 4)[:, None, None]
    standard = np.clip(np.rint(STANDARD_MID + LOCAL_SCALE * z), 0, 255).astype(np.uint8)
    return np.where(inside[None], standard, np.uint8(STANDARD_MID))
