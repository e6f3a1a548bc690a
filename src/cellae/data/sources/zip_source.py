"""The Kaggle or NIH zip of class folders, read member by member without extracting anything."""

from __future__ import annotations

import hashlib
import re
import zipfile
import zlib
from pathlib import Path

from cellae.data.decode import BadImage, check_expansion
from cellae.data.sources import register_source
from cellae.data.sources.class_folders import ClassFolderSource, find_class_folders
from cellae.errors import CellaeError
from cellae.sections import DataConfig

# a cell crop is kilobytes; a member declared larger is not one (and is read to its declared size)
MAX_MEMBER_BYTES = 64 * 2**20
# a zip, unlike a file system, bounds no name; names are stored in the cache at the longest
# one's width, and a member name of 65,000 characters made a 1.5 GB cache
MAX_NAME_CHARACTERS = 1024


@register_source
class ZipSource(ClassFolderSource):
    """A zip of class folders; members that would land outside the zip's folder are never read."""

    kind = "zip"
    spec_help = "a .zip of class folders"

    @classmethod
    def accepts(cls, spec: str) -> bool:
        path = Path(spec).expanduser()
        # the suffix alone is enough, so that a damaged download is reported as a damaged zip
        return not path.is_dir() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path))

    def __init__(self, data: DataConfig) -> None:
        super().__init__(data)
        path = Path(data.source).expanduser()
        self.description = str(path)
        self.path = path
        self._archive: zipfile.ZipFile | None = None
        files, dirs, self._infos = [], set(), {}
        unsafe, duplicated, too_long = [], [], []
        for info in self._open().infolist():
            name = info.filename
            parts = name.rstrip("/").split("/")
            if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
                unsafe.append(name)
                continue
            if len(name) > MAX_NAME_CHARACTERS:
                # every name is kept in the cache at the longest name's width
                too_long.append(name)
                continue
            if info.is_dir():
                dirs.add(name.rstrip("/"))
                continue
            if name in self._infos:
                # a zip may hold one name twice; listed twice it would count an image twice,
                # and with data.split=image put one image on both sides
                duplicated.append(name)
                continue
            files.append(name)
            self._infos[name] = info
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        listing = find_class_folders(files, dirs, str(path))
        for name in unsafe:
            self.skip(name, "unsafe path (absolute or with '..'), not read")
        for name in too_long:
            self.skip(f"{name[:80]}...", f"a member name of {len(name):,} characters, over "
                                         f"{MAX_NAME_CHARACTERS:,}; not read")
        for name in duplicated:
            self.skip(name, "a second member of the same name in the zip, not read")
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
        info = self._infos[self.paths[index]]
        check_expansion(info.file_size, info.compress_size)
        if info.file_size > MAX_MEMBER_BYTES:
            # zipfile stops reading at the size the directory gives: bound that, not the data
            raise BadImage(f"refused: the zip says it holds {info.file_size:,} bytes, more than "
                           f"a cell crop (at most {MAX_MEMBER_BYTES:,})")
        try:
            return self._open().read(info)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise BadImage(f"corrupt zip member ({exc})") from exc

    def fingerprint(self) -> str:
        stat = self.path.stat()
        digest = hashlib.sha256(
            f"zip\0{self.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()
        )
        for name in self.paths:
            info = self._infos[name]
            digest.update(f"{name}\0{info.file_size}\0{info.CRC}\n".encode())
        digest.update(repr(sorted(self.label_map.items())).encode())
        return digest.hexdigest()
