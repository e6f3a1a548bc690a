"""Where cell images come from: one module per kind of source, chosen by what ``data.source`` names.

Built in: ``'synthetic'``, a ``.csv`` listing files and labels, a ``.zip`` of class folders,
and a folder of class folders. A new kind is a :class:`Source` subclass in a module of its
own, registered with :func:`register_source`: a module of this package is found on its own,
one outside it once imported or named by an entry point in the group ``cellae.sources``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TypeVar

from cellae.data.sources.base import FileSource, Sample, Source
from cellae.errors import CellaeError
from cellae.registry import Registry
from cellae.sections import DataConfig

__all__ = ["SOURCES", "FileSource", "Sample", "Source", "open_source", "register_source"]

SOURCES: Registry[type[Source]] = Registry(
    "sources", __name__, "data.source", "kind",
    is_plugin=lambda item: isinstance(item, type) and issubclass(item, Source),
)

_SourceClass = TypeVar("_SourceClass", bound=type[Source])


def register_source(source: _SourceClass) -> _SourceClass:
    """Decorator: let :func:`open_source` use ``source`` for the specs it accepts.

    Sources are asked by name, a fallback (the folder source) after all others, so a
    source's ``accepts`` must claim only specs no other source claims. Registering a class again changes
    nothing; two kinds of one name are a bug.
    """
    if not (isinstance(source, type) and issubclass(source, Source)) or inspect.isabstract(source):
        raise TypeError(f"{source!r} is not a concrete subclass of cellae.data.sources.Source")
    return SOURCES.register(source)


def open_source(spec: str | Path | DataConfig) -> Source:
    """The source that ``data.source`` names, listed and ready to read.

    A bare spec (a path or ``'synthetic'``) opens with the default data settings, as
    ``cellae data inspect`` and tests do; a :class:`DataConfig` brings its own (``strict``,
    the synthetic generator's settings).
    """
    data = spec if isinstance(spec, DataConfig) else DataConfig(source=str(spec))
    ordered = sorted((SOURCES.get(name) for name in SOURCES.names()),
                     key=lambda source: source.fallback)
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
