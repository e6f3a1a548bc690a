"""What a source is: everything the cache, ``cellae data inspect`` and a plug-in rely on.

A source lists its images once, when it is opened (names, labels, patients, any further
metadata; nothing decoded), then hands out each image as height x width x channels: uint8 RGB
for the malaria crops, any channel count and sample type for fluorescence (the cache scales
them to 8 bits, :mod:`cellae.data.channels`), with the cell's own mask where the source knows
it. A file it cannot use is skipped with a reason, or with ``strict`` stops everything at the
first one.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from cellae.data.channels import ChannelLayout, default_names
from cellae.data.decode import BadImage, decode_pixels, image_header
from cellae.errors import CellaeError
from cellae.sections import DataConfig

# the largest image file read: a 16-bit 4096 x 4096 crop of 4 channels is 128 MB uncompressed
MAX_FILE_BYTES = 256 * 2**20


class Sample(NamedTuple):
    image: np.ndarray
    label: int
    patient: str
    file: str


class Source(ABC):
    """The images of one source.

    A subclass says which specs it reads (:meth:`accepts`), is built from the whole
    :class:`~cellae.config.DataConfig` and fills the listing below in its constructor;
    :func:`cellae.data.sources.register_source` makes :func:`~cellae.data.sources.open_source`
    use it. The listing is parallel: ``files[i]``, ``labels[i]`` and ``patients[i]`` describe
    image ``i``, and the cache stores them beside its pixels.
    """

    kind: ClassVar[str]  # recorded in the cache's meta.json; unique among registered sources
    spec_help: ClassVar[str]  # how a user names it, for errors: "a .zip of class folders"
    # a fallback is asked after every other source, so that a plug-in may claim specs it also takes
    fallback: ClassVar[bool] = False

    def __init__(self, data: DataConfig) -> None:
        self.description = str(data.source)  # where the images are, as the user reads it
        self.strict = data.strict
        self.files: list[str] = []  # one unique name per image, relative to the source
        self.labels: list[int] = []  # indices into class_names
        self.patients: list[str] = []
        self.class_names: list[str] = []  # by label
        self.label_map: dict[str, int] = {}  # the class as the source names it -> label
        self.layout = ""  # how the source is organised, in words
        self.ignored: list[str] = []  # what was left out on purpose (junk files), in words
        self.unmatched_patients = 0  # images whose patient is unknown, each its own patient
        # further columns, each parallel to files: plate, well, treatment... (strings)
        self.metadata: dict[str, list[str]] = {}
        self.channel_names: tuple[str, ...] = tuple(data.channel_names)  # by position, if given
        self._skipped: dict[str, str] = {}

    @classmethod
    @abstractmethod
    def accepts(cls, spec: str) -> bool:
        """Whether ``spec`` (the ``data.source`` text) names a source of this kind."""

    @abstractmethod
    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as (H, W, C): uint8 RGB for colour crops, or any channels and sample
        type; raise :class:`BadImage` when unusable."""

    def load_mask(self, index: int) -> np.ndarray | None:
        """The cell's own mask in image ``index`` (bool H x W), or None to find it as the bright
        piece on black padding, as for the malaria crops."""
        return None

    def header(self, index: int) -> tuple[int, str, tuple[str, ...]]:
        """(channels, sample type, the file's own channel names or ()) of image ``index``;
        by default from the decoded image, which a source may do more cheaply."""
        image = self.load(index)
        return (image.shape[2] if image.ndim == 3 else 1), str(image.dtype), ()

    def channel_layout(self) -> ChannelLayout:
        """The channels every image must have: those of the first readable image, named by
        ``data.channel_names``, else by the file, else red/green/blue or ch0, ch1, ..."""
        for index, file in enumerate(self.files):
            try:
                count, dtype, named = self.header(index)
            except BadImage as exc:
                self.skip(file, str(exc))
                continue
            if self.channel_names and len(self.channel_names) != count:
                raise CellaeError(
                    f"data.channel_names names {len(self.channel_names)} channels, but "
                    f"{file} of {self.description} has {count}")
            return ChannelLayout(self.channel_names or default_names(count, dtype, named), dtype)
        raise CellaeError(f"no image of {self.description} could be read")

    @abstractmethod
    def probe(self, index: int) -> tuple[int, int]:
        """(width, height) of image ``index``, as cheaply as the source allows."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A digest of everything that decides the images and labels; the cache is keyed by it."""

    def info(self) -> dict[str, object]:
        """What the cache records about where its images came from; inspect shows extra keys."""
        return {"kind": self.kind, "path": self.description, "layout": self.layout}

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file, reason) of every file left out, in the order they were found."""
        return list(self._skipped.items())

    def skip(self, file: str, reason: str) -> None:
        """Record a file that cannot be used, or stop at it when strict."""
        if self.strict:
            raise CellaeError(
                f"{self.description}: {file}: {reason} (--strict stops at the first bad file)"
            )
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


class FileSource(Source):
    """A source of encoded image files (PNG, JPEG, ...), read through :mod:`cellae.data.decode`."""

    def __init__(self, data: DataConfig) -> None:
        super().__init__(data)
        self.paths: list[str] = []  # where image i is read from, inside the source

    @abstractmethod
    def read_bytes(self, index: int) -> bytes:
        """The file of image ``index``; raise :class:`BadImage` when it cannot be read."""

    def load(self, index: int) -> np.ndarray:
        return decode_pixels(self.read_bytes(index))

    def probe(self, index: int) -> tuple[int, int]:
        header = image_header(self.read_bytes(index))
        return header.width, header.height

    def header(self, index: int) -> tuple[int, str, tuple[str, ...]]:
        header = image_header(self.read_bytes(index))
        return header.channels, header.dtype, header.channel_names


class OnDiskFiles:
    """For a :class:`FileSource` whose files lie under ``root``: read in place, and
    fingerprinted by name, size and modification time, so that a changed file rebuilds the cache."""

    root: Path
    paths: list[str]
    label_map: dict[str, int]
    _sizes: dict[str, int]
    _mtimes: dict[str, int]

    def read_bytes(self, index: int) -> bytes:
        path = self.root / self.paths[index]
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                # refused from its size: read whole, a 1.5 GB file named like a cell costs 1.5 GB
                raise BadImage(f"refused: {size:,} bytes, more than an image cellae reads "
                               f"(at most {MAX_FILE_BYTES:,})")
            return path.read_bytes()
        except OSError as exc:
            raise BadImage(f"cannot be read ({exc.strerror})") from exc

    def _fingerprint(self, *identity: str) -> str:
        digest = hashlib.sha256("".join(f"{part}\0" for part in identity).encode())
        for path in self.paths:
            digest.update(f"{path}\0{self._sizes[path]}\0{self._mtimes[path]}\n".encode())
        digest.update(repr(sorted(self.label_map.items())).encode())
        return digest.hexdigest()
