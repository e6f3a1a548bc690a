"""A column of the comparison report: which number of ``eval/metrics.json`` it shows, and how.

Families and latent metrics declare the columns they add; evaluation writes them into
``metrics.json``, so a report reads them from the run folder and needs no plug-in code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

# config keys that fix what the images are: a reconstruction number compares only within them
SAME_IMAGES = ("data.source", "data.image_size", "data.color", "data.resize", "data.background",
               "data.normalize")
# ... and what the loss is: a loss compares only among runs that minimised the same objective
SAME_OBJECTIVE = SAME_IMAGES + ("model.family", "model.loss", "model.beta", "model.latent_l1",
                                "model.free_bits", "train.invariance")
# config keys that fix which cells are scored: a latent metric compares only within them
SAME_TEST_CELLS = ("data.source", "data.split", "data.test_fraction", "data.folds", "data.fold")


def metric_value(metrics: Any, dotted: str) -> float | None:
    """The number at a dotted key of a run's JSON (``probe.accuracy`` in ``metrics.json``), or
    None where there is none or it is not a number."""
    value = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Column:
    """``key`` is a dotted path into ``metrics.json`` (``probe.accuracy``).

    ``better`` says which way is better; a report marks the best value only among runs whose
    config agrees on every key of ``compare_within``, and never in a ``baseline`` column (a
    reference such as PCA of the pixels, not a result of the run).
    """

    key: str
    title: str
    better: Literal["higher", "lower", ""] = ""
    digits: int = 3
    compare_within: tuple[str, ...] = ()
    baseline: bool = False

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["compare_within"] = list(self.compare_within)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Column:
        better = values.get("better", "")
        within = values.get("compare_within", [])
        return cls(
            key=str(values["key"]),
            title=str(values.get("title", values["key"])),
            better=better if better in ("higher", "lower") else "",
            digits=int(values.get("digits", 3)),
            compare_within=tuple(str(k) for k in within) if isinstance(within, list) else (),
            baseline=values.get("baseline") is True,
        )
