"""Image files to pixels, refusing what would cost far more than a cell crop to read.

Every file-backed source reads images through here, so one set of guards covers them all:
empty and cut-off files are caught from their ends, images whose header claims more pixels
than Pillow's limit are refused before decoding, and a zip member that would inflate a
hundredfold into megabytes is refused before it is read.

Two readings: :func:`decode_image` gives uint8 RGB, as every 8-bit crop (colour or grey) was
always read; :func:`decode_pixels` keeps what the file holds: a TIFF or OME-TIFF (tifffile)
with its own channels and bit depth, a 16-bit PNG at 16 bits. :func:`image_header` says which
from the header alone.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zlib
from collections.abc import Iterator
from typing import NamedTuple
from xml.etree import ElementTree

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # the `png` extra: libspng decodes the malaria crops in 0.6 of Pillow's time
    import pyspng
except ImportError:  # pragma: no cover - depends on the install
    pyspng = None

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"
ZIP_BOMB_RATIO = 100
# A cell crop is some 150 px a side. Pillow's own limit (89 million pixels) lets through a
# 9,000 x 9,000 PNG of 300 KB whose decoding and colour conversion take gigabytes.
MAX_PIXELS = 4096 * 4096
ZIP_BOMB_BYTES = 1 << 20


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


class Header(NamedTuple):
    """What a file's header says of its pixels, as :func:`decode_pixels` will give them."""

    width: int
    height: int
    channels: int
    dtype: str  # numpy's name: uint8, uint16, float32 ...
    channel_names: tuple[str, ...]  # from the file (OME-XML), or () where it names none


