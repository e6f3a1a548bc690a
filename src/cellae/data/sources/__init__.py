"""Where cell images come from: one module per kind of source, chosen by what ``data.source`` names.

Built in: ``'synthetic'``, a ``.csv`` listing files and labels, a ``.zip`` of class folders,
and a folder of class folders. A new kind is a :class:`Source` subclass in a module of its
own plus one :func:`register_source` call, here for a built-in or anywhere for a plug-in.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TypeVar

from cellae.config import DataConfig
from cellae.data.sources.base import FileSource, Sample, Source
from cellae.data.sources.csv_source import CsvSource
from cellae.data.sources.folder_source import FolderSource
from cellae.data.sources.synthetic_source import SyntheticSource
from cellae.data.sources.zip_source import ZipSource
from cellae.errors import CellaeError

__all__ = ["FileSource", "Sample", "Source", "open_source", "register_source"]

_SourceClass = TypeVar("_SourceClass", bound=type[Source])

_SOURCES: list[type[Source]] = []


def register_source(source: _SourceClass) -> _SourceClass:
    """Make :func:`open_source` use ``source`` for the specs it accepts; usable as a decorator.

    Sources are asked in the order they were registered, fallbacks (the folder source) after
    all others. Registering a class again changes nothing; two kinds of one name are a bug.
    """
    if not (isinstance(source, type) and issubclass(source, Source)) or inspect.isabstract(source):
        raise TypeError(f"{source!r} is not a concrete subclass of cellae.data.sources.Source")
    for known in _SOURCES:
        if known.kind == source.kind and known is not source:
            raise ValueError(f"two sources are of kind {source.kind!r}: {known} and {source}")
    if source not in _SOURCES:
        _SOURCES.append(source)
    return source


def open_source(spec: str | Path | DataConfig) -> Source:
    """The source that ``data.source`` names, listed and ready to read.

    A bare spec (a path or ``'synthetic'``) opens with the default data settings, as
    ``cellae data inspect`` and tests do; a :class:`DataConfig` brings its own (``strict``,
    the synthetic generator's settings).
    """
    data = spec if isinstance(spec, DataConfig) else DataConfig(source=str(spec))
    ordered = sorted(_SOURCES, key=lambda source: source.fallback)
    for source in ordered:
        if source.accepts(data.source):
            return source(data)
    path = Path(data.source).expanduser()
    if not path.exists():
        raise CellaeError(f"no such file or folder: {path}")
    choices = [source.spec_help for source in ordered]
    raise CellaeError(
        f"cellae cannot read {path}: give {', '.join(choices[:-1])} or {choices[-1]}"
    )


for _builtin in (SyntheticSource, CsvSource, ZipSource, FolderSource):
    register_source(_builtin)
