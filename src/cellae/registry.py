"""Named plug-ins: model families, reconstruction losses and latent metrics.

A plug-in registers itself, under the name it carries, with :meth:`Registry.register`. The built-in ones are
the modules of one package, all imported the first time a name is looked up, so a new built-in
is one new file in that package. From outside cellae a plug-in is found three ways:

- a registered name, once the user's module is imported;
- an installed package's entry point in the group ``cellae.<kind>`` (``cellae.families``, ...);
- a spec ``module.path:Name`` or ``path/to/file.py:Name``, imported on demand (a relative file
  path, or a module beside it, is read from the working directory, as the user typed it).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Generic, TypeVar

from cellae.errors import CellaeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plug-in, with the built-ins of ``package`` loaded on first use."""

    def __init__(self, kind: str, package: str, config_key: str, name_attribute: str) -> None:
        self.kind = kind
        self.package = package
        self.config_key = config_key
        self.name_attribute = name_attribute
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
            self._items.setdefault(entry.name, entry.load())

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
            return _import_spec(spec, self.config_key)
        raise CellaeError(
            f"config key '{self.config_key}' must be one of {', '.join(map(repr, self.names()))} "
            f"(or module:Name for your own), got {spec!r}"
        )


def _import_spec(spec: str, config_key: str) -> object:
    where, _, attribute = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise CellaeError(f"config key '{config_key}': no such file {where}")
            module_name = f"cellae_user_{path.stem}_{abs(hash(str(path))):x}"
            module = sys.modules.get(module_name)
            if module is None:
                loaded = importlib.util.spec_from_file_location(module_name, path)
                assert loaded is not None and loaded.loader is not None
                module = importlib.util.module_from_spec(loaded)
                sys.modules[module_name] = module
                loaded.loader.exec_module(module)
        else:
            # the console script does not put the working directory on sys.path; `python -m` does
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(where)
    except ModuleNotFoundError as exc:
        raise CellaeError(f"config key '{config_key}': cannot import {where!r} ({exc})") from exc
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise CellaeError(f"config key '{config_key}': {where} has no {attribute!r}") from exc
