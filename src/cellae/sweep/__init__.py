"""Sweeps: a grid of runs from one base config, run here or as SLURM jobs, and summarised.

:mod:`~cellae.sweep.spec` reads the sweep file, :mod:`~cellae.sweep.runner` runs it
(``run_sweep``) through a launcher: :mod:`~cellae.sweep.local` (with
:mod:`~cellae.sweep.side_by_side` for ``--jobs N``) or :mod:`~cellae.sweep.slurm`;
:mod:`~cellae.sweep.record` keeps ``sweep.json`` and :mod:`~cellae.sweep.summary` the mean and
spread of repeated runs.
"""

from cellae.sweep.record import runs_in_jobs
from cellae.sweep.runner import run_sweep
from cellae.sweep.slurm import slurm_executor, slurm_parameters
from cellae.sweep.spec import SWEEP_FILE, Sweep, combination_name, load_sweep

__all__ = ["SWEEP_FILE", "Sweep", "combination_name", "load_sweep", "run_sweep", "runs_in_jobs",
           "slurm_executor", "slurm_parameters"]
