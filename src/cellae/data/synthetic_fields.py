"""A small fluorescence experiment to try the fields source on: ``cellae data make-fields DIR``.

Fields of view as a segmenter's user has them: 16-bit OME-TIFFs with four named channels
(DAPI, actin, tubulin, mito), an instance-label mask per field, ``fields.csv`` (well,
treatment, donor) and ``cells.csv`` (a per-cell measurement). Cells are ellipses with a
nucleus; treated cells (``treatment: drug``) have their mitochondria in bright puncta
instead of a diffuse network (and a slightly brighter actin rim), a change a model has to find inside
the cell rather than in its outline or in its field's exposure, which varies. A few cells touch the field's edge and a few specks are
tiny, so the source's skipping is exercised too.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from cellae.errors import CellaeError
from cellae.files import write_atomic

CHANNELS = ("DAPI", "actin", "tubulin", "mito")
TREATMENTS = ("control", "drug")
# camera offset and full well of a 16-bit sCMOS frame, in counts
OFFSET, FULL = 100, 60000


def write_fields(folder: Path, n_fields: int = 8, size: int = 256, cells_per_field: int = 14,
                 seed: int = 0) -> dict[str, int]:
    """Write the experiment into ``folder`` (which must be empty or new); return counts."""
    import tifffile

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise CellaeError(f"{folder} is not empty; give a new folder")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    field_rows, cell_rows = [], []
    total = 0
    for number in range(n_fields):
        name = f"field_{number:03d}"
        treatment = TREATMENTS[number % 2]
        donor = f"D{number // 2 % 4 + 1}"
        pixels, labels, cells = _field(rng, size, cells_per_field, treatment == "drug")
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, pixels, ome=True, photometric="minisblack",
                         metadata={"axes": "CYX", "Channel": {"Name": list(CHANNELS)}})
        write_atomic(folder / "images" / f"{name}.ome.tif", buffer.getvalue())
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, labels.astype(np.uint16))
        write_atomic(folder / "masks" / f"{name}.ome.tif", buffer.getvalue())
        field_rows.append([f"{name}.ome.tif", f"A{number + 1:02d}", treatment, donor])
        cell_rows += [[f"{name}.ome.tif", label, f"{cycle}"] for label, cycle in cells]
        total += len(cells)
    _write_csv(folder / "fields.csv", ["field", "well", "treatment", "donor"], field_rows)
    _write_csv(folder / "cells.csv", ["field", "label", "cell_cycle"], cell_rows)
    return {"fields": n_fields, "objects": total}


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def _field(rng: np.random.Generator, size: int, count: int, treated: bool
           ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(4 x size x size uint16 pixels, size x size labels, [(label, cell-cycle phase)])."""
    signal = np.zeros((len(CHANNELS), size, size))
    labels = np.zeros((size, size), dtype=np.int64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cells: list[tuple[int, str]] = []
    label = 0
    for attempt in range(count * 6):
        if len(cells) >= count:
            break
        tiny = attempt % 9 == 8  # debris, below any sensible min_area
        radius_a = 1.8 if tiny else rng.uniform(11, 19)
        radius_b = radius_a * (1.0 if tiny else rng.uniform(0.6, 0.95))
        # some cells sit on the field's edge, to be skipped as cut
        cy, cx = rng.uniform(6, size - 6, size=2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / radius_a
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / radius_b
        inside = u ** 2 + v ** 2 <= 1.0
        if not inside.any() or (labels[inside] != 0).any():
            continue  # overlapping another cell: segmenters give one label per pixel
        label += 1
        labels[inside] = label
        if tiny:
            signal[0][inside] += 0.2
            continue
        phase = str(rng.choice(["G1", "S", "G2"], p=[0.6, 0.25, 0.15]))
        cells.append((label, phase))
        r = np.sqrt(u ** 2 + v ** 2)
        nucleus = inside & (r < 0.45)
        dna = 0.5 + 0.35 * (phase == "G2") + rng.uniform(-0.1, 0.1)
        signal[0][nucleus] += dna
        rim = inside & (r > 0.75)
        signal[1][inside] += 0.12
        signal[1][rim] += 0.35 + (0.05 if treated else 0.0)
        angle_field = np.cos(6 * np.arctan2(dy, dx) + rng.uniform(0, 6))
        signal[2][inside & ~nucleus] += 0.25 + 0.15 * angle_field[inside & ~nucleus]
        if treated:
            for _ in range(rng.integers(6, 12)):
                spot = rng.uniform(0.5, 0.95) * np.array([np.cos(t := rng.uniform(0, 6.3)),
                                                           np.sin(t)])
                sy = cy + spot[1] * radius_b
                sx = cx + spot[0] * radius_a
                signal[3] += 0.8 * np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / 2.0) * inside
        else:
            signal[3][inside & ~nucleus] += 0.22 + 0.06 * rng.standard_normal(
                int((inside & ~nucleus).sum()))
    # each field's own exposure: a batch effect a model should not mistake for the treatment
    brightness = np.array([0.9, 0.6, 0.5, 0.7])[:, None, None] * rng.uniform(0.75, 1.25)
    counts = OFFSET + FULL * np.clip(signal * brightness, 0, 1) * 0.5
    counts += rng.normal(0, 40, size=counts.shape)  # read noise
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16), labels, cells
