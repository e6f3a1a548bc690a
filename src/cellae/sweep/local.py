"""A sweep's runs on this machine: one after another in this process, or ``--jobs N`` at a
time in processes of their own (:mod:`cellae.sweep.side_by_side`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any

from cellae import runs
from cellae.config import config_from_dict
from cellae.data.cache import prepare_cache
from cellae.errors import CellaeError, first_line
from cellae.machine import gpu_count, keep_freed_memory
from cellae.run_inputs import read_config
from cellae.sweep.record import ended, is_finished, where, write_record
from cellae.sweep.side_by_side import Task, machine_slots, run_side_by_side
from cellae.sweep.spec import Sweep
from cellae.training import RUN_DIR_ENV, TrainingInterrupted, resume, train

# each run's output with --jobs N, inside the sweep folder
LOGS_DIR = "logs"
# data keys that choose a run's training and test cells, not its cache: runs differing only
# in these share one cache build
SPLIT_KEYS = ("split", "test_fraction", "folds", "fold", "train_classes", "workers")


def run_one(sweep_dir: Path, name: str, values: dict[str, Any], evaluate: bool) -> str:
    """Train, resume or skip one run; return what happened."""
    run_dir = sweep_dir / name
    if is_finished(run_dir):
        return "kept"
    if runs.is_run_dir(run_dir) and runs.last_checkpoint(run_dir).is_file():
        resume(run_dir, evaluate=evaluate)
        return "resumed"
    if run_dir.exists():
        # started but never checkpointed: keep it aside rather than overwrite it
        aside = sweep_dir / f".{name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(run_dir), aside)
    config = config_from_dict(values)
    train(config, sweep_dir, evaluate=evaluate, timestamped=False)
    return "trained"


def run_reported(sweep_dir: Path, name: str, values: dict[str, Any],
                  evaluate: bool) -> dict[str, Any]:
    """:func:`run_one` as its entry in the status file: what happened, or its error."""
    started = time.perf_counter()
    try:
        result: dict[str, Any] = {"status": run_one(sweep_dir, name, values, evaluate)}
    except TrainingInterrupted as exc:
        result = {"status": "interrupted", "error": first_line(exc)}
    except (CellaeError, RuntimeError, ValueError, OSError) as exc:
        result = {"status": "failed", "error": first_line(exc),
                  "traceback": traceback.format_exc(limit=5)}
    finally:
        leave_process_group()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def leave_process_group() -> None:
    """A run on several devices that failed leaves its process group behind, and the next run
    of this process would reuse it, with peers long gone."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with suppress(Exception):  # its peers may be gone; the run's own outcome is reported
            torch.distributed.destroy_process_group()


def run_in_own_process(sweep_dir: Path, name: str, values: dict[str, Any],
                        evaluate: bool) -> dict[str, Any]:
    """One run of ``--jobs N``, in its own process (see :mod:`cellae.side_by_side`)."""
    keep_freed_memory()  # its own process, as `cellae train` would set it
    return run_reported(sweep_dir, name, values, evaluate)


def run_one_after_another(sweep: Sweep, sweep_dir: Path, status: dict[str, Any],
                           todo: list[tuple[int, str, dict[str, Any]]], evaluate: bool,
                           job_ids: dict[str, str]) -> None:
    """``todo`` in this process, in order; an interrupted run stops the sweep."""
    for number, name, values in todo:
        print(where(sweep, number, name), file=sys.stderr, flush=True)
        result = run_reported(sweep_dir, name, values, evaluate)
        ended(sweep, sweep_dir, status, name, result, job_ids)
        if result["status"] == "interrupted":
            # Ctrl-C or SIGTERM stops the sweep, not just the run it reached; --resume goes on
            print(f"[sweep {sweep.name}] interrupted in {name}; continue with "
                  f"cellae sweep --resume {sweep_dir}", file=sys.stderr, flush=True)
            raise TrainingInterrupted(result["error"])


