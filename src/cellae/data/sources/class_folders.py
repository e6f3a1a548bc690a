"""The class-folder layout that the folder and zip sources share: one subfolder per class.

Junk that real copies of the malaria set carry (``Thumbs.db``, ``.DS_Store``, ``__MACOSX/``,
a nested duplicate ``cell_images/cell_images/``) is left out and noted in ``ignored``. Files
are named relative to the class root, so a folder and its zip list the same files.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from typing import NamedTuple

from cellae.data.decode import is_image_name
from cellae.data.sources.base import FileSource
from cellae.data.sources.labels import classes_from_names, patients_from_names
from cellae.errors import CellaeError

JUNK_NAMES = ("thumbs.db", ".ds_store", "desktop.ini")


class Listing(NamedTuple):
    """The class folders found in a tree of relative paths."""

    root: str  # the class root, relative to the source ("" or "cell_images/")
    class_files: dict[str, list[str]]  # class folder -> paths relative to the source
    ignored: list[str]


def is_junk(relative: str) -> bool:
    """Files that operating systems leave beside images (thumbnails, resource forks)."""
    parts = relative.split("/")
    name = parts[-1].lower()
    return "__MACOSX" in parts or name in JUNK_NAMES or name.startswith("._")


def find_class_folders(files: list[str], dirs: set[str], where: str) -> Listing:
    """Find the folder whose subfolders are the classes, descending through single wrappers.

    ``files`` and ``dirs`` are POSIX paths relative to the source (``dirs`` without a trailing
    slash, every ancestor of a file included). A subfolder that repeats the tree (the
    ``cell_images/cell_images/`` of some copies of the malaria set) is ignored, not counted twice.
    """
    ignored: list[str] = []
    junk = [f for f in files if is_junk(f)]
    files = [f for f in files if not is_junk(f)]
    dirs = {d for d in dirs if "__MACOSX" not in d.split("/")}
    if junk:
        names = sorted({posixpath.basename(f) for f in junk})
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        ignored.append(f"{len(junk)} junk files ({shown})")

    # each folder's subfolders, found in one pass: asking every folder for its children
    # by scanning all folders was quadratic (minutes for a zip of 20,000 class folders)
    subfolders: dict[str, set[str]] = defaultdict(set)
    for d in dirs:
        parent, _, name = d.rpartition("/")
        subfolders[parent].add(name)

    def children(prefix: str) -> list[str]:
        # prefix is "" or a folder plus the one "/" added below (a zip may hold "a//b")
        return sorted(subfolders.get(prefix[:-1], ()))

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
    under: dict[str, list[str]] = defaultdict(list)  # class folder -> the files below it
    for f in files:
        if f.startswith(prefix):
            head, slash, _ = f[len(prefix):].partition("/")
            if slash:
                under[head].append(f)
    siblings = set(sub)
    class_files: dict[str, list[str]] = {}
    for name in sub:
        inner = subfolders.get(f"{prefix}{name}", set())
        if (own_name and name == own_name) or len((inner - {name}) & siblings) >= 2:
            count = sum(1 for f in under[name] if is_image_name(f))
            ignored.append(f"{count} images in {prefix}{name}/ (a nested duplicate of the tree)")
            continue
        class_files[name] = sorted(under[name])
    return Listing(prefix, class_files, ignored)


class ClassFolderSource(FileSource):
    """A source laid out as class folders; a subclass finds the tree and reads its files."""

    def _set_listing(self, listing: Listing, sizes: dict[str, int]) -> None:
        """Fill the listing from class folders; ``sizes`` maps each path to its bytes."""
        self.ignored = list(listing.ignored)
        relative = {path: path[len(listing.root):]
                    for files in listing.class_files.values() for path in files}
        for path, name in relative.items():
            if is_image_name(path) and sizes[path] == 0:
                self.skip(name, "empty file (0 bytes)")
        for path, name in relative.items():
            if not is_image_name(path):
                suffix = posixpath.splitext(path)[1] or "no suffix"
                self.skip(name, f"not an image file ({suffix})")
        with_images = {c: [f for f in fs if is_image_name(f) and sizes[f] > 0]
                       for c, fs in listing.class_files.items()}
        empty = sorted(c for c, fs in with_images.items() if not fs)
        full = sorted(c for c, fs in with_images.items() if fs)
        if not full:
            skipped = self.skipped
            why = f"; {len(skipped)} skipped, as {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
            raise CellaeError(
                f"no images found in {self.description} (class folders: {', '.join(empty)}){why}"
            )
        if len(full) == 1:
            raise CellaeError(
                f"{self.description} has only one class with images ({full[0]}); "
                f"empty: {', '.join(empty) or 'no other class folder'}; a model needs two classes"
            )
        classes = classes_from_names(listing.class_files)
        self.label_map, self.class_names = classes.label_map, classes.names
        self.layout = "malaria class folders" if classes.malaria else "class folders"
        if empty:
            self.ignored.append(f"empty class folders: {', '.join(empty)}")
        entries = sorted(
            (relative[path], self.label_map[folder], path)
            for folder, files in with_images.items() for path in files
        )
        self.paths = [path for _, _, path in entries]
        self.files = [name for name, _, _ in entries]
        self.labels = [label for _, label, _ in entries]
        self.patients, self.unmatched_patients = patients_from_names(self.files)
