"""A folder whose subfolders are classes, such as the Kaggle ``cell_images/``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cellae.config import DataConfig
from cellae.data.decode import BadImage
from cellae.data.sources.class_folders import ClassFolderSource, find_class_folders
from cellae.errors import CellaeError


class FolderSource(ClassFolderSource):
    """Class folders on disk, found below any chain of single wrapper folders."""

    kind = "folder"
    spec_help = "a folder of class folders"
    # any folder is asked last: a plug-in may read folders of a layout of its own
    fallback = True

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return Path(spec).expanduser().is_dir()

    def __init__(self, data: DataConfig) -> None:
        super().__init__(data)
        root = Path(data.source).expanduser()
        self.description = str(root)
        if not root.is_dir():
            raise CellaeError(f"no such folder: {root}")
        self.root = root
        files, dirs, self._sizes, self._mtimes = _walk(root)
        self._set_listing(find_class_folders(files, dirs, str(root)), self._sizes)

    def read_bytes(self, index: int) -> bytes:
        try:
            return (self.root / self.paths[index]).read_bytes()
        except OSError as exc:
            raise BadImage(f"cannot be read ({exc.strerror})") from exc

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"folder\0{self.root.resolve()}\0".encode())
        for path in self.paths:
            digest.update(f"{path}\0{self._sizes[path]}\0{self._mtimes[path]}\n".encode())
        digest.update(repr(sorted(self.label_map.items())).encode())
        return digest.hexdigest()


def _walk(root: Path) -> tuple[list[str], set[str], dict[str, int], dict[str, int]]:
    """Files, folders, sizes and modification times under ``root``; links to folders are not
    entered (loops)."""
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
