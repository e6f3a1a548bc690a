"""Named plug-ins: model families, reconstruction losses and latent metrics.

A plug-in registers itself, under the name it carries, with :meth:`Registry.register`. The built-in ones are
the modules of one package, all imported the first time a name is looked up, so a new built-in
is one new file in that package. From outside cellae a plug-in is found three ways:

- a registered name, once the user's module is imported;
- an installed package's entry point in the group ``cellae.<kind>`` (``cellae.families``, ...);
- a spec ``module.path:Name`` or ``path/to/file.py:Name``, imported on demand. A module is
  looked up from the working directory too; a relative file path is read from it and recorded
  as an absolute one (:func:`absolute_spec`), so that a run finds its plug-in from anywhere.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from cellae.errors import CellaeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plug-in, with the built-ins of ``package`` loaded on first use."""

    def __init__(self, kind: str, package: str, config_key: str, name_attribute: str,
                 is_plugin: Callable[[Any], bool]) -> None:
        self.kind = kind
        self.package = package
        self.config_key = config_key
        self.name_attribute = name_attribute
        # what a spec must point at: a name pointing at anything else is the user's mistake
        self.is_plugin = is_plugin
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, item: T) -> T:
        """Decorator: register ``item`` under its own name attribute; two of one name is a bug."""
        name = getattr(item, self.name_attribute)
        known = self._items.get(name)
        if known is not None and known is not item:
            raise ValueError(f"two {self.kind} plug-ins are named {name!r}: {known} and {item}")
        self._items[name] = item
        return item

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{module.name}")
        for entry in importlib.metadata.entry_points(group=f"cellae.{self.kind}"):
            try:
                self._items.setdefault(entry.name, entry.load())
            except Exception as exc:  # noqa: BLE001 - one broken package must not stop the rest
                warnings.warn(f"cellae: skipping the {self.kind} plug-in {entry.name!r} of an "
                              f"installed package: {exc}", stacklevel=2)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load_builtins()
        return sorted(self._items)

    def get(self, spec: str) -> T:
        """The plug-in named ``spec``, or the object a ``module:Name`` / ``file.py:Name`` spec points at."""
        self._load_builtins()
        if spec in self._items:
            return self._items[spec]
        if ":" in spec:
            item = _import_spec(spec, self.config_key)
            if not self.is_plugin(item):
                raise CellaeError(
                    f"config key '{self.config_key}': {spec} is not a cellae {self.kind} plug-in "
                    "(see docs/extending.md)"
                )
            return item
        raise CellaeError(
            f"config key '{self.config_key}' must be one of {', '.join(map(repr, self.names()))} "
            f"(or module:Name for your own), got {spec!r}"
        )


def absolute_spec(spec: str) -> str:
    """``file.py:Name`` with the file's absolute path; any other spec as it is."""
    where, colon, attribute = spec.rpartition(":")
    if not colon or not where.endswith(".py") or Path(where).is_absolute():
        return spec
    return f"{Path(where).expanduser().resolve()}:{attribute}"


def _import_spec(spec: str, config_key: str) -> object:
    where, _, attribute = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise CellaeError(f"config key '{config_key}': no such file {where}")
        # imported by its stem from its folder, so that worker processes (which inherit
        # sys.path) can import it again to unpickle what it defines
        folder, where = str(path.parent), path.stem
        if folder not in sys.path:
            sys.path.insert(0, folder)
    elif "" not in sys.path and str(Path.cwd()) not in sys.path:
        # the console script does not put the working directory on sys.path; `python -m` does
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(where)
    except ModuleNotFoundError as exc:
        raise CellaeError(f"config key '{config_key}': cannot import {where!r} ({exc})") from exc
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise CellaeError(f"config key '{config_key}': {where} has no {attribute!r}") from exc
