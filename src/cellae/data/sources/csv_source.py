"""A CSV that lists the images: ``file`` (relative to the CSV's folder), ``label``, ``patient``.

This is for collections that are not laid out as class folders, or whose labels or patients
live in a table. A row that cannot be used (missing values, a path that leaves the CSV's
folder, a file that is not there or not an image) is skipped and listed like a bad file of
any other source. Without a ``patient`` column, or where it is empty, the patient is read
from the file name as for the other sources. Every further column (plate, well, treatment)
is metadata: it follows each image into ``latents.npz``, ``cellae embed`` and the maps.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path, PurePosixPath
from stat import S_ISREG

from cellae.data.decode import is_image_name
from cellae.data.sources import register_source
from cellae.data.sources.base import FileSource, OnDiskFiles
from cellae.data.sources.labels import classes_from_names, patients_from_names
from cellae.errors import CellaeError
from cellae.sections import DataConfig

# a CSV of a million images is about 100 MB; anything larger is not a label table
MAX_CSV_BYTES = 100_000_000
FILE, LABEL, PATIENT = "file", "label", "patient"
# what cellae writes beside each image's codes; a metadata column may not take these names
RESERVED = ("class", "side")
_DRIVE = re.compile(r"^[A-Za-z]:")


@register_source
class CsvSource(OnDiskFiles, FileSource):
    """Images listed in a CSV file, read from the folder the CSV is in."""

    kind = "csv"
    spec_help = f"a .csv with columns {FILE}, {LABEL} (and {PATIENT})"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        path = Path(spec).expanduser()
        return path.suffix.lower() == ".csv" and not path.is_dir()

    def __init__(self, data: DataConfig) -> None:
        super().__init__(data)
        self.path = Path(data.source).expanduser()
        self.description = str(self.path)
        self.root = self.path.parent
        raw = self._read()
        self._digest = hashlib.sha256(raw).hexdigest()
        self._sizes: dict[str, int] = {}
        self._mtimes: dict[str, int] = {}
        labels, given = self._list(raw)
        used = set(labels)
        if not used:
            raise CellaeError(
                f"{self.path} lists no usable image ({len(self.skipped)} rows skipped; "
                f"cellae data inspect {self.path} lists why)"
            )
        if len(used) == 1:
            raise CellaeError(
                f"{self.path} lists images of one class only ({labels[0]}); a model needs two"
            )
        classes = classes_from_names(used)
        self.label_map, self.class_names = classes.label_map, classes.names
        self.labels = [self.label_map[label] for label in labels]
        self.patients, self.unmatched_patients = patients_from_names(self.files, given)
        columns = f"{FILE}, {LABEL}" + (f", {PATIENT}" if given is not None else "")
        self.layout = f"CSV ({columns})" + (", malaria labels" if classes.malaria else "")

    def _read(self) -> bytes:
        try:
            size = self.path.stat().st_size
            if size > MAX_CSV_BYTES:
                raise CellaeError(
                    f"{self.path} is {size / 1e6:.0f} MB; a label CSV is refused above "
                    f"{MAX_CSV_BYTES / 1e6:.0f} MB"
                )
            return self.path.read_bytes()
        except FileNotFoundError as exc:
            raise CellaeError(f"no such file: {self.path}") from exc
        except OSError as exc:
            raise CellaeError(f"cannot read {self.path}: {exc.strerror}") from exc

    def _list(self, raw: bytes) -> tuple[list[str], list[str] | None]:
        """Fill files and paths from the rows; return each kept row's label and patient (or
        None for the patients when there is no patient column)."""
        try:
            text = raw.decode("utf-8-sig")  # spreadsheets often save UTF-8 with a byte-order mark
        except UnicodeDecodeError as exc:
            raise CellaeError(
                f"{self.path} is not UTF-8 text (byte {exc.start}); save it as a UTF-8 CSV"
            ) from exc
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = [name.strip().lower() for name in next(reader, [])]
            if FILE not in header or LABEL not in header:
                raise CellaeError(
                    f"{self.path} has no '{FILE}' and '{LABEL}' header: its first row must name "
                    f"the columns {FILE},{LABEL} (and optionally {PATIENT})"
                )
            column = {name: header.index(name) for name in (FILE, LABEL, PATIENT) if name in header}
            # every other named column is metadata that follows the image (plate, well, ...)
            extra = {name: i for i, name in enumerate(header)
                     if name and name not in column and name not in RESERVED}
            taken = [name for name in header if name in RESERVED and name not in column]
            if taken:
                raise CellaeError(f"{self.path}: the column '{taken[0]}' is a name cellae uses "
                                  f"for each image ({', '.join(RESERVED)}); rename it")
            self.metadata = {name: [] for name in extra}
            labels: list[str] = []
            patients: list[str] = []
            first_row: dict[str, int] = {}
            for row in reader:
                line = reader.line_num
                if not any(value.strip() for value in row):
                    continue  # blank lines, such as a trailing one
                if len(row) != len(header):
                    self.skip(f"row {line}", f"{len(row)} values for {len(header)} columns "
                                             f"(quote a file name that holds a comma)")
                    continue
                file = row[column[FILE]].strip().replace("\\", "/")
                label = row[column[LABEL]].strip()
                if not file:
                    self.skip(f"row {line}", "no file name")
                    continue
                name = PurePosixPath(file).as_posix()
                problem = _row_problem(file, label) or (
                    f"listed again (row {first_row[name]} is used)" if name in first_row
                    else self._look_up(name)
                )
                if problem:
                    self.skip(file, f"row {line}: {problem}")
                    continue
                first_row[name] = line
                self.paths.append(name)
                labels.append(label)
                patients.append(row[column[PATIENT]].strip() if PATIENT in column else "")
                for name, position in extra.items():
                    self.metadata[name].append(row[position].strip())
        except csv.Error as exc:
            raise CellaeError(
                f"{self.path}: line {reader.line_num}: not a readable CSV ({exc})"
            ) from exc
        self.files = list(self.paths)
        return labels, patients if PATIENT in column else None

    def _look_up(self, name: str) -> str:
        """Why the file ``name`` cannot be read, or "" after noting its size and time."""
        try:
            stat = (self.root / name).stat()
        except FileNotFoundError:
            return "no such file"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        if not S_ISREG(stat.st_mode):
            return "not a file"
        if stat.st_size == 0:
            return "empty file (0 bytes)"
        self._sizes[name], self._mtimes[name] = stat.st_size, stat.st_mtime_ns
        return ""

    def fingerprint(self) -> str:
        return self._fingerprint("csv", str(self.path.resolve()), self._digest)


def _row_problem(file: str, label: str) -> str:
    """What makes a row unusable before its file is looked at, or "" when nothing does."""
    if "\0" in file:
        return "not a file name (it holds a NUL byte)"
    if file.startswith("/") or _DRIVE.match(file) or ".." in file.split("/"):
        # the CSV may come from elsewhere: it must not make cellae read outside its folder
        return "unsafe path (absolute or with '..'), not read"
    if not label:
        return "no label"
    if not is_image_name(file):
        return f"not an image file ({PurePosixPath(file).suffix or 'no suffix'})"
    return ""
