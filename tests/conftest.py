"""Shared fixtures: tiny cell images in the layouts real copies of the dataset come in."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MALARIA_SAMPLE = Path("/work/shared/data/malaria-sample/cell_images")
CLASSES = ("Parasitized", "Uninfected")


def cell_array(seed: int, height: int = 24, width: int = 20, colour=None) -> np.ndarray:
    """A filled ellipse of one colour (with a little noise) on black, like a cell crop."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = ((yy - (height - 1) / 2) / (height / 2)) ** 2 + (
        (xx - (width - 1) / 2) / (width / 2)
    ) ** 2 < 0.95
    base = np.array(colour if colour is not None else rng.integers(120, 230, 3), dtype=np.float64)
    image = base + rng.normal(0, 4, size=(height, width, 3))
    image = np.clip(image, 30, 255).astype(np.uint8)
    image[~inside] = 0
    return image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def cell_name(patient: int, index: int) -> str:
    return f"C{patient}P{patient + 10}thinF_IMG_20150101_120000_cell_{index}.png"


def kaggle_members(n_per_class: int, n_patients: int) -> dict[str, bytes]:
    """Relative path (``Parasitized/C1P11thinF_..png``) -> PNG bytes, patients spread evenly."""
    members = {}
    for c, class_name in enumerate(CLASSES):
        for i in range(n_per_class):
            patient = 1 + i % n_patients
            seed = 1000 * c + i
            members[f"{class_name}/{cell_name(patient, i)}"] = png_bytes(
                cell_array(seed, 20 + i % 7, 18 + i % 5)
            )
    return members


@pytest.fixture
def make_kaggle_folder() -> Callable[..., Path]:
    """Write ``<root>/cell_images/{Parasitized,Uninfected}/*.png`` and return ``root``.

    With ``junk`` the class folders also get Thumbs.db and .DS_Store, as real copies do.
    """

    def make(root: Path, n_per_class: int = 6, n_patients: int = 3, junk: bool = True) -> Path:
        for relative, data in kaggle_members(n_per_class, n_patients).items():
            path = root / "cell_images" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if junk:
            for class_name in CLASSES:
                (root / "cell_images" / class_name / "Thumbs.db").write_bytes(b"\x00junk")
                (root / "cell_images" / class_name / ".DS_Store").write_bytes(b"\x00junk")
        return root

    return make


@pytest.fixture
def make_kaggle_zip() -> Callable[..., Path]:
    """Write a zip like the Kaggle archive: junk, ``__MACOSX/`` and a nested duplicate tree."""

    def make(
        path: Path, n_per_class: int = 6, n_patients: int = 3, duplicate: bool = True,
        extra: dict[str, bytes] | None = None,
    ) -> Path:
        members = kaggle_members(n_per_class, n_patients)
        with zipfile.ZipFile(path, "w") as archive:
            for relative, data in members.items():
                archive.writestr(f"cell_images/{relative}", data)
                if duplicate:
                    archive.writestr(f"cell_images/cell_images/{relative}", data)
            for class_name in CLASSES:
                archive.writestr(f"cell_images/{class_name}/Thumbs.db", b"\x00junk")
                archive.writestr(f"cell_images/{class_name}/.DS_Store", b"\x00junk")
                archive.writestr(f"__MACOSX/cell_images/{class_name}/._x.png", b"\x00junk")
            for name, data in (extra or {}).items():
                archive.writestr(name, data)
        return path

    return make


@pytest.fixture
def malaria_sample() -> Path:
    if not MALARIA_SAMPLE.is_dir():
        pytest.skip(f"malaria sample not found at {MALARIA_SAMPLE}")
    return MALARIA_SAMPLE
