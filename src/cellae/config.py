"""Typed run configuration: YAML in, dotted overrides, validation with messages that say what is allowed.

A config has six sections: ``name``, ``seed``, ``data``, ``model``, ``train`` and ``eval``.
Each section is a dataclass; :func:`load_config` builds them from YAML, applies
``--set key=value`` overrides and rejects unknown keys, wrong types and impossible values
with a :class:`~cellae.errors.CellaeError` that names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import yaml

from cellae.errors import CellaeError
from cellae.registry import absolute_spec

SYNTHETIC = "synthetic"
IMAGE_SIZES = (32, 64, 128)
# each data choice is spelled once, here; the data package reads its allowed values from these
ColorMode = Literal["rgb", "gray"]
ResizeMode = Literal["stretch", "pad"]
BackgroundMode = Literal["keep", "fill_mean"]
NormalizeMode = Literal["none", "per_cell"]
AugmentMode = Literal["none", "dihedral"]
SplitMode = Literal["patient", "image"]


# Bounds on sizes: far beyond any model of these images, and short of a value that would
# allocate petabytes (model.latent_dim=10**12) or a run folder name the file system refuses.
MAX_LATENT_DIM = 4096
MAX_WIDTH = 4096
MAX_STAGES = 7
MAX_NAME_LENGTH = 100
MAX_FOLDS = 100


@dataclass
class SyntheticConfig:
    """The built-in synthetic cell generator."""

    n_images: int = 2000
    n_patients: int = 20
    infected_fraction: float = 0.4
    seed: int = 0


@dataclass
class DataConfig:
    """Where images come from and how they are turned into model input."""

    source: str = SYNTHETIC
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    image_size: int = 64
    color: ColorMode = "rgb"
    resize: ResizeMode = "stretch"
    background: BackgroundMode = "keep"
    # per_cell: each cell's interior standardised per channel, so the stain's shade is gone
    normalize: NormalizeMode = "none"
    split: SplitMode = "patient"
    test_fraction: float = 0.2
    # k-fold by patient: 0 keeps the single split of test_fraction; k > 1 puts fold `fold` of
    # k patient groups in test (the same groups whatever the seed, so seeds can be compared)
    folds: int = 0
    fold: int = 0
    # classes the model trains on (empty: all); an anomaly model trains on the healthy class
    train_classes: list[str] = field(default_factory=list)
    cache_dir: str = ".cellae-cache"
    strict: bool = False
    workers: int = 0


@dataclass
class LossConfig:
    """A reconstruction loss: ``name`` picks a registered loss, which may add parameters of its own.

    In YAML either a name (``loss: mse``) or a section (``loss: {name: masked_mse,
    background_weight: 0.2}``).
    """

    name: str = "mse"
    name_key: ClassVar[str] = "name"

    @classmethod
    def plugin_class(cls, values: dict[str, Any], key: str) -> tuple[type, str]:
        from cellae.models.losses import LOSSES

        name = values.get("name", cls.name)
        if not isinstance(name, str):
            raise CellaeError(f"config key '{key}.name' must be a string, got {name!r}")
        return LOSSES.get(name), f"the loss '{name}'"

    def validate(self, key: str) -> None:
        """Reject impossible parameter values; a loss with parameters extends this."""

    def __post_init__(self) -> None:
        _upgrade_fields(self)


@dataclass
class ModelConfig:
    """What every family takes: its name, the latent size, the convolutional body and the loss.

    A family (``model.family``) extends this with keys of its own (an AE's ``latent_l1``, a
    VAE's ``beta``); a key no part of the chosen family takes is an error.
    """

    family: str = "ae"
    latent_dim: int = 20
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    norm: str = "batch"
    activation: str = "leaky_relu"
    # how the decoder doubles the side: resize then convolve, or transposed convolutions
    upsample: str = "resize"
    loss: LossConfig = field(default_factory=LossConfig)

    @classmethod
    def plugin_class(cls, values: dict[str, Any], key: str) -> tuple[type, str]:
        from cellae.models import FAMILIES

        family = values.get("family", cls.family)
        if not isinstance(family, str):
            raise CellaeError(f"config key '{key}.family' must be a string, got {family!r}")
        return FAMILIES.get(family).config_class, f"the '{family}' family"

    def validate(self, key: str = "model") -> None:
        """Reject impossible values; a family with keys of its own extends this."""
        from cellae.models.blocks import ACTIVATIONS, NORMS, UPSAMPLERS

        check(1 <= self.latent_dim <= MAX_LATENT_DIM, f"{key}.latent_dim",
              f"a positive integer up to {MAX_LATENT_DIM:,}", self.latent_dim)
        check(
            2 <= len(self.widths) <= MAX_STAGES and all(1 <= w <= MAX_WIDTH for w in self.widths),
            f"{key}.widths",
            f"a list of 2 to {MAX_STAGES} channel counts, each 1 to {MAX_WIDTH:,}",
            self.widths,
        )
        check(self.norm in NORMS, f"{key}.norm", _one_of(NORMS), self.norm)
        check(self.activation in ACTIVATIONS, f"{key}.activation", _one_of(ACTIVATIONS),
              self.activation)
        check(self.upsample in UPSAMPLERS, f"{key}.upsample", _one_of(UPSAMPLERS), self.upsample)
        if self.norm == "group":
            check(all(w % 8 == 0 for w in self.widths), f"{key}.widths",
                  "multiples of 8 when model.norm is 'group'", self.widths)
        self.loss.validate(f"{key}.loss")

    def __post_init__(self) -> None:
        _upgrade_fields(self)


def _one_of(names: Any) -> str:
    return "one of " + ", ".join(repr(n) for n in names)


def _upgrade_fields(section: Any) -> None:
    """Give plug-in fields built in code (``ModelConfig(loss="bce")``) their plug-in's own class."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, base = getattr(section, f.name), hints[f.name]
        if hasattr(base, "plugin_class") and (isinstance(value, str) or type(value) is base):
            setattr(section, f.name, _coerce(value, base, f.name))


def _as_section(value: Any, base: type) -> Any:
    """A plug-in named by a string (``loss: mse``) as the section it stands for."""
    if isinstance(value, str) and getattr(base, "name_key", None):
        return {base.name_key: value}
    return value


def _shallow(section: Any) -> dict[str, Any]:
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
    return _build(cls, values, key, owner=owner)


def model_config(**values: Any) -> ModelConfig:
    """A validated model section from keyword values, e.g. ``model_config(family="vae", beta=4)``."""
    config = plugin_section(ModelConfig, values, "model")
    config.validate()
    return config


@dataclass
class TrainConfig:
    """The optimisation loop and the devices it runs on."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Union[int, str] = "auto"  # noqa: UP007 - read by the validator at run time
    # machines taking part; each runs train.devices processes (see docs/scaling.md)
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"] = "auto"
    # auto: bf16-mixed on a CUDA GPU that has bfloat16, 32-true everywhere else
    precision: Literal["auto", "32-true", "32", "16-mixed", "bf16-mixed"] = "auto"
    num_workers: int = 0
    deterministic: bool = True
    tensorboard: bool = False
    data_on_device: Literal["auto", "always", "never"] = "auto"
    # dihedral: each training image turned or mirrored at random (cells have no orientation)
    augment: AugmentMode = "none"
    # memory layout of weights and images; "auto" is channels-last on the CPU and CUDA, where it
    # is faster (a speed setting: the values are the same up to the order of float sums)
    channels_last: Literal["auto", "always", "never"] = "auto"
    # torch.compile the model; a model or machine it fails on trains uncompiled, with a warning
    compile: bool = False


@dataclass
class EvalConfig:
    """What is computed and drawn after training."""

    enabled: bool = True
    tsne_max_points: int = 3000
    tsne_perplexity: float = 30.0
    knn_k: int = 15
    n_reconstructions: int = 8
    n_samples: int = 32
    n_traversal_dims: int = 6
    # latent metrics, by registered name or module:NAME (see cellae.evaluation.latent_metrics)
    metrics: list[str] = field(default_factory=lambda: ["linear_probe", "knn", "silhouette"])


@dataclass
class Config:
    """A whole run: what to train on, what to train, how, and what to measure."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if type(self.model) is ModelConfig:
            self.model = plugin_section(ModelConfig, _shallow(self.model), "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- building from dicts


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


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise naming ``key`` and what is allowed."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        value = _as_section(value, tp)
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            value = _shallow(value)
        if not isinstance(value, dict):
            raise CellaeError(f"config key '{key}' must be a section (a mapping), got {value!r}")
        if hasattr(tp, "plugin_class"):
            return plugin_section(tp, value, key)
        return _build(tp, value, key)
    if origin is Literal:
        if value in get_args(tp) and type(value) is type(get_args(tp)[0]):
            return value
        raise CellaeError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except CellaeError:
                continue
        raise CellaeError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise CellaeError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
        (item_type,) = get_args(tp)
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number it plainly is
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    raise CellaeError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "", owner: str = "") -> Any:
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
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def check(condition: bool, key: str, allowed: str, value: Any) -> None:
    if not condition:
        raise CellaeError(f"config key '{key}' must be {allowed}, got {value!r}")


def validate_data(d: DataConfig, check_paths: bool = True, prefix: str = "data") -> DataConfig:
    """Reject impossible data settings; shared by the run config and ``cellae data prepare``."""
    check(d.image_size in IMAGE_SIZES, f"{prefix}.image_size", f"one of {IMAGE_SIZES}", d.image_size)
    check(0.0 < d.test_fraction < 1.0, f"{prefix}.test_fraction", "between 0 and 1", d.test_fraction)
    check(d.workers >= 0, f"{prefix}.workers", "0 (all cores) or more", d.workers)
    if d.normalize == "per_cell":
        # the standardised interior needs the padding and the blended rim painted over first
        check(d.background == "fill_mean", f"{prefix}.background",
              "'fill_mean' when data.normalize is 'per_cell'", d.background)
    check(d.folds == 0 or 2 <= d.folds <= MAX_FOLDS, f"{prefix}.folds",
          f"0 (one split by test_fraction) or 2 to {MAX_FOLDS}", d.folds)
    check(0 <= d.fold < max(d.folds, 1), f"{prefix}.fold",
          f"a fold number from 0 to {max(d.folds, 1) - 1}", d.fold)
    check(len({c.casefold() for c in d.train_classes}) == len(d.train_classes),
          f"{prefix}.train_classes", "a list without repeats (in any case)", d.train_classes)
    s = d.synthetic
    check(s.n_images >= 10, f"{prefix}.synthetic.n_images", "at least 10", s.n_images)
    check(s.n_patients >= 2, f"{prefix}.synthetic.n_patients", "at least 2", s.n_patients)
    check(
        0.0 < s.infected_fraction < 1.0,
        f"{prefix}.synthetic.infected_fraction",
        "between 0 and 1",
        s.infected_fraction,
    )
    if check_paths and d.source != SYNTHETIC and not Path(d.source).expanduser().exists():
        # the malaria configs' default: the set is one command away
        fetch = ("; to fetch the NIH set: cellae data download --to data, then "
                 f"--set {prefix}.source=data/cell_images.zip"
                 if Path(d.source).name in ("cell_images", "cell_images.zip") else "")
        raise CellaeError(
            f"{prefix}.source: no such file or folder: {d.source} "
            f"(give a class folder, a zip, a CSV of files and labels, or '{SYNTHETIC}'){fetch}"
        )
    return d


def validate(config: Config, check_paths: bool = True) -> Config:
    """Reject values that are well typed but impossible; return ``config`` unchanged."""
    d, m, t, e = config.data, config.model, config.train, config.eval
    check(bool(config.name.strip()) and len(config.name) <= MAX_NAME_LENGTH, "name",
          f"a non-empty string of at most {MAX_NAME_LENGTH} characters", config.name[:40])
    check(0 <= config.seed < 2**32, "seed", "an integer from 0 to 2**32 - 1", config.seed)
    validate_data(d, check_paths=check_paths)
    m.validate()
    check(
        d.image_size // 2 ** len(m.widths) >= 1,
        "model.widths",
        f"short enough that {d.image_size}px halves {len(m.widths)} times",
        m.widths,
    )
    check(t.epochs >= 1, "train.epochs", "a positive integer", t.epochs)
    check(t.batch_size >= 1, "train.batch_size", "a positive integer", t.batch_size)
    check(t.lr > 0, "train.lr", "a positive number", t.lr)
    check(t.weight_decay >= 0, "train.weight_decay", "0 or more", t.weight_decay)
    check(t.grad_clip >= 0, "train.grad_clip", "0 (off) or more", t.grad_clip)
    check(t.num_workers >= 0, "train.num_workers", "0 or more", t.num_workers)
    check(
        t.devices == "auto" or (isinstance(t.devices, int) and t.devices >= 1),
        "train.devices",
        "'auto' or a positive integer",
        t.devices,
    )
    check(t.num_nodes >= 1, "train.num_nodes", "a positive integer", t.num_nodes)
    check(e.tsne_max_points >= 10, "eval.tsne_max_points", "at least 10", e.tsne_max_points)
    check(e.tsne_perplexity > 0, "eval.tsne_perplexity", "a positive number", e.tsne_perplexity)
    check(e.knn_k >= 1, "eval.knn_k", "a positive integer", e.knn_k)
    check(e.n_reconstructions >= 1, "eval.n_reconstructions", "a positive integer", e.n_reconstructions)
    check(e.n_samples >= 1, "eval.n_samples", "a positive integer", e.n_samples)
    check(e.n_traversal_dims >= 1, "eval.n_traversal_dims", "a positive integer", e.n_traversal_dims)
    check(len(set(e.metrics)) == len(e.metrics), "eval.metrics", "a list without repeats", e.metrics)
    from cellae.evaluation.latent_metrics import METRICS

    for name in e.metrics:
        METRICS.get(name)
    return config


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


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict; a key that the config does not have is an error.

    Keys inside a plug-in section (``model``, whose keys depend on the family) are checked once,
    when the section is built, by the plug-in that takes them.
    """
    values = copy.deepcopy(values)
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        known: Any = _section_keys(Config)
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
                    target[part] = _as_section(target[part], LossConfig)
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise CellaeError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")
        target[parts[-1]] = value
    return values


# cellae 0.1.0 wrote one flat model section: every family's keys (each family ignored the others')
# and the masked losses' background_weight
_FLAT_MODEL_KEYS = ("latent_l1", "beta", "kl_warmup_epochs")


def from_older_cellae(values: dict[str, Any], flat_model: bool | None = None) -> dict[str, Any]:
    """A config written by cellae 0.1.0 in today's form, meaning what it meant then.

    Its model section is recognised by ``background_weight`` (or named flat by ``flat_model``,
    for a sweep of that version being resumed): keys its family ignored are dropped, and
    ``background_weight`` moves into the loss that used it.
    """
    model = values.get("model")
    if not isinstance(model, dict):
        return values
    if flat_model is None:
        flat_model = "background_weight" in model
    if not flat_model:
        return values
    from cellae.models import FAMILIES

    model = dict(model)
    model.setdefault("upsample", "transpose")  # the only decoder cellae 0.1.0 had
    weight = model.pop("background_weight", None)
    if isinstance(model.get("loss"), str) and model["loss"].startswith("masked_") and weight is not None:
        model["loss"] = {"name": model["loss"], "background_weight": weight}
    family = model.get("family", ModelConfig.family)
    taken = {f.name for f in dataclasses.fields(FAMILIES.get(str(family)).config_class)}
    for key in _FLAT_MODEL_KEYS:
        if key not in taken:
            model.pop(key, None)
    return {**values, "model": model}


def config_from_dict(
    values: dict[str, Any], overrides: list[str] | None = None, check_paths: bool = True
) -> Config:
    values = apply_overrides(dict(values), list(overrides or []))
    return validate(_build(Config, values), check_paths=check_paths)


# A config or sweep file is a few hundred bytes; these bounds keep a hostile one (a file of
# gigabytes, nested aliases that stand for a billion values) from hanging cellae or eating memory.
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
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CellaeError(f"config file {path} is not valid YAML{where}: {problem}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CellaeError(f"config file {path} must hold a mapping of sections, not {type(values).__name__}")
    return values


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, check_paths: bool = True
) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides.

    A relative ``data.source`` is read relative to the working directory, the way a user
    types it on the command line.
    """
    values = read_yaml(path) if path is not None else {}
    return config_from_dict(values, overrides, check_paths=check_paths)
