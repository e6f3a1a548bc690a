"""The preprocessed cache: every image decoded once into memory-mapped uint8 arrays.

A cache folder, named by the first 16 hex digits of its key, holds::

    images.npy    uint8 (N, C, S, S)
    masks.npy     uint8 (N, S, S), 1 inside the cell
    labels.npy    int64 (N,)
    patients.npy  str (N,)
    files.npy     str (N,), relative to the source
    metadata.npz  str (N,) per further column of the source (plate, well, ...), where it has any
    meta.json     key, format version, source, preprocessing, channels, counts, skipped files,
                  timings

The key digests the source's file list (names, sizes, modification times), the preprocessing
settings and :data:`FORMAT_VERSION`: change any of them and a new cache is built; change
nothing and the existing one is opened in milliseconds. A build writes into a temporary
folder that is renamed into place only when complete, so an interrupted build leaves nothing
that could later be mistaken for a cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import pickle
import secrets
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cellae.data.channels import ChannelPlan, clipping_warning, make_plan
from cellae.data.decode import BadImage
from cellae.data.preprocess import PreprocessSettings, preprocess
from cellae.data.sources import Source, open_source
from cellae.errors import CellaeError
from cellae.files import process_alive, write_atomic
from cellae.machine import available_cores
from cellae.sections import DataConfig

# 2: patients read from every NIH name form (C51AP12thinF_ is C51A), so older caches differ
# 3: fill_mean paints a wider rim, also where the crop's frame cuts the cell
FORMAT_VERSION = 3
TEMP_PREFIX = ".building-"
META_FILE = "meta.json"
ARRAYS = ("images", "masks", "labels", "patients", "files")
METADATA_FILE = "metadata.npz"
# below this many images, starting worker processes costs more than it saves
IN_PROCESS_LIMIT = 256
CHUNK = 32
# names written to files.npy and patients.npy at a time
STRING_SLICE = 4096
# a build on another machine sharing the cache folder is abandoned once untouched this long
FOREIGN_BUILD_SECONDS = 24 * 3600
# seconds between the lines that stand in for the progress bar off a terminal
PLAIN_PROGRESS_SECONDS = 5.0


class CellCache:
    """An opened cache folder: arrays memory-mapped read-only, metadata parsed."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.images: np.memmap = np.load(path / "images.npy", mmap_mode="r")
        self.masks: np.memmap = np.load(path / "masks.npy", mmap_mode="r")
        self.labels: np.ndarray = np.load(path / "labels.npy")
        self.patients: np.ndarray = np.load(path / "patients.npy", mmap_mode="r")
        self.files: np.ndarray = np.load(path / "files.npy", mmap_mode="r")
        self.class_names: list[str] = list(meta["class_names"])
        self._metadata: dict[str, np.ndarray] | None = None

    @property
    def channel_names(self) -> list[str]:
        """The channels of ``images``, by name (red, green, blue for a cache of 8-bit crops)."""
        names = self.meta.get("channels", {}).get("names")
        if names:
            return list(names)
        return ["gray"] if self.images.shape[1] == 1 else ["red", "green", "blue"]

    @property
    def metadata(self) -> dict[str, np.ndarray]:
        """The source's further columns (str arrays parallel to ``files``); {} where none."""
        if self._metadata is None:
            path = self.path / METADATA_FILE
            if path.is_file():
                with np.load(path, allow_pickle=False) as stored:
                    self._metadata = {name: stored[name] for name in stored.files}
            else:
                self._metadata = {}
        return self._metadata

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"CellCache({self.path}, {len(self)} images, {tuple(self.images.shape[1:])})"


