"""Image files to pixels, refusing what would cost far more than a cell crop to read.

Every file-backed source reads images through here, so one set of guards covers them all:
empty and cut-off files are caught from their ends, images whose header claims more pixels
than Pillow's limit are refused before decoding, and a zip member that would inflate a
hundredfold into megabytes is refused before it is read.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zlib
from collections.abc import Iterator

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
    return _open_image(data).size


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