TIFF_SUFFIXES = (".tif", ".tiff")
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
# the TIFF axes that are one image's channels: C(hannel), S(ample: RGB), I/Q (tifffile's
# names for planes of no declared meaning)
_CHANNEL_AXES = "CSIQ"
_TIFF_DTYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float16", "float32",
                "float64", "bool")


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image suffixes cellae reads."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to uint8 RGB (H, W, 3); raise :class:`BadImage` with the reason.

    Grayscale is repeated into three channels, 16-bit is scaled to 8-bit, and transparency
    is composited on black, the colour of the padding around every cell.
    """
    image = _open_image(data)  # the guards above, from the header alone
    if pyspng is not None and image.format == "PNG" and image.mode == "RGB":
        pixels = _decode_rgb_png(data)
        if pixels is not None:
            return pixels
    with _pillow_errors_as_bad_image():
        image.load()
    return _to_rgb(image)


def _decode_rgb_png(data: bytes) -> np.ndarray | None:
    """An 8-bit RGB PNG's pixels from libspng, or None to let Pillow decode it.

    PNG is lossless, so both give the same pixels. pyspng tells libspng to use data whose
    checksums fail, where Pillow refuses the file, so the chunks' CRCs are checked here first
    (7 us); and libspng stops at the pixel data, where Pillow goes on to read (and may
    refuse) the chunks after it, so a file with any such chunk goes to Pillow too. Anything
    damaged, refused by libspng, or returned in another form (16-bit samples) goes to Pillow,
    whose message names what is wrong. One difference is left: a deflate stream whose
    Adler-32 checksum alone is wrong (every chunk's CRC right, so written that way) is decoded
    here and refused by Pillow.
    """
    if not _plain_chunks(data):
        return None
    try:
        pixels = pyspng.load(bytes(data))
    except Exception:  # whatever libspng or its binding refuses, Pillow reads or names
        return None
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    return pixels


def _plain_chunks(data: bytes) -> bool:
    """Whether every chunk of a PNG up to its end chunk has the CRC it declares, and nothing
    but pixel data follows the first pixel data chunk."""
    view = memoryview(data)
    at = len(PNG_SIGNATURE)
    pixels_seen = False
    while at + 12 <= len(data):
        length = int.from_bytes(view[at : at + 4], "big")
        kind = bytes(view[at + 4 : at + 8])
        end = at + 8 + length
        if end + 4 > len(data):
            return False
        if zlib.crc32(view[at + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            return False
        if kind == b"IEND":
            return True
        if kind == b"IDAT":
            pixels_seen = True
        elif pixels_seen:
            return False
        at = end + 4
    return False


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; raise :class:`BadImage` where decoding would.

    This is what lets ``cellae data inspect`` check every file of a large set quickly.
    """
    header = image_header(data)
    return header.width, header.height


def is_tiff(data: bytes) -> bool:
    return data[:4] in TIFF_SIGNATURES


def image_header(data: bytes, max_pixels: int = MAX_PIXELS) -> Header:
    """The size, channels and sample type :func:`decode_pixels` gives, from the header alone."""
    if is_tiff(data):
        with _tiff_errors_as_bad_image(), _open_tiff(data) as tiff:
            return _tiff_header(tiff, max_pixels)
    image = _open_image(data)
    width, height = image.size
    if image.format == "PNG" and data[24:25] == b"\x10" and data[25:26] in (b"\x00", b"\x02"):
        # 16-bit grey, or 16-bit RGB where libspng is there to read it at 16 bits
        channels = 1 if data[25:26] == b"\x00" else 3
        if channels == 1 or pyspng is not None:
            return Header(width, height, channels, "uint16", ())
    return Header(width, height, 3, "uint8", ())


def decode_pixels(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to (H, W, C) as the file holds them; raise :class:`BadImage`.

    A TIFF keeps its channels and sample type; a 16-bit PNG its 16 bits (grey as one channel);
    every other file is :func:`decode_image`'s uint8 RGB, so 8-bit crops read as they always did.
    """
    if is_tiff(data):
        with _tiff_errors_as_bad_image(), _open_tiff(data) as tiff:
            _tiff_header(tiff, max_pixels)  # the layout checks, before any pixel is read
            series = tiff.series[0]
            pixels = _tiff_planes(series.asarray(), series.axes)
        return pixels.astype(np.uint8) if pixels.dtype == bool else pixels
    header = image_header(data, max_pixels)
    if header.dtype == "uint16":
        # libspng gives 16-bit grey with an alpha band of its own: grey goes to Pillow (I;16)
        if header.channels == 3 and pyspng is not None and _plain_chunks(data):
            try:
                pixels = pyspng.load(bytes(data))
            except Exception:  # what libspng refuses, Pillow reads or names
                pixels = None
            if pixels is not None and pixels.dtype == np.uint16 and pixels.ndim == 3:
                return pixels[..., :3]
        image = _open_image(data)
        with _pillow_errors_as_bad_image():
            image.load()
        if image.mode.startswith("I"):
            return np.asarray(image, dtype=np.uint16)[..., None]
        return _to_rgb(image)
    return decode_image(data)


@contextlib.contextmanager
def _open_tiff(data: bytes) -> Iterator[object]:
    import tifffile

    tiff = tifffile.TiffFile(io.BytesIO(data))
    try:
        yield tiff
    finally:
        tiff.close()


@contextlib.contextmanager
def _tiff_errors_as_bad_image() -> Iterator[None]:
    try:
        yield
    except BadImage:
        raise
    except Exception as exc:  # tifffile raises many kinds on damaged files; each is a reason
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImage(f"not a readable TIFF ({message[:160]})") from exc


def _tiff_header(tiff: object, max_pixels: int) -> Header:
    """What the first series of a TIFF holds, or :class:`BadImage` naming a layout cellae
    cannot take (several z-planes or time points, a pyramid's levels are ignored)."""
    if not tiff.series:  # type: ignore[attr-defined]
        raise BadImage("a TIFF without image data")
    series = tiff.series[0]  # type: ignore[attr-defined]
    axes, shape = series.axes, tuple(series.shape)
    kept = [(axis, size) for axis, size in zip(axes, shape, strict=True)
            if size != 1 or axis in "YX"]
    spatial = [axis for axis, _ in kept if axis in "YX"]
    channel_axes = [(axis, size) for axis, size in kept if axis in _CHANNEL_AXES]
    other = [f"{axis}={size}" for axis, size in kept if axis not in "YX" + _CHANNEL_AXES]
    if spatial != ["Y", "X"] or other or len(channel_axes) > 1:
        raise BadImage(
            f"unsupported TIFF layout: axes {axes} of shape {shape}"
            + (f" ({', '.join(other)})" if other else "")
            + "; cellae reads one 2-D image per file, with channels (YX, CYX or YXS): save "
              "one plane (a z-projection, one time point) per file")
    dtype = str(series.dtype)
    if dtype not in _TIFF_DTYPES:
        raise BadImage(f"unsupported TIFF sample type {dtype}")
    height = dict(kept)["Y"]
    width = dict(kept)["X"]
    if width * height > max_pixels:
        raise BadImage(f"refused: {width:,} x {height:,} pixels, more than cellae reads in one "
                       f"image (at most {max_pixels:,})")
    channels = channel_axes[0][1] if channel_axes else 1
    return Header(width, height, channels, dtype, _ome_channel_names(tiff, channels))


def _tiff_planes(pixels: np.ndarray, axes: str) -> np.ndarray:
    """A TIFF series' array, whose axes are ``axes``, as (H, W, C): size-1 axes dropped (a
    header check has left one channel axis at most), the channel axis moved last."""
    kept = [i for i, (axis, size) in enumerate(zip(axes, pixels.shape, strict=True))
            if size != 1 or axis in "YX"]
    pixels = pixels.reshape([pixels.shape[i] for i in kept])
    names = "".join(axes[i] for i in kept)
    order = [names.index("Y"), names.index("X")] + [i for i, a in enumerate(names) if a not in "YX"]
    planes = np.transpose(pixels, order)
    return planes if planes.ndim == 3 else planes[..., None]


def _ome_channel_names(tiff: object, channels: int) -> tuple[str, ...]:
    """The channels' names in an OME-TIFF's XML, where it names all of them."""
    xml = getattr(tiff, "ome_metadata", None)
    if not xml:
        return ()
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return ()
    for pixels in root.iter():
        if pixels.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        names = tuple(child.get("Name", "") for child in pixels
                      if child.tag.rsplit("}", 1)[-1] == "Channel")
        if len(names) == channels and all(names):
            return names
        return ()
    return ()


def check_expansion(expanded: int, compressed: int) -> None:
    """Refuse a zip member that would inflate ``compressed`` bytes into a zip bomb.

    PNG and JPEG barely compress further, so a member that grows a hundredfold into megabytes
    is not a cell crop; this is decided from the zip's directory, before anything is inflated.
    """
    ratio = expanded / max(compressed, 1)
    if ratio > ZIP_BOMB_RATIO and expanded > ZIP_BOMB_BYTES:
        raise BadImage(f"refused as a zip bomb: expands {ratio:.0f}-fold to {expanded:,} bytes")


def _require_complete(data: bytes) -> None:
    """Catch empty and cut-off files from their ends, without decoding any pixels."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    # a few writers pad after the end marker, so look near the end rather than at it
    tail = data[-64:]
    if data.startswith(PNG_SIGNATURE) and PNG_END not in tail:
        raise BadImage("truncated (the PNG end chunk is missing)")
    if data.startswith(b"\xff\xd8") and JPEG_END not in tail:
        raise BadImage("truncated (the JPEG end marker is missing)")


def _open_image(data: bytes) -> Image.Image:
    """Open image bytes, reading the header only; raise :class:`BadImage` where the file is cut
    off, unreadable or larger than a cell crop."""
    _require_complete(data)
    with _pillow_errors_as_bad_image():
        image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise BadImage(f"refused: {width:,} x {height:,} pixels, more than a cell crop "
                       f"(at most {MAX_PIXELS:,}); crop or downscale it first")
    return image


@contextlib.contextmanager
def _pillow_errors_as_bad_image() -> Iterator[None]:
    """What Pillow raises while opening or decoding, as :class:`BadImage` with the reason."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; both are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused as a decompression-bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not a readable image (unknown format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if "truncated" in str(exc).lower():
            raise BadImage("truncated (the image data stops early)") from exc
        raise BadImage(f"not a readable image ({exc})") from exc


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # PNG's 16-bit grayscale opens as I;16 (older Pillow: I); 65535 / 257 = 255
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:] / 255.0
        return np.round(rgba[..., :3] * alpha).astype(np.uint8)
    if mode == "L":
        gray = np.asarray(image, dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
