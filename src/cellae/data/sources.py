"""Where cell images come from: a class folder, a zip read in place, or the synthetic generator.

Every source lists its images once (names, labels, patients; no decoding) and then yields
``Sample(image, label, patient, file)`` with the image as uint8 RGB, height x width x 3.
Files that cannot be used are skipped with a reason (``source.skipped``) or, with
``strict``, stop everything at the first one. Junk that real copies of the malaria set carry
(``Thumbs.db``, ``.DS_Store``, ``__MACOSX/``, a nested duplicate ``cell_images/cell_images/``)
is left out and noted in ``source.ignored``.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import statistics
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from cellae.config import SYNTHETIC, SyntheticConfig
from cellae.data import synthetic
from cellae.errors import CellaeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
JUNK_NAMES = ("thumbs.db", ".ds_store", "desktop.ini")
MALARIA_FOLDERS = {"parasitized": 1, "uninfected": 0}
MALARIA_CLASSES = ["uninfected", "infected"]
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"
ZIP_BOMB_RATIO = 100
ZIP_BOMB_BYTES = 1 << 20

# NIH names start with the patient: C33P1thinF_, C176P137NThinF_, C64P25N_ThinF_, C1_thinF_, ...
_PATIENT = re.compile(r"^c(\d+)(?:p\d+)?n?_?thin", re.IGNORECASE)


class Sample(NamedTuple):
    image: np.ndarray
    label: int
    patient: str
    file: str


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


def patient_from_name(name: str) -> str | None:
    """The patient id in an NIH file name (``C33P1thinF_...`` -> ``C33``), or None."""
    match = _PATIENT.match(posixpath.basename(name))
    return f"C{match.group(1)}" if match else None


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to uint8 RGB (H, W, 3); raise :class:`BadImage` with the reason.

    Grayscale is repeated into three channels, 16-bit is scaled to 8-bit, and transparency
    is composited on black, the colour of the padding around every cell.
    """
    return _to_rgb(_open_image(data, decode=True))


def _require_complete(data: bytes) -> None:
    """Catch empty and cut-off files from their ends, without decoding any pixels."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    # a few writers pad after the end marker, so look near the end rather than at it
    tail = data[-64:]
    if data.startswith(b"\x89PNG") and PNG_END not in tail:
        raise BadImage("truncated (the PNG end chunk is missing)")
    if data.startswith(b"\xff\xd8") and JPEG_END not in tail:
        raise BadImage("truncated (the JPEG end marker is missing)")


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


def _image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; raise :class:`BadImage` on what decoding would."""
    return _open_image(data, decode=False).size


