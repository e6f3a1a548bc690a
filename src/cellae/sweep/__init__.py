"""Sweeps: a grid of runs from one base config, run here or as SLURM jobs, and summarised.

:mod:`~cellae.sweep.spec` reads the sweep file, :mod:`~cellae.sweep.runner` runs it
(``run_sweep``) through a launcher: :mod:`~cellae.sweep.local` (with
:mod:`~cellae.sweep.side_by_side` for ``--jobs N``) or :mod:`~cellae.sweep.slurm`;
:mod:`~cellae.sweep.record` keeps ``sweep.json`` and :mod:`~cellae.sweep.summary` the mean and
spread of repeated runs.

The names below are handed on when first asked for, not imported with the package: a
``--jobs`` worker imports :mod:`~cellae.sweep.side_by_side` to start, and must not load torch
before it has set its share of the cores (torch sizes its thread pools once, at import).
"""

from __future__ import annotations

import importlib
from typing import Any

_HANDED_ON = {
    "runs_in_jobs": "cellae.sweep.record",
    "run_sweep": "cellae.sweep.runner",
    "slurm_executor": "cellae.sweep.slurm",
    "slurm_parameters": "cellae.sweep.slurm",
    "SWEEP_FILE": "cellae.sweep.spec",
    "Sweep": "cellae.sweep.spec",
    "combination_name": "cellae.sweep.spec",
    "load_sweep": "cellae.sweep.spec",
}

__all__ = sorted(_HANDED_ON)


def __getattr__(name: str) -> Any:
    if name in _HANDED_ON:
        return getattr(importlib.import_module(_HANDED_ON[name]), name)
    raise AttributeError(f"module 'cellae.sweep' has no attribute {name!r}")
