"""Typed config sections from plain values: YAML in, dotted overrides, messages that name the key.

Generic over dataclasses: a section is a dataclass whose fields carry types (int, float, str,
bool, Literal, unions, lists, nested sections); :func:`build_section` builds one from a mapping
and refuses unknown keys and wrong types with a :class:`~cellae.errors.CellaeError` that names
the dotted key and what is allowed. A *plug-in section* (a family's model section, a loss) is a
dataclass with a ``plugin_class(values, key)`` classmethod that says which subclass the values
name; its owner (the models package) answers it, so this module knows no plug-in.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from cellae.errors import CellaeError, first_line
from cellae.registry import absolute_spec

# the key that names a plug-in given as a bare string (``loss: mse`` is ``loss: {name: mse}``)
NAME_KEY = "name"


def one_of(names: Any) -> str:
    return "one of " + ", ".join(repr(n) for n in names)


def upgrade_plugin_fields(section: Any) -> None:
    """Give plug-in fields built in code (``ModelConfig(loss="bce")``) their plug-in's own class."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, base = getattr(section, f.name), hints[f.name]
        if hasattr(base, "plugin_class") and (isinstance(value, str) or type(value) is base):
            setattr(section, f.name, coerce(value, base, f.name))


def _as_section(value: Any, base: type) -> Any:
    """A plug-in named by a string (``loss: mse``) as the section it stands for."""
    if isinstance(value, str) and getattr(base, "name_key", None):
        return {base.name_key: value}
    return value


def fields_of(section: Any) -> dict[str, Any]:
    """A section's fields as a shallow mapping (nested sections left as they are)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def plugin_section(base: type, values: dict[str, Any], key: str) -> Any:
    """``values`` built as the class of the plug-in they name (a family's or a loss's config).

    A plug-in named by a relative ``file.py:Name`` is recorded by its absolute path, so that a
    run folder finds it again from any working directory.
    """
    cls, owner = base.plugin_class(values, key)
    spec_key = getattr(base, "name_key", None) or "family"
    if isinstance(values.get(spec_key), str):
        values = {**values, spec_key: absolute_spec(values[spec_key])}
    return build_section(cls, values, key, owner=owner)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise naming ``key`` and what is allowed."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        value = _as_section(value, tp)
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            value = fields_of(value)
        if not isinstance(value, dict):
            raise CellaeError(f"config key '{key}' must be a section (a mapping), got {value!r}")
        if hasattr(tp, "plugin_class"):
            return plugin_section(tp, value, key)
        return build_section(tp, value, key)
    if origin is Literal:
        if value in get_args(tp) and type(value) is type(get_args(tp)[0]):
            return value
        raise CellaeError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return coerce(value, arg, key)
            except CellaeError:
                continue
        raise CellaeError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise CellaeError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
        (item_type,) = get_args(tp)
        return [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number it plainly is
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            # no setting of cellae means anything at infinity (lr, free_bits, beta ...), and a
            # NaN compares false with every bound a validator checks
            if not math.isfinite(number):
                raise CellaeError(f"config key '{key}' must be a finite number, got {value!r}")
            return number
    elif tp is str and isinstance(value, str):
        return value
    raise CellaeError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")


def build_section(cls: type, values: dict[str, Any], prefix: str = "", owner: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            if owner:
                raise CellaeError(
                    f"config key '{dotted}' is not taken by {owner}; it takes: "
                    f"{', '.join(sorted(names))}"
                )
            raise CellaeError(
                f"unknown config key '{dotted}'; allowed here: {', '.join(sorted(names))}"
            )
        kwargs[key] = coerce(value, hints[key], dotted)
    return cls(**kwargs)


def check(condition: bool, key: str, allowed: str, value: Any) -> None:
    if not condition:
        raise CellaeError(f"config key '{key}' must be {allowed}, got {value!r}")


# ---------------------------------------------------------------- overrides and files


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value``; the value is read as YAML so ``3``, ``true`` and ``[1, 2]`` work."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise CellaeError(f"override '{text}' must look like key.subkey=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


_PLUGIN_SECTION = "plug-in section"


def _section_keys(cls: type) -> dict[str, Any]:
    """Key -> sub-keys (a dict), ``_PLUGIN_SECTION`` (checked by its plug-in when built) or None."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if hasattr(tp, "plugin_class"):
            keys[f.name] = _PLUGIN_SECTION
        elif dataclasses.is_dataclass(tp):
            keys[f.name] = _section_keys(tp)
        else:
            keys[f.name] = None
    return keys