def _open_image(data: bytes, decode: bool) -> Image.Image:
    """Open image bytes (and decode the pixels when ``decode``); raise :class:`BadImage`."""
    _require_complete(data)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; both are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if decode:
                image.load()
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused as a decompression-bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not a readable image (unknown format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if "truncated" in str(exc).lower():
            raise BadImage("truncated (the image data stops early)") from exc
        raise BadImage(f"not a readable image ({exc})") from exc


def _is_junk(relative: str) -> bool:
    parts = relative.split("/")
    name = parts[-1].lower()
    return "__MACOSX" in parts or name in JUNK_NAMES or name.startswith("._")


def _has_image_suffix(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


class _Listing(NamedTuple):
    """The class folders found in a tree of relative paths."""

    root: str  # the class root, relative to the source ("" or "cell_images/")
    class_files: dict[str, list[str]]  # class folder -> paths relative to the source
    ignored: list[str]


def _find_class_folders(files: list[str], dirs: set[str], where: str) -> _Listing:
    """Find the folder whose subfolders are the classes, descending through single wrappers.

    ``files`` and ``dirs`` are POSIX paths relative to the source (``dirs`` without a trailing
    slash, every ancestor of a file included). A subfolder that repeats the tree (the
    ``cell_images/cell_images/`` of some copies of the malaria set) is ignored, not counted twice.
    """
    ignored: list[str] = []
    junk = [f for f in files if _is_junk(f)]
    files = [f for f in files if not _is_junk(f)]
    dirs = {d for d in dirs if "__MACOSX" not in d.split("/")}
    if junk:
        names = sorted({posixpath.basename(f) for f in junk})
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        ignored.append(f"{len(junk)} junk files ({shown})")

    def children(prefix: str) -> list[str]:
        depth = prefix.count("/") if prefix else 0
        return sorted(
            d.split("/")[depth] for d in dirs
            if d.startswith(prefix) and d.count("/") == depth and d != prefix.rstrip("/")
        )

    prefix = ""
    while True:
        sub = children(prefix)
        loose = [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]
        if len(sub) == 1 and not loose:
            prefix = f"{prefix}{sub[0]}/"
            continue
        break
    if not sub:
        raise CellaeError(
            f"no class folders in {where}: expected one subfolder per class "
            f"(e.g. cell_images/Parasitized and cell_images/Uninfected)"
        )
    if loose:
        ignored.append(f"{len(loose)} files outside the class folders in {prefix or './'}")
    own_name = prefix.rstrip("/").rsplit("/", 1)[-1] if prefix else ""
    class_files: dict[str, list[str]] = {}
    for name in sub:
        inner = set(children(f"{prefix}{name}/"))
        if (own_name and name == own_name) or len(inner & (set(sub) - {name})) >= 2:
            count = sum(
                1 for f in files if f.startswith(f"{prefix}{name}/") and _has_image_suffix(f)
            )
            ignored.append(f"{count} images in {prefix}{name}/ (a nested duplicate of the tree)")
            continue
        class_files[name] = sorted(f for f in files if f.startswith(f"{prefix}{name}/"))
    return _Listing(prefix, class_files, ignored)


def _label_map(class_folders: list[str]) -> tuple[dict[str, int], list[str], str]:
    """Folder -> label, class names by label, and the layout's name."""
    if {c.lower() for c in class_folders} == set(MALARIA_FOLDERS) and len(class_folders) == 2:
        return ({c: MALARIA_FOLDERS[c.lower()] for c in class_folders}, list(MALARIA_CLASSES),
                "malaria class folders")
    ordered = sorted(class_folders)
    return {c: i for i, c in enumerate(ordered)}, ordered, "class folders"


class Source:
    """The images of one source; subclasses say how to list and read them."""

    kind = "source"

    def __init__(self, description: str, strict: bool) -> None:
        self.description = description
        self.strict = strict
        self.files: list[str] = []
        self.labels: list[int] = []
        self.patients: list[str] = []
        self.class_names: list[str] = []
        self.label_map: dict[str, int] = {}
        self.layout = ""
        self.ignored: list[str] = []
        self.unmatched_patients = 0
        self._skipped: dict[str, str] = {}

    # -- what a subclass provides
    def read_bytes(self, index: int) -> bytes:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A digest of everything that decides the images: names, sizes, times, labels."""
        raise NotImplementedError

    def probe(self, index: int) -> tuple[int, int]:
        """(width, height) of image ``index``, read from its header only."""
        return _image_size(self.read_bytes(index))

    # -- shared behaviour
    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 RGB (H, W, 3); raise :class:`BadImage` when unusable."""
        return decode_image(self.read_bytes(index))

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return list(self._skipped.items())

    def skip(self, file: str, reason: str) -> None:
        """Record a bad file, or stop at it when strict."""
        if self.strict:
            raise CellaeError(f"{self.description}: {file}: {reason} (--strict stops at the first bad file)")
        self._skipped.setdefault(file, reason)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Sample]:
        for index, file in enumerate(self.files):
            try:
                image = self.load(index)
            except BadImage as exc:
                self.skip(file, str(exc))
                continue
            yield Sample(image, int(self.labels[index]), self.patients[index], file)

    def info(self) -> dict[str, object]:
        """What the cache records about where its images came from."""
        return {"kind": self.kind, "path": self.description, "layout": self.layout}

    def _set_listing(self, listing: _Listing, sizes: dict[str, int]) -> None:
        """Fill files, labels and patients from class folders; ``sizes`` maps path -> bytes."""
        self.ignored = list(listing.ignored)
        # names are relative to the class root, so a folder and its zip list the same files
        relative = {path: path[len(listing.root):]
                    for files in listing.class_files.values() for path in files}
        for path, name in relative.items():
            if _has_image_suffix(path) and sizes[path] == 0:
                self.skip(name, "empty file (0 bytes)")
        with_images = {c: [f for f in fs if _has_image_suffix(f) and sizes[f] > 0]
                       for c, fs in listing.class_files.items()}
        for files in listing.class_files.values():
            for path in files:
                if not _has_image_suffix(path):
                    suffix = posixpath.splitext(path)[1] or "no suffix"
                    self.skip(relative[path], f"not an image file ({suffix})")
        empty = sorted(c for c, fs in with_images.items() if not fs)
        full = sorted(c for c, fs in with_images.items() if fs)
        if not full:
            raise CellaeError(
                f"no images found in {self.description} (class folders: {', '.join(empty)})"
            )
        if len(full) == 1:
            raise CellaeError(
                f"{self.description} has only one class with images ({full[0]}); "
                f"empty: {', '.join(empty) or 'no other class folder'}; a model needs two classes"
            )
        self.label_map, self.class_names, self.layout = _label_map(sorted(listing.class_files))
        if empty:
            self.ignored.append(f"empty class folders: {', '.join(empty)}")
        entries = sorted(
            (relative[path], self.label_map[folder], path)
            for folder, files in with_images.items() for path in files
        )
        self._paths = [path for _, _, path in entries]
        self.files = [name for name, _, _ in entries]
        self.labels = [label for _, label, _ in entries]
        patients = [patient_from_name(name) for name in self.files]
        self.unmatched_patients = sum(p is None for p in patients)
        # without an id in the name each file is its own patient: a patient split is then by image
        self.patients = [p if p is not None else name for p, name in zip(patients, self.files, strict=True)]


class FolderSource(Source):
    """A folder whose subfolders are classes, such as the Kaggle ``cell_images/``."""

    kind = "folder"

    def __init__(self, root: str | Path, strict: bool = False) -> None:
        root = Path(root).expanduser()
        super().__init__(str(root), strict)
        if not root.exists():
            raise CellaeError(f"no such file or folder: {root}")
        self.root = root
        files, dirs, self._sizes, self._mtimes = self._walk(root)
        self._set_listing(_find_class_folders(files, dirs, str(root)), self._sizes)

    @staticmethod
    def _walk(root: Path) -> tuple[list[str], set[str], dict[str, int], dict[str, int]]:
        """Files, folders, sizes and modification times under ``root``; links to folders are
        not entered (loops)."""
        files, dirs, sizes, mtimes = [], set(), {}, {}
        for current, subdirs, names in os.walk(root, followlinks=False):
            base = Path(current).relative_to(root).as_posix()
            base = "" if base == "." else f"{base}/"
            dirs.update(f"{base}{d}" for d in subdirs if not (Path(current) / d).is_symlink())
            for name in names:
                path = Path(current) / name
                try:
                    stat = path.stat()
                except OSError:
                    continue  # a dangling link: nothing to read
                files.append(f"{base}{name}")
                sizes[f"{base}{name}"] = stat.st_size
                mtimes[f"{base}{name}"] = stat.st_mtime_ns
        return files, dirs, sizes, mtimes

    def read_bytes(self, index: int) -> bytes:
        try:
            return (self.root / self._paths[index]).read_bytes()
        except OSError as exc:
            raise BadImage(f"cannot be read ({exc.strerror})") from exc

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"folder\0{self.root.resolve()}\0".encode())
        for path in self._paths:
            digest.update(f"{path}\0{self._sizes[path]}\0{self._mtimes[path]}\n".encode())
        digest.update(repr(sorted(self.label_map.items())).encode())
        return digest.hexdigest()


