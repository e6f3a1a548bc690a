"""Whole fields of view with instance-label masks: one crop per labelled cell.

The layout a segmenter (cellpose, StarDist) leaves behind::

    experiment/
      images/   field_001.tif ...  any channels, 8 or 16 bits (TIFF, OME-TIFF, PNG)
      masks/    field_001.tif ...  the same names (or stems): integer labels, 0 = background
      fields.csv   optional: one row per field (column ``field``): plate, well, treatment...
      cells.csv    optional: one row per cell (``field``, ``label``): anything measured per cell

Each labelled object becomes one square crop centred on it, the other cells' pixels set to
background, with its own mask. Objects cut by the field's edge or smaller than
``data.fields.min_area`` pixels are skipped and counted. A cell's class and patient come from the
columns ``data.fields.class_column`` and ``patient_column`` of either table; without a class
every cell is of one class, ``cell``, and without a patient each field is its own, so that a
split never puts cells of one field on both sides. Every other column, and the cell's field,
label, area and centroid, travels with it as metadata.

A mask that is missing, of another size than its image, or not of integers stops everything
with a one-line error naming the file: a source cannot be half right about where its cells are.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cellae.data.decode import BadImage, decode_pixels, image_header, is_image_name
from cellae.data.sources import register_source
from cellae.data.sources.base import Source
from cellae.data.sources.labels import classes_from_names
from cellae.errors import CellaeError
from cellae.naming import natural_key
from cellae.sections import DataConfig

IMAGES, MASKS = "images", "masks"
FIELDS_CSV, CELLS_CSV = "fields.csv", "cells.csv"
FIELD, LABEL = "field", "label"
ONE_CLASS = "cell"
# a field of view is larger than a crop: 8k x 8k (a stitched well) at most
MAX_FIELD_PIXELS = 8192 * 8192
MAX_TABLE_BYTES = 100_000_000
# 8k x 8k x 8 channels at 16 bits is 1 GB uncompressed; a field file beyond this is refused
MAX_FIELD_BYTES = 2 * 2**30
# what cellae itself records of each cell; a table's column may not take these names
OWN_COLUMNS = ("field", "object", "area", "centroid_y", "centroid_x")
RESERVED = ("file", "label", "class", "patient", "side", *OWN_COLUMNS)


@register_source
class FieldsSource(Source):
    """Cells cut from fields of view by their label masks."""

    kind = "fields"
    spec_help = f"a folder with {IMAGES}/ and {MASKS}/ (fields and their label masks)"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        root = Path(spec).expanduser()
        return (root / IMAGES).is_dir() and (root / MASKS).is_dir()

    def __init__(self, data: DataConfig) -> None:
        super().__init__(data)
        self.root = Path(data.source).expanduser()
        self.description = str(self.root)
        self.settings = data.fields
        self.fields: list[str] = []  # image file names under images/
        self.mask_files: list[str] = []  # the mask of each field, under masks/
        self.boxes: list[tuple[int, int, int, int, int]] = []  # per cell: field, label, y, x, side
        self._identity: list[str] = []
        self._field_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._crop_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._list_fields()
        tables = self._read_tables()
        self._list_cells(tables)
        self.layout = (f"{len(self.fields)} fields with label masks"
                       + (f", tables {', '.join(t for t in (FIELDS_CSV, CELLS_CSV) if (self.root / t).is_file())}"
                          if any((self.root / t).is_file() for t in (FIELDS_CSV, CELLS_CSV)) else ""))

    # -- listing

    def _list_fields(self) -> None:
        images = sorted((p.name for p in (self.root / IMAGES).iterdir()
                         if p.is_file() and is_image_name(p.name)), key=natural_key)
        if not images:
            raise CellaeError(f"{self.root / IMAGES}: no image files (.tif, .tiff, .png)")
        masks = {p.name: p.name for p in (self.root / MASKS).iterdir()
                 if p.is_file() and is_image_name(p.name)}
        by_stem = {field_stem(name): name for name in masks}
        for name in images:
            mask = masks.get(name) or by_stem.get(field_stem(name))
            if mask is None:
                raise CellaeError(f"{self.root / IMAGES / name}: no mask in {self.root / MASKS} "
                                  f"(a label image of the same name, 0 = background)")
            self.fields.append(name)
            self.mask_files.append(mask)

    def _read_tables(self) -> dict[str, dict[tuple[str, ...], dict[str, str]]]:
        """fields.csv keyed by (field,), cells.csv by (field, label); field as its stem."""
        tables: dict[str, dict[tuple[str, ...], dict[str, str]]] = {}
        for name, keys in ((FIELDS_CSV, (FIELD,)), (CELLS_CSV, (FIELD, LABEL))):
            path = self.root / name
            if path.is_file():
                tables[name] = _read_table(path, keys)
        return tables

    def _list_cells(self, tables: dict[str, dict[tuple[str, ...], dict[str, str]]]) -> None:
        s = self.settings
        per_field, per_cell = tables.get(FIELDS_CSV, {}), tables.get(CELLS_CSV, {})
        columns: list[str] = []
        for table in (per_field, per_cell):
            for row in table.values():
                columns += [c for c in row if c not in columns]
                break
        for column in columns:
            if column in RESERVED and column not in (s.class_column, s.patient_column):
                raise CellaeError(f"{self.root}: the table column '{column}' is a name cellae "
                                  f"uses for each cell ({', '.join(RESERVED)}); rename it")
        extra = [c for c in columns if c not in (s.class_column, s.patient_column)]
        own: dict[str, list[str]] = {c: [] for c in OWN_COLUMNS}
        listed: dict[str, list[str]] = {c: [] for c in extra}
        classes: list[str] = []
        cut = small = 0
        present: set[tuple[str, str]] = set()  # every (field, label) of the masks, kept or not
        for number, (image, mask) in enumerate(zip(self.fields, self.mask_files, strict=True)):
            try:
                header = image_header((self.root / IMAGES / image).read_bytes(), MAX_FIELD_PIXELS)
            except (OSError, BadImage) as exc:
                # a damaged field image is a bad file like any other: its cells are skipped
                reason = f"cannot be read ({exc.strerror})" if isinstance(exc, OSError) else str(exc)
                self.skip(f"{IMAGES}/{image}", reason)
                self._identity.append(self._stat(IMAGES, image))
                continue
            labels = self._read_mask(number, header.height, header.width)
            height, width = labels.shape
            self._identity.append(self._stat(IMAGES, image) + self._stat(MASKS, mask))
            stem = field_stem(image)
            field_row = per_field.get((stem,), {})
            areas = np.bincount(labels.ravel())
            for label, box in enumerate(ndimage.find_objects(labels), start=1):
                if box is None:
                    continue
                present.add((stem, str(label)))
                rows, cols = box
                if rows.start == 0 or cols.start == 0 or rows.stop == height or cols.stop == width:
                    cut += 1
                    continue
                if areas[label] < s.min_area:
                    small += 1
                    continue
                cy, cx = ndimage.center_of_mass(labels[box] == label)
                side = s.crop_size or max(
                    1, round(max(rows.stop - rows.start, cols.stop - cols.start) * (1 + 2 * s.margin)))
                centre_y = (rows.start + rows.stop) / 2
                centre_x = (cols.start + cols.stop) / 2
                top, left = round(centre_y - side / 2), round(centre_x - side / 2)
                self.boxes.append((number, label, top, left, side))
                self.files.append(f"{image}#{label}")
                row = field_row | per_cell.get((stem, str(label)), {})
                classes.append(row.get(s.class_column, "") or ONE_CLASS)
                self.patients.append(row.get(s.patient_column, "") or stem)
                own["field"].append(stem)
                own["object"].append(str(label))
                own["area"].append(str(int(areas[label])))
                own["centroid_y"].append(f"{rows.start + cy:.1f}")
                own["centroid_x"].append(f"{cols.start + cx:.1f}")
                for column in extra:
                    listed[column].append(row.get(column, ""))
        if not self.files:
            raise CellaeError(f"{self.root}: no cell found in the masks ({cut} cut by the "
                              f"field's edge, {small} below data.fields.min_area {s.min_area} px)")
        found = classes_from_names(classes)
        self.label_map, self.class_names = found.label_map, found.names
        self.labels = [self.label_map[name] for name in classes]
        self.metadata = own | listed
        self.cut_by_edge, self.too_small = cut, small
        self.ignored = ([f"{cut} objects cut by the field's edge"] if cut else []) + (
            [f"{small} objects below data.fields.min_area ({s.min_area} px)"] if small else [])
        # a table row that names no field or cell is a typo or a stale table: said, not dropped
        stems = {field_stem(name) for name in self.fields}
        for table, rows, known in ((FIELDS_CSV, per_field, {(f,) for f in stems}),
                                   (CELLS_CSV, per_cell, present)):
            unmatched = [key for key in rows if key not in known]
            if unmatched:
                self.ignored.append(f"{table}: {len(unmatched)} rows name no "
                                    f"{'field' if table == FIELDS_CSV else 'object in the masks'}"
                                    f" (first: {', '.join(unmatched[0])})")

    def _read_mask(self, number: int, height: int, width: int) -> np.ndarray:
        """The labels of field ``number``, checked against its image's ``height`` and ``width``
        (read by the caller, which has the image at hand): integers, the same size."""
        image_path = self.root / IMAGES / self.fields[number]
        mask_path = self.root / MASKS / self.mask_files[number]
        labels = _read(mask_path, decode_pixels)
        if labels.shape[2] != 1 and not (labels.dtype == np.uint8 and labels.shape[2] == 3
                                         and (labels == labels[..., :1]).all()):
            raise CellaeError(f"{mask_path}: a label mask has one channel, this one has "
                              f"{labels.shape[2]}")
        labels = labels[..., 0]
        if not np.issubdtype(labels.dtype, np.integer):
            raise CellaeError(f"{mask_path}: labels must be integers (0 = background), got "
                              f"{labels.dtype} samples")
        if labels.min() < 0:
            raise CellaeError(f"{mask_path}: labels must be 0 (background) or positive, "
                              f"found {int(labels.min())}")
        if (height, width) != labels.shape:
            raise CellaeError(f"{mask_path} is {labels.shape[1]} x {labels.shape[0]} px but its "
                              f"image {image_path} is {width} x {height}; a mask "
                              "must have its image's size")
        return labels.astype(np.int64)

    def _stat(self, folder: str, name: str) -> str:
        stat = (self.root / folder / name).stat()
        return f"{folder}/{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n"

    # -- reading

    def __getstate__(self) -> dict[str, Any]:
        # each worker reads fields for itself
        return self.__dict__ | {"_field_cache": None, "_crop_cache": None}

    def _field(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Field ``number``'s pixels and labels; the last one is kept, as cells come in order."""
        if self._field_cache is None or self._field_cache[0] != number:
            path = self.root / IMAGES / self.fields[number]
            try:
                pixels = decode_pixels(path.read_bytes(), MAX_FIELD_PIXELS)
            except OSError as exc:
                raise BadImage(f"cannot be read ({exc.strerror})") from exc
            labels = self._read_mask(number, *pixels.shape[:2])
            self._field_cache = (number, pixels, labels)
        return self._field_cache[1], self._field_cache[2]

    def _crop(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Cell ``index``'s crop and mask; the last one is kept, as the cache asks for the mask
        and then the pixels of each cell."""
        if self._crop_cache is not None and self._crop_cache[0] == index:
            return self._crop_cache[1], self._crop_cache[2]
        number, label, top, left, side = self.boxes[index]
        pixels, labels = self._field(number)
        crop = np.zeros((side, side, pixels.shape[2]), dtype=pixels.dtype)
        inside = np.zeros((side, side), dtype=bool)
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + side, pixels.shape[0]), min(left + side, pixels.shape[1])
        own = labels[y0:y1, x0:x1] == label
        window = pixels[y0:y1, x0:x1]
        crop[y0 - top : y1 - top, x0 - left : x1 - left] = np.where(own[..., None], window, 0)
        inside[y0 - top : y1 - top, x0 - left : x1 - left] = own
        self._crop_cache = (index, crop, inside)
        return crop, inside

    def load(self, index: int) -> np.ndarray:
        return self._crop(index)[0]

    def load_mask(self, index: int) -> np.ndarray:
        return self._crop(index)[1]

    def probe(self, index: int) -> tuple[int, int]:
        side = self.boxes[index][4]
        return side, side

    def header(self, index: int) -> tuple[int, str, tuple[str, ...]]:
        path = self.root / IMAGES / self.fields[self.boxes[index][0]]
        try:
            header = image_header(path.read_bytes(), MAX_FIELD_PIXELS)
        except OSError as exc:
            raise BadImage(f"cannot be read ({exc.strerror})") from exc
        return header.channels, header.dtype, header.channel_names

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"fields\0{self.root.resolve()}\0{self.settings}\0".encode())
        for line in self._identity:
            digest.update(line.encode())
        for table in (FIELDS_CSV, CELLS_CSV):
            path = self.root / table
            if path.is_file():
                digest.update(path.read_bytes())
        return digest.hexdigest()

    def info(self) -> dict[str, object]:
        return super().info() | {"fields": len(self.fields), "cells": len(self.files),
                                 "cut_by_edge": self.cut_by_edge, "too_small": self.too_small}


def field_stem(name: str) -> str:
    """A field's name without its suffixes: ``field_001.ome.tif`` is ``field_001``, so that
    ``masks/field_001.png`` and a table's ``field_001`` both name it."""
    stem = Path(name).stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def _read(path: Path, reader: Any) -> Any:
    """``reader`` (decode or header) of the file at ``path``; its problem as a one-line error."""
    try:
        size = path.stat().st_size
        if size > MAX_FIELD_BYTES:
            raise CellaeError(f"{path}: {size:,} bytes, more than a field cellae reads (at most "
                              f"{MAX_FIELD_BYTES:,})")
        return reader(path.read_bytes(), MAX_FIELD_PIXELS)
    except OSError as exc:
        raise CellaeError(f"{path}: cannot be read ({exc.strerror})") from exc
    except BadImage as exc:
        raise CellaeError(f"{path}: {exc}") from exc


def _read_table(path: Path, keys: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, str]]:
    """A metadata CSV as {key values: row}; the field key is matched by its file stem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CellaeError(f"cannot read {path}: {exc.strerror}") from exc
    if len(raw) > MAX_TABLE_BYTES:
        raise CellaeError(f"{path} is {len(raw) / 1e6:.0f} MB; a metadata table is refused above "
                          f"{MAX_TABLE_BYTES / 1e6:.0f} MB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CellaeError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [key for key in keys if key not in header]
    if missing:
        raise CellaeError(f"{path}: no column {', '.join(missing)} (its columns: "
                          f"{', '.join(header) or 'none'})")
    reader.fieldnames = header
    table: dict[tuple[str, ...], dict[str, str]] = {}
    for row in reader:
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        key = tuple(field_stem(values[k]) if k == FIELD else values[k] for k in keys)
        if key in table:
            raise CellaeError(f"{path}: line {reader.line_num}: {', '.join(key)} is listed twice")
        table[key] = {k: v for k, v in values.items() if k not in keys}
    return table