def apply_overrides(values: dict[str, Any], overrides: list[str], root: type) -> dict[str, Any]:
    """Set each dotted key in a nested dict; a key that ``root`` (a section) does not have is
    an error.

    Keys inside a plug-in section (``model``, whose keys depend on the family) are checked once,
    when the section is built, by the plug-in that takes them.
    """
    values = copy.deepcopy(values)
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        known: Any = _section_keys(root)
        target = values
        for i, part in enumerate(parts):
            if isinstance(known, dict):
                if part not in known:
                    where = ".".join(parts[:i]) or "the top level"
                    raise CellaeError(
                        f"--set {key}: no config key '{key}' ({where} allows: {', '.join(sorted(known))})"
                    )
                known = known[part]
                if known is None and i < len(parts) - 1:
                    raise CellaeError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
            if i < len(parts) - 1:
                if isinstance(target.get(part), str):
                    # a plug-in named by a string (loss: mse) becomes its section to take a parameter
                    target[part] = {NAME_KEY: target[part]}
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise CellaeError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
        target[parts[-1]] = value
    return values


MAX_YAML_BYTES = 1 * 2**20
MAX_YAML_VALUES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping.

    PyYAML keeps the last of two equal keys, so a second ``train:`` section would silently
    drop the first.
    """

    def compose_mapping_node(self, anchor: Any) -> Any:
        # checked as written, once, before any merge (<<: *base) flattens keys into the node
        node = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key_node.value}' is given twice in one mapping",
                    key_node.start_mark)
            seen.add(key)
        return node


def _expanded_size(value: Any, known: dict[int, int]) -> int:
    """How many values ``value`` holds once every alias is written out, counted without
    writing them out (a shared subtree is counted once per use, from ``known``)."""
    if not isinstance(value, dict | list):
        return 1
    if id(value) in known:
        if known[id(value)] < 0:
            raise yaml.YAMLError("an alias refers to a value that contains it (a cycle)")
        return known[id(value)]
    known[id(value)] = -1
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    size = 1 + sum(_expanded_size(item, known) for item in items)
    known[id(value)] = size
    return size


def load_yaml(text: str) -> Any:
    """``text`` as YAML through :class:`_BoundedLoader`; raises ``yaml.YAMLError``, also when
    its aliases stand for more than ``MAX_YAML_VALUES`` values (every later step of cellae would
    walk them all)."""
    loader = _BoundedLoader(text)
    try:
        values = loader.get_single_data()
    except RecursionError as exc:
        raise yaml.YAMLError("it nests too deeply to be a config") from exc
    finally:
        loader.dispose()
    size = _expanded_size(values, {})
    if size > MAX_YAML_VALUES:
        raise yaml.YAMLError(f"it stands for {size:,} values once its aliases are written out; "
                             f"a config holds at most {MAX_YAML_VALUES:,}")
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CellaeError(f"config file not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise CellaeError(f"config file {path} is {path.stat().st_size:,} bytes; a config is at "
                          f"most {MAX_YAML_BYTES:,}")
    try:
        values = load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise CellaeError(f"config file {path} is not valid YAML{where}: {problem}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CellaeError(f"config file {path} must hold a mapping of sections, not {type(values).__name__}")
    return values

