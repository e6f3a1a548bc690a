"""A folder whose subfolders are classes, such as the Kaggle ``cell_images/``."""

from __future__ import annotations

import os
from pathlib import Path

from cellae.data.sources import register_source
from cellae.data.sources.base import OnDiskFiles
from cellae.data.sources.class_folders import ClassFolderSource, find_class_folders
from cellae.errors import CellaeError
from cellae.sections import DataConfig

# a walk that finds more entries than this is not in a data set (``cellae data inspect /``):
# it stops and says so rather than list the whole machine; ten times the largest sets in use
MAX_WALK_ENTRIES = 5_000_000
# the kernel's and devices' pseudo-files: never a data set, and /proc goes on for ever
_SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")


@register_source
class FolderSource(OnDiskFiles, ClassFolderSource):
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
        # a name in another encoding (Latin-1 on an old disk) reaches Python as surrogates,
        # which no UTF-8 file (the cache, split.json, a CSV) can hold
        undecodable = [f for f in files if not _is_utf8(f)]
        files = [f for f in files if _is_utf8(f)]
        dirs = {d for d in dirs if _is_utf8(d)}
        for name in undecodable:
            self.skip(name.encode("utf-8", "backslashreplace").decode("ascii", "replace"),
                      "its name is not UTF-8 (another encoding?); rename it to read it")
        self._set_listing(find_class_folders(files, dirs, str(root)), self._sizes)

    def fingerprint(self) -> str:
        return self._fingerprint("folder", str(self.root.resolve()))


def _walk(root: Path) -> tuple[list[str], set[str], dict[str, int], dict[str, int]]:
    """Files, folders, sizes and modification times under ``root``.

    A link to a folder is followed (a class folder is often a link to where the images lie),
    but a folder already seen by its real path is not entered again, so a link loop ends and
    no image is counted twice.
    """
    files, dirs, sizes, mtimes = [], set(), {}, {}
    seen = {os.path.realpath(root)}
    if os.path.realpath(root) == os.path.realpath(os.sep):
        raise CellaeError(f"{root} is the whole file system, not a data set; give the folder of "
                          "the class folders")
    if _is_system_folder(seen.copy().pop()):
        raise CellaeError(f"{root} is a system folder ({', '.join(_SYSTEM_FOLDERS)}), not a data "
                          "set; give the folder of the images")
    entries = 0
    for current, subdirs, names in os.walk(root, followlinks=True):
        entries += len(subdirs) + len(names)
        if entries > MAX_WALK_ENTRIES:
            raise CellaeError(f"more than {MAX_WALK_ENTRIES:,} files and folders under {root}: "
                              "not a data set's folder? give the folder of the class folders")
        fresh = []
        for d in sorted(subdirs):
            real = os.path.realpath(Path(current) / d)
            if _is_system_folder(real):
                continue
            if real not in seen:
                seen.add(real)
                fresh.append(d)
        subdirs[:] = fresh  # os.walk enters only these
        base = Path(current).relative_to(root).as_posix()
        base = "" if base == "." else f"{base}/"
        dirs.update(f"{base}{d}" for d in subdirs)
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


def _is_system_folder(real: str) -> bool:
    return any(real == top or real.startswith(top + "/") for top in _SYSTEM_FOLDERS)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