class ZipSource(Source):
    """The Kaggle or NIH zip, read member by member without extracting anything to disk."""

    kind = "zip"

    def __init__(self, path: str | Path, strict: bool = False) -> None:
        path = Path(path).expanduser()
        super().__init__(str(path), strict)
        self.path = path
        self._archive: zipfile.ZipFile | None = None
        infos = self._open().infolist()
        files, dirs, self._infos = [], set(), {}
        unsafe = []
        for info in infos:
            name = info.filename
            parts = name.rstrip("/").split("/")
            if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
                unsafe.append(name)
                continue
            if info.is_dir():
                dirs.add(name.rstrip("/"))
                continue
            files.append(name)
            self._infos[name] = info
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        listing = _find_class_folders(files, dirs, str(path))
        for name in unsafe:
            # a member that would land outside any folder it is extracted to is never read
            self.skip(name, "unsafe path (absolute or with '..'), not read")
        self._set_listing(listing, {name: info.file_size for name, info in self._infos.items()})

    def _open(self) -> zipfile.ZipFile:
        if self._archive is None:
            try:
                self._archive = zipfile.ZipFile(self.path)
            except FileNotFoundError as exc:
                raise CellaeError(f"no such file or folder: {self.path}") from exc
            except (zipfile.BadZipFile, OSError) as exc:
                raise CellaeError(
                    f"{self.path} is not a zip file or is truncated ({exc}); "
                    f"download it again (cellae data download resumes)"
                ) from exc
        return self._archive

    def __getstate__(self) -> dict[str, object]:
        # an open archive cannot cross to a worker process; each process opens its own
        return {**self.__dict__, "_archive": None}

    def read_bytes(self, index: int) -> bytes:
        info = self._infos[self._paths[index]]
        ratio = info.file_size / max(info.compress_size, 1)
        # PNG and JPEG barely compress further; a member that grows a hundredfold into
        # megabytes is not a cell crop but a zip bomb
        if ratio > ZIP_BOMB_RATIO and info.file_size > ZIP_BOMB_BYTES:
            raise BadImage(
                f"refused as a zip bomb: expands {ratio:.0f}-fold to {info.file_size:,} bytes"
            )
        try:
            return self._open().read(info)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise BadImage(f"corrupt zip member ({exc})") from exc

    def fingerprint(self) -> str:
        stat = self.path.stat()
        digest = hashlib.sha256(
            f"zip\0{self.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()
        )
        for name in self._paths:
            info = self._infos[name]
            digest.update(f"{name}\0{info.file_size}\0{info.CRC}\n".encode())
        digest.update(repr(sorted(self.label_map.items())).encode())
        return digest.hexdigest()


