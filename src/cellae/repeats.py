"""A setting and its repeats: what makes two runs the same setting, run again.

A setting is a config without the keys that only repeat it: the training seed, the patient
fold and the run's name (``REPEAT_KEYS``). A study trains a setting once per (fold, seed) and
ranks settings by the mean and spread of their repeats, never by one split or its best seed.

Both readers of a setting take it from here: the comparison report groups any runs by their
configs (:func:`setting_key`), and a sweep names each repeat ``<setting>-f<fold>-s<seed>``
(:func:`repeat_name`), so that its summary reads the setting back from the folder's name
(:func:`parse_repeat_name`) without opening a config.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

# config keys that differ between repeats of one setting (dotted)
REPEAT_KEYS = ("seed", "name", "data.fold")
_REPEAT_NAME = re.compile(r"^(?P<setting>.+)-f(?P<fold>\d+)-s(?P<seed>\d+)$")


class Repeat(NamedTuple):
    setting: str
    fold: int
    seed: int


def repeat_name(setting: str, fold: int, seed: int) -> str:
    """The name of the run of ``setting`` on patient fold ``fold`` with training seed ``seed``."""
    return f"{setting}-f{fold}-s{seed}"


def parse_repeat_name(name: str) -> Repeat | None:
    """The setting, fold and seed a repeat's name holds; None for a name of another form."""
    match = _REPEAT_NAME.match(name)
    return Repeat(match["setting"], int(match["fold"]), int(match["seed"])) if match else None


def setting_key(flat_config: dict[str, Any]) -> str:
    """What runs of one setting share: their flat (dotted) config without ``REPEAT_KEYS``."""
    return json.dumps({k: v for k, v in flat_config.items() if k not in REPEAT_KEYS},
                      sort_keys=True, default=str)