def open_cache(path: Path) -> CellCache:
    """Open a finished cache folder; a missing, incomplete or foreign one is a clear error."""
    path = Path(path)
    if not path.is_dir():
        raise CellaeError(f"no cache folder at {path}")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CellaeError(f"{path} is an incomplete cache folder (no {META_FILE}); delete it")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CellaeError(f"{path} is an incomplete cache folder (unreadable {META_FILE})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CellaeError(
            f"the cache {path} was written by another cellae version (format "
            f"{meta.get('format_version')}, this one reads {FORMAT_VERSION}); delete it to rebuild"
        )
    missing = [name for name in ARRAYS if not (path / f"{name}.npy").is_file()]
    if missing:
        raise CellaeError(f"{path} is an incomplete cache folder (missing {', '.join(missing)})")
    try:
        return CellCache(path, meta)
    except (ValueError, OSError) as exc:
        raise CellaeError(f"{path} is an incomplete cache folder ({exc})") from exc


def cache_key(source: Source, settings: PreprocessSettings) -> str:
    text = json.dumps(
        {"format": FORMAT_VERSION, "source": source.fingerprint(), "preprocess": settings.to_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def prepare_cache(data: DataConfig, progress: bool = True) -> CellCache:
    """The cache for ``data``: reused when its inputs are unchanged, built (once) otherwise."""
    settings = PreprocessSettings.from_config(data)
    source = open_source(data)
    key = cache_key(source, settings)
    cache_dir = Path(data.cache_dir).expanduser()
    final = cache_dir / key[:16]
    if final.is_dir():
        try:
            cache = open_cache(final)
        except CellaeError:
            shutil.rmtree(final, ignore_errors=True)  # damaged: build it again below
        else:
            _refuse_skipped_when_strict(cache, data)
            return cache
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CellaeError(f"cannot create the cache folder {cache_dir}: {exc.strerror}") from exc
    _remove_abandoned_builds(cache_dir)
    return _build(source, settings, data, key, final, progress)


def _refuse_skipped_when_strict(cache: CellCache, data: DataConfig) -> None:
    if data.strict and cache.meta["skipped"]:
        first = cache.meta["skipped"][0]
        raise CellaeError(
            f"{data.source}: {first['file']}: {first['reason']} "
            f"(--strict stops at the first bad file; {len(cache.meta['skipped'])} in all)"
        )


def _remove_abandoned_builds(cache_dir: Path) -> None:
    """Delete temporary folders of builds whose process is gone (killed, or the machine died).

    A cache folder may be shared by several machines (a cluster's file system): a process
    id means something only on the machine that named the folder, so another machine's
    build is left alone until it has not changed for a day.
    """
    here = socket.gethostname()
    for path in cache_dir.glob(f"{TEMP_PREFIX}*"):
        parts = path.name[len(TEMP_PREFIX):].split("-", 3)
        try:
            pid = int(parts[1])
        except (IndexError, ValueError):
            continue
        host = parts[3] if len(parts) == 4 else here  # older cellae named no machine
        if host == here:
            abandoned = not process_alive(pid)
        else:
            abandoned = _untouched_for(path, FOREIGN_BUILD_SECONDS)
        if abandoned:
            shutil.rmtree(path, ignore_errors=True)


def _untouched_for(path: Path, seconds: float) -> bool:
    """Whether nothing in ``path`` (one level deep) changed in the last ``seconds``."""
    try:
        times = [path.stat().st_mtime] + [child.stat().st_mtime for child in path.iterdir()]
    except OSError:
        return False  # gone or unreadable meanwhile: not ours to judge
    return time.time() - max(times) > seconds


def _workers(requested: int, n_images: int) -> int:
    available = available_cores()
    if requested > available:
        # more decoding processes than cores only share them, each with its own memory
        print(f"data.workers is {requested} but this machine gives {available} cores; "
              f"using {available}", file=sys.stderr, flush=True)
    workers = min(requested, available) or available
    return 1 if n_images < IN_PROCESS_LIMIT else max(1, workers)


# -- the work of one image, in this process or a worker

_State = tuple[Source, PreprocessSettings, ChannelPlan, "_RowFile", "_RowFile"]
# what one image's work reports: its index, why it was skipped (or None), and for the kept
# channels the pixels below / above the scaling limits (C, 2) out of how many
_Outcome = tuple[int, "str | None", np.ndarray | None, int]
# a worker process's state, set once as it starts; the in-process path passes its own
_WORKER_STATE: _State | None = None


def _init_worker(handed: Path, settings: PreprocessSettings, plan: ChannelPlan,
                 images: _RowFile, masks: _RowFile) -> None:
    global _WORKER_STATE
    with handed.open("rb") as handle:
        source = pickle.load(handle)
    _WORKER_STATE = (source, settings, plan, images, masks)


def _prepare_in_worker(index: int) -> _Outcome:
    assert _WORKER_STATE is not None
    return _prepare_one(_WORKER_STATE, index)


def _prepare_one(state: _State, index: int) -> _Outcome:
    """Preprocess image ``index`` and write its rows in place: (index, None, clipped, counted),
    or (index, the reason it was skipped, None, 0). Rows go straight into the files, so the
    16 KB of each image (at 64 px) never travels back to the parent through a pipe."""
    source, settings, plan, images, masks = state
    try:
        inside = source.load_mask(index)
        pixels, clipped = plan.apply(source.load(index), inside)
    except BadImage as exc:
        return index, str(exc), None, 0
    counted = int(inside.sum()) if inside is not None else pixels.shape[0] * pixels.shape[1]
    image, mask = preprocess(pixels, settings, inside)
    images.write(index, image)
    masks.write(index, mask)
    return index, None, clipped, counted


def _results(source: Source, settings: PreprocessSettings, plan: ChannelPlan, images: _RowFile,
             masks: _RowFile, workers: int) -> Iterator[_Outcome]:
    """Each image's outcome in index order, from a pool of processes or from this one.

    The files are opened here before any row is written and synced when all are, so that a
    write the workers' file system failed late (a full quota on NFS, reported only at the
    flush) fails the build here, instead of leaving rows of zeros in a cache that looks whole.
    """
    images.open()
    masks.open()
    try:
        if workers == 1:
            yield from map(partial(_prepare_one, (source, settings, plan, images, masks)),
                           range(len(source)))
        else:
            yield from _pool_results(source, settings, plan, images, masks, workers)
        images.sync()
        masks.sync()
    finally:
        images.close()
        masks.close()


def _start_method() -> str:
    """How decoding workers start: "fork" on Linux in a process that has not loaded torch,
    "spawn" elsewhere.

    A forked worker starts with this process's modules already imported: on 2 cores the
    sample's cold build (``cellae data prepare``) took 3.7-3.9 s with spawned workers, each
    importing numpy, Pillow and SciPy (0.4 s) before its first image, and 3.5-3.7 s forked,
    whose first image is done 0.09 s after the fork instead of 0.53 s.
    Not once torch is loaded: a child forked from a process whose OpenMP threads have run
    can hang. Not on macOS, where system frameworks do not survive a fork.
    """
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        return "fork"
    return "spawn"


def _pool_results(source: Source, settings: PreprocessSettings, plan: ChannelPlan,
                  images: _RowFile, masks: _RowFile, workers: int) -> Iterator[_Outcome]:
    context = multiprocessing.get_context(_start_method())
    # The source goes to the workers through a file, pickled once: pickled into each worker's
    # start-up arguments, a large set's file list was copied once per worker and kept by the
    # pool for its whole life (20 MB of the parent's 80 MB peak at 45,000 images).
    handed = images.path.with_name("source.pickle")
    with handed.open("wb") as handle:
        pickle.dump(source, handle, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns on any fork of a process with threads, here numpy's idle
            # BLAS threads: the child starts with none, and preprocessing makes no BLAS call
            warnings.filterwarnings("ignore", message=".*multi-threaded.*fork",
                                    category=DeprecationWarning)
            pool = context.Pool(workers, initializer=_init_worker,
                                initargs=(handed, settings, plan, images, masks))
        with pool:
            yield from pool.imap(_prepare_in_worker, range(len(source)), chunksize=CHUNK)
    finally:
        handed.unlink(missing_ok=True)  # not part of the cache


def _build(source: Source, settings: PreprocessSettings, data: DataConfig, key: str,
           final: Path, progress: bool) -> CellCache:
    n = len(source)
    size = settings.image_size
    plan = make_plan(source, settings.color, settings.channels, settings.intensity,
                     settings.percentiles)
    channels = 1 if settings.color == "gray" else len(plan.indices)
    workers = _workers(data.workers, n)
    temp = final.parent / (f"{TEMP_PREFIX}{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}-"
                           f"{socket.gethostname()}")
    temp.mkdir()
    started = time.perf_counter()
    try:
        # each image's rows are written at its own place in the files, so memory stays flat
        # at any size; the rows of skipped images are squeezed out at the end
        images = _RowFile(temp / "images.npy", (n, channels, size, size))
        masks = _RowFile(temp / "masks.npy", (n, size, size))
        read = np.ones(n, dtype=bool)
        clipped = np.zeros((len(plan.indices), 2), dtype=np.int64)
        counted = 0
        bar = _progress_bar(n, f"preparing {source.description}", progress)
        try:
            for index, reason, image_clipped, image_counted in _results(
                    source, settings, plan, images, masks, workers):
                bar.update(1)
                if reason is not None:
                    read[index] = False
                    source.skip(source.files[index], reason)
                else:
                    clipped += image_clipped
                    counted += image_counted
        finally:
            bar.close()
        kept_idx = np.flatnonzero(read)
        if not len(kept_idx):
            raise CellaeError(f"no image of {source.description} could be read")
        images.keep(kept_idx)
        masks.keep(kept_idx)
        labels = np.asarray(source.labels, dtype=np.int64)[kept_idx]
        np.save(temp / "labels.npy", labels)
        _save_strings(temp / "patients.npy", source.patients, kept_idx)
        _save_strings(temp / "files.npy", source.files, kept_idx)
        if source.metadata:
            np.savez(temp / METADATA_FILE, **{
                name: np.array([str(values[i]) for i in kept_idx.tolist()], dtype=str)
                for name, values in source.metadata.items()})
        channel_block = plan.summary(clipped, counted)
        warning = clipping_warning(channel_block)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        meta = {
            "key": key,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "source": source.info(),
            "preprocess": settings.to_dict(),
            "channels": channel_block,
            "class_names": source.class_names,
            "label_map": source.label_map,
            "n_images": len(kept_idx),
            "counts": {name: int((labels == i).sum()) for i, name in enumerate(source.class_names)},
            "patients": len({name for part in _slices(source.patients, kept_idx) for name in part}),
            "unmatched_patients": source.unmatched_patients,
            "skipped": [{"file": f, "reason": r} for f, r in source.skipped],
            "ignored": source.ignored,
            "workers": workers,
            "worker_start": _start_method() if workers > 1 else "in process",
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        write_atomic(temp / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        try:
            temp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(temp)  # another process finished the same cache first: use theirs
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        # a full disk or a folder gone read-only: the user can act on this, nothing else can
        raise CellaeError(
            f"cannot write the cache in {final.parent}: {exc.strerror or exc}; free space there "
            f"or set data.cache_dir (--cache-dir) to another folder"
        ) from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return open_cache(final)


class _RowFile:
    """An .npy file of uint8 rows, each written at its index by whichever process made it.

    The file is made at full size first (sparse, so no disk is used before rows arrive);
    :meth:`keep` then squeezes out the rows of skipped images and corrects the header's count.
    Rows go through ``os.pwrite``, not a memory map, which would count every row written as
    the process's resident memory.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path, self.shape = path, shape
        self.row_bytes = int(np.prod(shape[1:]))
        header = _npy_header(shape)
        self.header_size = len(header)
        with path.open("wb") as handle:
            handle.write(header)
            handle.truncate(self.header_size + shape[0] * self.row_bytes)
        self._fd: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_fd": None}  # each process opens the file for itself

    def open(self) -> None:
        """Open the file for writing in this process (a worker opens it at its first row)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_BINARY", 0))

    def write(self, index: int, row: np.ndarray) -> None:
        data = np.ascontiguousarray(row, dtype=np.uint8).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"a row of {len(data)} bytes for rows of {self.row_bytes}")
        self.open()
        assert self._fd is not None
        offset = self.header_size + index * self.row_bytes
        if hasattr(os, "pwrite"):
            os.pwrite(self._fd, data, offset)
        else:  # Windows: each process has its own descriptor, so seeking it is safe
            os.lseek(self._fd, offset, os.SEEK_SET)
            os.write(self._fd, data)

    def sync(self) -> None:
        """Flush every process's rows to the disk; raises what the file system refused."""
        assert self._fd is not None
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (ascending), moved up in place, and say so in the header."""
        self.close()
        if len(rows) == self.shape[0]:
            return
        header = _npy_header((len(rows), *self.shape[1:]))
        with self.path.open("r+b") as handle:
            for target, row in enumerate(rows.tolist()):
                if row != target:
                    handle.seek(self.header_size + row * self.row_bytes)
                    data = handle.read(self.row_bytes)
                    handle.seek(self.header_size + target * self.row_bytes)
                    handle.write(data)
            handle.truncate(self.header_size + len(rows) * self.row_bytes)
            if len(header) == self.header_size:
                handle.seek(0)
                handle.write(header)
                return
        self._rewrite(header)

    def _rewrite(self, header: bytes) -> None:
        """Copy the rows under a header of another length (rare: the count lost digits)."""
        temp = self.path.with_suffix(".rewrite")
        with self.path.open("rb") as old, temp.open("wb") as new:
            old.seek(self.header_size)
            new.write(header)
            shutil.copyfileobj(old, new, 1 << 20)
        os.replace(temp, self.path)


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    )
    return buffer.getvalue()


def _save_strings(path: Path, strings: Sequence[str], rows: np.ndarray) -> None:
    """Save ``strings[rows]`` as the .npy of a numpy str array, a slice of rows at a time.

    ``np.save(np.array(names))`` held all of them at four bytes a character at once: 5 MB of
    the builder's 13 MB growth at 45,000 cells, more with the NIH set's long names.
    """
    width = max((len(name) for part in _slices(strings, rows) for name in part), default=1)
    dtype = np.dtype((np.str_, max(width, 1)))
    with path.open("wb") as handle:
        handle.write(_npy_header((len(rows),), dtype.str))
        for part in _slices(strings, rows):
            handle.write(np.array(part, dtype=dtype).tobytes())


def _slices(strings: Sequence[str], rows: np.ndarray) -> Iterator[list[str]]:
    for start in range(0, len(rows), STRING_SLICE):
        # str(): a plug-in source may name its patients by number, as np.array(dtype=str) took
        yield [str(strings[i]) for i in rows[start : start + STRING_SLICE].tolist()]


class _PlainProgress:
    """Off a terminal, a line now and then in place of a bar: a build of a large set takes a
    while, and a log that stays silent meanwhile looks like a hung process. A build done
    within the first interval says nothing."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.shown = total, 0, 0
        self.started = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if time.perf_counter() - self.last >= PLAIN_PROGRESS_SECONDS:
            self._line()

    def close(self) -> None:
        if self.shown and self.shown != self.done:
            self._line()  # where it ended, when it said where it was

    def _line(self) -> None:
        self.last = time.perf_counter()
        self.shown = self.done
        print(f"cache: {self.done:,} of {self.total:,} images "
              f"({100 * self.done // max(1, self.total)}%), {self.last - self.started:.0f} s",
              file=sys.stderr, flush=True)


def _progress_bar(total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return _PlainProgress(total)
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, smoothing=0.1)