class SyntheticSource(Source):
    """Cells drawn by :mod:`cellae.data.synthetic`, the built-in default."""

    kind = "synthetic"

    def __init__(self, config: SyntheticConfig, strict: bool = False) -> None:
        super().__init__(SYNTHETIC, strict)
        self.config = replace(config)  # a snapshot: the fingerprint must describe these cells
        self.plan = synthetic.plan(self.config)
        self.files = list(self.plan.files)
        self.labels = [int(v) for v in self.plan.labels]
        self.patients = list(self.plan.patients)
        self.class_names = list(MALARIA_CLASSES)
        self.label_map = {name: label for label, name in enumerate(MALARIA_CLASSES)}
        self.layout = "synthetic generator"

    def load(self, index: int) -> np.ndarray:
        return synthetic.draw_cell(self.plan, index)

    def probe(self, index: int) -> tuple[int, int]:
        height, width = synthetic.frame_size(self.plan, index)
        return width, height

    def fingerprint(self) -> str:
        version = getattr(synthetic, "GENERATOR_VERSION", 1)
        text = f"synthetic\0{version}\0{sorted(asdict(self.config).items())}"
        return hashlib.sha256(text.encode()).hexdigest()

    def info(self) -> dict[str, object]:
        return super().info() | {"synthetic": asdict(self.config)}