def run_side_by_side_here(sweep: Sweep, sweep_dir: Path, status: dict[str, Any],
                      todo: list[tuple[int, str, dict[str, Any]]], evaluate: bool, jobs: int,
                      job_ids: dict[str, str]) -> None:
    """``todo``, ``jobs`` runs at a time in processes of their own (:mod:`cellae.side_by_side`),
    after building each distinct cache once here, so that no two runs race to build it."""
    unfinished = []
    for number, name, values in todo:
        if is_finished(sweep_dir / name):  # said here: a process of its own would only say so
            print(where(sweep, number, name), file=sys.stderr, flush=True)
            ended(sweep, sweep_dir, status, name, {"status": "kept"}, job_ids)
        else:
            unfinished.append((number, name, values))
    todo = unfinished
    failed = prepare_caches(sweep, [(name, values) for _, name, values in todo])
    for name, message in failed.items():
        ended(sweep, sweep_dir, status, name, {"status": "failed", "error": message}, job_ids)
    numbers = {name: number for number, name, _ in todo}
    tasks = [Task(name, f"{__name__}:{run_in_own_process.__name__}",
                  (sweep_dir, name, values, evaluate))
             for _, name, values in todo if name not in failed]
    if not tasks:
        return
    # a run left with fewer runs than --jobs takes a larger share of the machine
    slots = machine_slots(min(jobs, len(tasks)), gpu_count())
    logs: dict[str, str] = {}  # each run's log, as sweep.json names it

    def on_start(task: Task, log: Path) -> None:
        print(f"{where(sweep, numbers[task.name], task.name)} (its output: {log})",
              file=sys.stderr, flush=True)
        logs[task.name] = str(log.relative_to(sweep_dir))
        status["runs"][task.name] = {"status": "running", "log": logs[task.name]}
        write_record(sweep_dir, status)

    def on_end(task: Task, result: dict[str, Any]) -> None:
        result = {**result, "log": logs[task.name]}
        ended(sweep, sweep_dir, status, task.name, result, job_ids)
        seconds = f" in {result['seconds']} s" if "seconds" in result else ""
        print(f"[sweep {sweep.name}] {task.name}: {result['status']}{seconds}", file=sys.stderr,
              flush=True)

    if run_side_by_side(tasks, slots, sweep_dir / LOGS_DIR, on_start, on_end):
        print(f"[sweep {sweep.name}] interrupted; continue with cellae sweep --resume "
              f"{sweep_dir} --jobs {jobs}", file=sys.stderr, flush=True)
        raise TrainingInterrupted(f"sweep interrupted; continue with cellae sweep --resume "
                                  f"{sweep_dir} --jobs {jobs}")


def lightning_rank_run() -> Path | None:
    """The run folder this process was started to train a device's share of, when it is one
    that Lightning started for another device of a run of this sweep; None otherwise.

    Lightning starts those processes by running this process's command again (``cellae sweep
    FILE``), with the run folder in the environment: such a process must join that run, not
    start the sweep anew in a folder of its own with its first run.
    """
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir or os.environ.get("LOCAL_RANK", "0") == "0":
        return None
    return Path(run_dir)


def join_run(run_dir: Path, evaluate: bool) -> Path:
    """Train ``run_dir``'s run beside its first process, with the config that process wrote
    there: resumed from its checkpoint if it has one, trained anew otherwise.

    Such a process ends with its share of the run (training's end exits it). Should the run
    fail, the first process reports it in the sweep; this one exits quietly, since Lightning
    kills the sweep's process when one of these ends with an error.
    """
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise CellaeError(f"{run_dir} has no {runs.CONFIG_FILE}: a sweep's runs train on several "
                          f"machines only as SLURM jobs (--launcher slurm), not with one "
                          f"cellae sweep per machine")
    try:
        if runs.last_checkpoint(run_dir).is_file():
            resume(run_dir, evaluate=evaluate)
        else:
            train(read_config(run_dir), run_dir.parent, evaluate=evaluate,
                  timestamped=False)
    except CellaeError as exc:
        print(f"[{run_dir.name}, another device] {first_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(0)
    return run_dir.parent


def cache_inputs(values: dict[str, Any]) -> str:
    """What a run's data cache depends on: runs equal here share one cache."""
    data = dataclasses.asdict(config_from_dict(values).data)
    return json.dumps({k: v for k, v in data.items() if k not in SPLIT_KEYS}, sort_keys=True,
                      default=str)


def prepare_caches(sweep: Sweep, todo: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Build each distinct data cache of ``todo`` once, here, so that no two jobs race to build it.

    Returns the runs whose cache could not be made, with the reason.
    """
    groups: dict[str, list[str]] = {}
    for name, values in todo:
        groups.setdefault(cache_inputs(values), []).append(name)
    values_of = dict(todo)
    failed: dict[str, str] = {}
    for names in groups.values():
        print(f"[sweep {sweep.name}] the data cache of {', '.join(names)}", file=sys.stderr,
              flush=True)
        try:
            prepare_cache(config_from_dict(values_of[names[0]]).data,
                          progress=sys.stderr.isatty())
        except (CellaeError, RuntimeError, ValueError, OSError) as exc:
            message = first_line(exc)
            print(f"[sweep {sweep.name}] {', '.join(names)}: {message}", file=sys.stderr,
                  flush=True)
            failed |= dict.fromkeys(names, message)
    return failed
