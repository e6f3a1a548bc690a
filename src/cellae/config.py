"""A whole run's configuration: its name and seed, and one section per stage.

``data``, ``train`` and ``eval`` are :mod:`cellae.sections`; ``model`` is the chosen family's
own section (:class:`~cellae.models.base.ModelConfig` or a subclass), built by the models
package. :func:`load_config` reads YAML (:mod:`cellae.typed_config`), applies ``--set
key=value`` overrides and rejects unknown keys, wrong types and impossible values with a
:class:`~cellae.errors.CellaeError` that names the key.

The names a config file's sections are built from are re-exported here, where plug-ins and
notebooks have always imported them (``from cellae.config import ModelConfig, check``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellae.evaluation.latent_metrics import check_metric_names
from cellae.models.base import ModelConfig, family_config_class, model_config
from cellae.models.losses import LossConfig
from cellae.sections import (
    IMAGE_SIZES,
    SYNTHETIC,
    AugmentMode,
    BackgroundMode,
    ColorMode,
    DataConfig,
    EvalConfig,
    NormalizeMode,
    ResizeMode,
    SplitMode,
    SyntheticConfig,
    TrainConfig,
    validate_data,
    validate_eval,
    validate_train,
)
from cellae.typed_config import (
    MAX_YAML_BYTES,
    build_section,
    check,
    fields_of,
    load_yaml,
    parse_override,
    plugin_section,
    read_yaml,
)
from cellae.typed_config import apply_overrides as _apply_overrides

__all__ = [
    "IMAGE_SIZES", "MAX_YAML_BYTES", "SYNTHETIC", "AugmentMode", "BackgroundMode", "ColorMode",
    "Config", "DataConfig", "EvalConfig", "LossConfig", "ModelConfig", "NormalizeMode",
    "ResizeMode", "SplitMode", "SyntheticConfig", "TrainConfig", "apply_overrides", "check",
    "config_from_dict", "from_older_cellae", "load_config", "load_yaml", "model_config",
    "parse_override", "read_yaml", "validate", "validate_data",
]

# a run folder's name is made of it; longer, some file systems refuse the folder
MAX_NAME_LENGTH = 100


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
            self.model = plugin_section(ModelConfig, fields_of(self.model), "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def validate(config: Config, check_paths: bool = True) -> Config:
    """Reject values that are well typed but impossible; return ``config`` unchanged."""
    d, m = config.data, config.model
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
    validate_train(config.train)
    validate_eval(config.eval)
    check_metric_names(config.eval.metrics)
    return config


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key of a run config's values; a key that the config does not have is an
    error. Keys inside a plug-in section (``model``, whose keys depend on the family) are
    checked once, when the section is built, by the plug-in that takes them."""
    return _apply_overrides(values, overrides, Config)


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
    model = dict(model)
    model.setdefault("upsample", "transpose")  # the only decoder cellae 0.1.0 had
    weight = model.pop("background_weight", None)
    if isinstance(model.get("loss"), str) and model["loss"].startswith("masked_") and weight is not None:
        model["loss"] = {"name": model["loss"], "background_weight": weight}
    family = model.get("family", ModelConfig.family)
    taken = {f.name for f in dataclasses.fields(family_config_class(str(family)))}
    for key in _FLAT_MODEL_KEYS:
        if key not in taken:
            model.pop(key, None)
    return {**values, "model": model}


def config_from_dict(
    values: dict[str, Any], overrides: list[str] | None = None, check_paths: bool = True
) -> Config:
    values = apply_overrides(dict(values), list(overrides or []))
    return validate(build_section(Config, values), check_paths=check_paths)


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, check_paths: bool = True
) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides.

    A relative ``data.source`` is read relative to the working directory, the way a user
    types it on the command line.
    """
    values = read_yaml(path) if path is not None else {}
    return config_from_dict(values, overrides, check_paths=check_paths)