def open_source(spec: str | Path, synthetic: SyntheticConfig | None = None, strict: bool = False) -> Source:
    """The source named by ``spec``: ``'synthetic'``, a ``.zip`` file, or a folder of class folders."""
    if str(spec) == SYNTHETIC:
        return SyntheticSource(synthetic or SyntheticConfig(), strict=strict)
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path, strict=strict)
    if not path.exists():
        raise CellaeError(f"no such file or folder: {path}")
    if not zipfile.is_zipfile(path):
        if path.suffix.lower() == ".zip":
            raise CellaeError(
                f"{path} is not a readable zip (truncated or damaged); download it again"
            )
        raise CellaeError(f"{path} is not a zip file or a folder of class folders")
    return ZipSource(path, strict=strict)


# ---------------------------------------------------------------- inspect


def _thousands(n: int) -> str:
    return f"{n:,}"


def inspect_source(spec: str | Path, strict: bool = False, synthetic: SyntheticConfig | None = None) -> str:
    """A plain-text report: labels, counts per class and patient, image sizes, what was skipped.

    Every file's header (and, for PNG and JPEG, its end marker) is read, so damaged files are
    found without decoding the pixels.
    """
    source = open_source(spec, synthetic=synthetic, strict=strict)
    sizes: list[tuple[int, int]] = []
    good: list[int] = []
    for index, file in enumerate(source.files):
        try:
            sizes.append(source.probe(index))
        except BadImage as exc:
            source.skip(file, str(exc))
            continue
        good.append(index)
    labels = np.asarray(source.labels, dtype=np.int64)[good]
    patients = [source.patients[i] for i in good]
    folder_of = {label: folder for folder, label in source.label_map.items()}
    lines = [f"source: {source.description} ({source.kind}, {source.layout})"]
    if source.kind == "synthetic":
        lines.append(f"synthetic generator: {source.info()['synthetic']}")
    lines.append("labels: " + ", ".join(
        f"{folder_of[label]} = {name} = {label}" if folder_of[label] != name else f"{name} = {label}"
        for label, name in enumerate(source.class_names)
    ))
    lines.append(f"images: {_thousands(len(good))}")
    for label in range(len(source.class_names)):
        lines.append(f"  {folder_of[label]}: {_thousands(int((labels == label).sum()))}")
    per_patient = Counter(patients)
    counts = sorted(per_patient.values())
    lines.append(f"patients: {_thousands(len(per_patient))}")
    if counts:
        lines.append(
            f"images per patient: min {counts[0]}, median {statistics.median(counts):g}, "
            f"max {counts[-1]}"
        )
    if source.unmatched_patients:
        lines.append(
            f"  {source.unmatched_patients} files have no patient id in their name "
            f"(not like C33P1thinF_...): each counts as its own patient"
        )
    else:
        by_class = {p: Counter() for p in per_patient}
        for patient, label in zip(patients, labels.tolist(), strict=True):
            by_class[patient][label] += 1
        header = ["patient", "images", *(folder_of[i] for i in range(len(source.class_names)))]
        lines.append("  " + "  ".join(f"{h:>11}" if i else f"{h:<8}" for i, h in enumerate(header)))
        for patient in sorted(per_patient, key=_natural):
            row = [patient, per_patient[patient], *(by_class[patient][i] for i in range(len(header) - 2))]
            lines.append("  " + "  ".join(f"{v:>11}" if i else f"{v:<8}" for i, v in enumerate(row)))
    if sizes:
        widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
        lines.append(
            f"image size: width {min(widths)}-{max(widths)} px, height {min(heights)}-{max(heights)} px "
            f"(median {statistics.median(widths):g} x {statistics.median(heights):g})"
        )
    lines.append(f"skipped: {len(source.skipped)} files")
    lines += [f"  {file}: {reason}" for file, reason in source.skipped]
    lines += [f"ignored: {what}" for what in source.ignored]
    return "\n".join(lines)


def _natural(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))
