"""``cellae sweep``: a sweep file's runs, from its folder to the summary of its repeats."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cellae import runs
from cellae.config import config_from_dict
from cellae.errors import CellaeError
from cellae.repeats import parse_repeat_name
from cellae.sweep import slurm as slurm_launcher
from cellae.sweep.local import (
    join_run,
    lightning_rank_run,
    run_one_after_another,
    run_side_by_side_here,
)
from cellae.sweep.record import SUBMITTED, read_record, where, write_record
from cellae.sweep.spec import SWEEP_FILE, Sweep, load_sweep, one_device_each
from cellae.sweep.summary import write_summary

# local: one run after another in this process; slurm: one SLURM job per run, through submitit
LAUNCHERS = ("local", "slurm")


def run_sweep(path: Path, out: Path, resume: str | None = None, evaluate: bool = True,
              overrides: list[str] | None = None, launcher: str | None = None,
              slurm: dict[str, Any] | None = None,
              executor: Callable[..., Any] | None = None, jobs: int = 1,
              only: list[str] | None = None) -> Path:
    """Run every combination of a sweep file; return the sweep folder.

    ``overrides`` apply to every run of a new sweep; a resumed sweep keeps the values it was
    started with (they are frozen into its ``sweep.yaml``).

    ``launcher="slurm"`` submits each run that is not finished as its own job and returns at
    once: ``executor(folder, parameters)`` makes the submitit executor (by default
    :func:`~cellae.sweep.slurm.slurm_executor`), ``slurm`` holds its parameters
    (:func:`~cellae.sweep.slurm.slurm_parameters`),
    remembered in the status file for later submissions. A resumed sweep never starts a run
    whose job is still pending or running; the summary is written once every run is finished.

    ``only`` names the settings of the file to run (all of them when empty); a resumed
    sweep runs those it was started with.

    ``jobs`` above 1 runs that many runs at once on this machine, each in its own process with
    its share of the cores and GPUs, its output in ``logs/<run>.log`` (:mod:`cellae.sweep.side_by_side`).
    """
    rank_run = lightning_rank_run()
    if rank_run is not None:
        return join_run(rank_run, evaluate)
    launcher = launcher or "local"
    executor = executor or slurm_launcher.slurm_executor
    if launcher not in LAUNCHERS:
        raise CellaeError(f"unknown launcher '{launcher}'; choose one of {', '.join(LAUNCHERS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise CellaeError(f"--jobs takes a whole number of 1 or more, got {jobs!r}")
    if launcher == "slurm" and jobs > 1:
        raise CellaeError("--jobs is for the local launcher; with --launcher slurm each run is "
                          "a job of its own already")
    if launcher == "slurm":
        slurm_launcher.import_submitit()  # before any folder is made
    with contextlib.ExitStack() as held:
        if resume:
            sweep_dir = Path(resume)
            if not (sweep_dir / SWEEP_FILE).is_file():
                raise CellaeError(f"{sweep_dir} is not a sweep folder (it has no {SWEEP_FILE})")
            # one process at a time per sweep folder: a second would mark the first's runs failed
            held.enter_context(runs.run_lock(sweep_dir))
            sweep = load_sweep(sweep_dir / SWEEP_FILE, resumed=True)
            if jobs > 1:
                one_device_each(sweep)
            previous = read_record(sweep_dir)
        else:
            sweep = load_sweep(path, overrides, only=only)
            # a data path that is wrong for one run is wrong for all: say so before starting any
            for combination in sweep.combinations:
                config_from_dict(sweep.config_values(combination), check_paths=True)
            if jobs > 1:
                one_device_each(sweep)
            sweep_dir = runs.new_run_dir(out, sweep.name)
            held.enter_context(runs.run_lock(sweep_dir))
            # keep the sweep self-contained: the base config is inlined so the folder can move
            frozen = {"name": sweep.name, "config": sweep.base, "runs": sweep.combinations}
            runs.write_atomic(sweep_dir / SWEEP_FILE, yaml.safe_dump(frozen, sort_keys=False))
            previous = {}
        order = [sweep.run_name(c) for c in sweep.combinations]
        # the SLURM options given once hold for every later submission of this sweep
        parameters = {**previous.get("slurm", {}), **(slurm or {})}
        in_jobs = slurm_launcher.active_jobs(sweep, sweep_dir, previous, parameters, executor)
        # a run its job finished keeps that job's id in the status file
        job_ids = {n: r["job_id"] for n, r in previous.get("runs", {}).items()
                   if isinstance(r, dict) and r.get("status") == SUBMITTED and "job_id" in r}
        # the order first, so that a report of a sweep stopped in its first run lists it right
        status: dict[str, Any] = {"name": sweep.name, "order": order, "launcher": launcher,
                                  "runs": dict(in_jobs)}
        if parameters:
            status["slurm"] = parameters
        write_record(sweep_dir, status)
        if launcher == "slurm":
            slurm_launcher.submit(sweep, sweep_dir, status, evaluate, executor, job_ids)
            _finish(sweep, sweep_dir, order, status["runs"], evaluate, again=" --launcher slurm")
            return sweep_dir
        todo = []
        for number, combination in enumerate(sweep.combinations, start=1):
            name = sweep.run_name(combination)
            if name in in_jobs:
                print(f"{where(sweep, number, name)} is in job {in_jobs[name]['job_id']} "
                      f"({in_jobs[name]['state']})", file=sys.stderr, flush=True)
                continue
            todo.append((number, name, sweep.config_values(combination)))
        if jobs > 1:
            run_side_by_side_here(sweep, sweep_dir, status, todo, evaluate, jobs, job_ids)
        else:
            run_one_after_another(sweep, sweep_dir, status, todo, evaluate, job_ids)
        _finish(sweep, sweep_dir, order, status["runs"], evaluate)
        return sweep_dir


def _finish(sweep: Sweep, sweep_dir: Path, order: list[str], results: dict[str, dict[str, Any]],
            evaluate: bool, again: str = "") -> None:
    """Say how each run went; once no run is left in a job, write the summary of the repeats."""
    results = {n: results[n] for n in order if n in results}
    failed = [n for n, r in results.items() if r["status"] == "failed"]
    summary = ", ".join(f"{n}: {r['status']}" for n, r in results.items())
    print(f"[sweep {sweep.name}] {summary}", file=sys.stderr)
    waiting = [n for n, r in results.items() if r["status"] == SUBMITTED]
    if waiting:
        print(f"[sweep {sweep.name}] {len(waiting)} of {len(order)} runs are in their jobs; "
              f"collect with: cellae sweep --resume {sweep_dir}", file=sys.stderr)
    elif evaluate and any(parse_repeat_name(name) for name in order):
        try:
            written = write_summary(sweep_dir, sweep.name)
            print(f"[sweep {sweep.name}] mean and spread over folds and seeds: {written}",
                  file=sys.stderr)
        except CellaeError as exc:
            print(f"[sweep {sweep.name}] no summary: {exc}", file=sys.stderr)
    if failed:
        raise CellaeError(
            f"{len(failed)} of {len(results)} runs failed ({', '.join(failed)}); see {sweep_dir / runs.SWEEP_STATUS_FILE}, "
            f"fix the cause and continue with --resume {sweep_dir}{again}"
        )
