"""A column of the comparison report: which number of ``eval/metrics.json`` it shows, and how.

Families and latent metrics declare the columns they add; evaluation writes them into
``metrics.json``, so a report reads them from the run folder and needs no plug-in code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Column:
    """``key`` is a dotted path into ``metrics.json`` (``probe.accuracy``)."""

    key: str
    title: str
    better: Literal["higher", "lower", ""] = ""
    digits: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Column:
        better = values.get("better", "")
        return cls(
            key=str(values["key"]),
            title=str(values.get("title", values["key"])),
            better=better if better in ("higher", "lower") else "",
            digits=int(values.get("digits", 3)),
        )
