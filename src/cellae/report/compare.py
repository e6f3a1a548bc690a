"""Which numbers a report marks best, and which runs it averages into one setting.

A number is marked best only against numbers it can be compared with: a column's
``compare_within`` names the config keys on which two runs (or two settings) must agree to
compete, a baseline column is never marked, an unfinished run never competes, and a
comparison needs at least two competitors with a winner: a lone run or a tie marks nothing.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cellae.columns import Column
from cellae.repeats import setting_key
from cellae.report.collect import RunSummary, config_value, flatten_config


class Competitor(Protocol):
    """A table row that can compete for best: a run or a setting."""

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def competes(self) -> bool: ...

    def number(self, key: str) -> float | None: ...


@dataclass
class RunRow:
    """A run as a competitor: it competes only once it finished."""

    run: RunSummary

    @property
    def config(self) -> dict[str, Any]:
        return self.run.config

    @property
    def competes(self) -> bool:
        return self.run.finished

    def number(self, key: str) -> float | None:
        return self.run.number(key)


@dataclass
class Spread:
    """A column's values over the finished runs of a setting."""

    mean: float
    sd: float | None  # None for a single value: one run has no spread
    n: int


@dataclass
class Setting:
    """Runs whose configs differ only in seed, patient fold (and name): one setting, repeated."""

    runs: list[RunSummary]

    @property
    def config(self) -> dict[str, Any]:
        """The first run's config without its patient fold: a k-fold setting spans them all."""
        config = self.runs[0].config
        data = config.get("data")
        if isinstance(data, dict) and "fold" in data:
            config = {**config, "data": {k: v for k, v in data.items() if k != "fold"}}
        return config

    @property
    def finished(self) -> list[RunSummary]:
        return [r for r in self.runs if r.finished]

    @property
    def competes(self) -> bool:
        return bool(self.finished)

    def spread(self, key: str) -> Spread | None:
        """Mean and standard deviation over the finished runs; unfinished runs' numbers are not
        final, so they never enter a mean."""
        values = [v for r in self.finished if (v := r.number(key)) is not None]
        if not values:
            return None
        sd = statistics.stdev(values) if len(values) > 1 else None
        return Spread(statistics.fmean(values), sd, len(values))

    def number(self, key: str) -> float | None:
        spread = self.spread(key)
        return spread.mean if spread else None


def group_settings(summaries: Sequence[RunSummary]) -> list[Setting]:
    """Runs grouped by everything in their config but seed, fold and name, in order of first run."""
    settings: dict[str, Setting] = {}
    for summary in summaries:
        key = setting_key(flatten_config(summary.config))
        if key in settings:
            settings[key].runs.append(summary)
        else:
            settings[key] = Setting([summary])
    return list(settings.values())


def _within(config: dict[str, Any], keys: Sequence[str]) -> str:
    return json.dumps([config_value(config, k) for k in keys], sort_keys=True, default=str)


def best_rows(rows: Sequence[Competitor], column: Column) -> set[int]:
    """Positions in ``rows`` whose value of ``column`` is best among the rows it competes with.

    Values are compared as the table shows them (rounded to the column's digits), so two values
    that read the same are both marked or neither.
    """
    if column.baseline or column.better not in ("higher", "lower"):
        return set()
    pools: dict[str, list[tuple[int, float]]] = {}
    for position, row in enumerate(rows):
        value = row.number(column.key)
        if row.competes and value is not None and math.isfinite(value):
            pool = pools.setdefault(_within(row.config, column.compare_within), [])
            pool.append((position, round(value, column.digits)))
    marked: set[int] = set()
    for pool in pools.values():
        values = {v for _, v in pool}
        if len(values) < 2:
            continue  # one competitor, or all tied: nobody is best
        best = max(values) if column.better == "higher" else min(values)
        marked |= {position for position, value in pool if value == best}
    return marked
