"""A grid of runs from one base config: ``cellae sweep SWEEP.yaml``.

A sweep file names a base config and the values to vary::

    name: study
    base: ../malaria/ae.yaml          # relative to this file
    set: [train.epochs=30]            # optional overrides for every run
    grid:                             # every combination ...
      model.family: [ae, vae]
      data.background: [keep, fill_mean]
      model.latent_dim: [20, 50]
    # runs:                           # ... or an explicit list of combinations
    #   - {name: ae-z20, model.family: ae, model.latent_dim: 20, model.latent_l1: 0.0001}
    folds: 5                          # optional: each combination on 5 patient folds ...
    seeds: [0, 1, 2]                  # ... and 3 training seeds: 15 runs, named <name>-f<k>-s<seed>

Each combination is an ordinary run folder inside one sweep folder, named by its values
(``vae-fill_mean-z50``) or by its own ``name``. A key that only one family takes belongs in the
combinations of that family (an explicit ``runs`` list), never in the shared base. ``--resume`` keeps finished runs, resumes an unfinished one from its
checkpoint and trains the rest; a failing run is reported and the others go on.

With ``folds`` or ``seeds``, a setting is scored as the mean and spread of its repeats, never by
one split or its best seed: the sweep ends by writing ``summary.md`` (see :mod:`cellae.summary`).

Runs that share their data settings share one cache (it is keyed by them): the first run builds
it, the others open it. ``--jobs N`` builds each distinct cache first, then runs N runs at once
on this machine, each share of the cores (and GPUs) in a process of its own, each run's output
in ``logs/<run>.log`` (see :mod:`cellae.side_by_side`). ``--launcher slurm`` (through submitit, ``pip install 'cellae[slurm]'``)
builds each distinct cache once in the submitting process, submits each run that is not
finished as its own job (logs in the sweep's ``submitit/`` folder) and returns; ``sweep.json``
records each run's job id as ``submitted``, and the launcher and SLURM options. ``--resume``
then collects: a finished run is kept, a run whose job is pending or running is reported and
left to its job, and a run whose job ended unfinished is submitted again with ``--launcher
slurm`` (with the recorded SLURM options, unless given anew) or run in this process without it.
The summary is written once every run is finished.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cellae import runs
from cellae.config import apply_overrides, config_from_dict, from_older_cellae, read_yaml
from cellae.errors import CellaeError, first_line
from cellae.summary import REPEAT, write_summary

SWEEP_FILE = "sweep.yaml"
SWEEP_KEYS = {"name", "base", "config", "set", "grid", "runs", "folds", "seeds"}
# every run is checked before the first starts; a grid past this is a typo, not a study
MAX_RUNS = 1000
# local: one run after another in this process; slurm: one SLURM job per run, through submitit
LAUNCHERS = ("local", "slurm")
# submitit's scripts, pickles and logs of the jobs, inside the sweep folder
SUBMITIT_DIR = "submitit"
# each run's output with --jobs N, inside the sweep folder
LOGS_DIR = "logs"
# a run whose job has been submitted and not yet collected (in the status file, with job_id)
SUBMITTED = "submitted"
# data keys that choose a run's training and test cells, not its cache: runs differing only
# in these share one cache build
SPLIT_KEYS = ("split", "test_fraction", "folds", "fold", "train_classes", "workers")
# short prefixes so that names read like the study's (z50, beta4)
NAME_PREFIXES = {"model.latent_dim": "z", "model.beta": "beta", "train.epochs": "e", "seed": "s"}


def combination_name(combination: dict[str, Any]) -> str:
    """A run's folder name: its own ``name``, or its values (``vae-fill_mean-z50``)."""
    if "name" in combination:
        return runs.safe_folder_name(str(combination["name"]))
    parts = []
    for key, value in combination.items():
        prefix = NAME_PREFIXES.get(key, "")
        if not prefix and isinstance(value, int | float) and not isinstance(value, bool):
            prefix = key.rsplit(".", 1)[-1]
        if isinstance(value, list):
            text = "_".join(map(str, value))
        elif isinstance(value, str) and "/" in value:
            text = runs.source_name(value)  # a data path: its folder or zip name
        else:
            text = str(value)
        parts.append(f"{prefix}{text}")
    return runs.safe_folder_name("-".join(parts))


@dataclass
class Sweep:
    name: str
    base: dict[str, Any]
    combinations: list[dict[str, Any]]
    # a sweep being resumed may come from cellae 0.1.0, whose runs ignored another family's keys
    resumed: bool = False

    def run_name(self, combination: dict[str, Any]) -> str:
        return combination_name(combination)

    def config_values(self, combination: dict[str, Any]) -> dict[str, Any]:
        overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                     for k, v in combination.items()]
        overrides = [o.removesuffix("\n...").removesuffix(" ...") for o in overrides]
        values = apply_overrides(self.base, overrides)
        values["name"] = self.run_name(combination)
        return from_older_cellae(values, flat_model=True) if self.resumed else values


def load_sweep(path: Path, overrides: list[str] | None = None, resumed: bool = False) -> Sweep:
    """Read and check a sweep file: every combination must make a valid config.

    ``overrides`` (``key=value``, as ``--set`` on the command line) apply to every run, after
    the file's own ``set``.
    """
    values = read_yaml(path)
    unknown = set(values) - SWEEP_KEYS
    if unknown:
        raise CellaeError(
            f"sweep file {path}: unknown key '{sorted(unknown)[0]}'; allowed: {', '.join(sorted(SWEEP_KEYS))}"
        )
    if ("base" in values) == ("config" in values):
        raise CellaeError(f"sweep file {path} needs exactly one of 'base' (a config file) or 'config'")
    if "base" in values:
        base = read_yaml((path.parent / str(values["base"])).resolve())
    else:
        base = values["config"]
        if not isinstance(base, dict):
            raise CellaeError(f"sweep file {path}: 'config' must be a mapping of config sections")
    in_file = values.get("set", [])
    if isinstance(in_file, dict):
        in_file = [f"{k}={v}" for k, v in in_file.items()]
    base = apply_overrides(base, [str(o) for o in in_file] + list(overrides or []))
    if ("grid" in values) == ("runs" in values):
        raise CellaeError(f"sweep file {path} needs exactly one of 'grid' or 'runs'")
    if "grid" in values:
        grid = values["grid"]
        if not isinstance(grid, dict) or not grid:
            raise CellaeError(f"sweep file {path}: 'grid' must map dotted keys to lists of values")
        for key, options in grid.items():
            if not isinstance(options, list) or not options:
                raise CellaeError(f"sweep file {path}: grid key '{key}' must have a non-empty list of values")
        keys = list(grid)
        size = math.prod(len(options) for options in grid.values())
        if size > MAX_RUNS:
            sizes = " x ".join(str(len(options)) for options in grid.values())
            raise CellaeError(f"sweep file {path}: its grid makes {size:,} runs ({sizes}); a sweep "
                              f"has at most {MAX_RUNS:,}: split it into several sweep files")
        combinations = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
    else:
        combinations = values["runs"]
        if not isinstance(combinations, list) or not all(isinstance(c, dict) and c for c in combinations):
            raise CellaeError(f"sweep file {path}: 'runs' must be a list of non-empty mappings")
        if len(combinations) > MAX_RUNS:
            raise CellaeError(f"sweep file {path} lists {len(combinations):,} runs; a sweep has at "
                              f"most {MAX_RUNS:,}: split it into several sweep files")
    combinations = _repeats(path, combinations, values.get("folds", 0), values.get("seeds"))
    sweep = Sweep(name=str(values.get("name", path.stem)), base=base, combinations=combinations,
                  resumed=resumed)
    names = [sweep.run_name(c) for c in combinations]
    duplicated = {n for n, count in Counter(names).items() if count > 1}
    if duplicated:
        raise CellaeError(f"sweep file {path}: two runs would share the name '{sorted(duplicated)[0]}'")
    for combination in combinations:
        config_from_dict(sweep.config_values(combination), check_paths=False)
    return sweep


def _repeats(path: Path, combinations: list[dict[str, Any]], folds: Any,
             seeds: Any) -> list[dict[str, Any]]:
    """Each combination once per patient fold and training seed, named ``<name>-f<k>-s<seed>``."""
    if folds in (0, None) and seeds is None:
        return combinations
    if not isinstance(folds, int) or isinstance(folds, bool) or not (folds == 0 or folds >= 2):
        raise CellaeError(f"sweep file {path}: 'folds' must be 0 or an integer of 2 or more, got {folds!r}")
    seeds = [0] if seeds is None else seeds
    if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise CellaeError(f"sweep file {path}: 'seeds' must be a list of distinct integers, got {seeds!r}")
    size = len(combinations) * max(folds, 1) * len(seeds)
    if size > MAX_RUNS:
        raise CellaeError(f"sweep file {path}: {len(combinations)} settings x {max(folds, 1)} folds x "
                          f"{len(seeds)} seeds make {size:,} runs; a sweep has at most {MAX_RUNS:,}")
    repeated = []
    for combination in combinations:
        setting = combination_name(combination)
        for fold in range(max(folds, 1)):
            for seed in seeds:
                repeat = {k: v for k, v in combination.items() if k != "name"}
                if folds:
                    repeat |= {"data.folds": folds, "data.fold": fold}
                repeated.append(repeat | {"seed": seed, "name": f"{setting}-f{fold}-s{seed}"})
    return repeated


def _run_reported(sweep_dir: Path, name: str, values: dict[str, Any],
                  evaluate: bool) -> dict[str, Any]:
    """:func:`_run_one` as its entry in the status file: what happened, or its error."""
    from cellae.training import TrainingInterrupted

    started = time.perf_counter()
    try:
        result: dict[str, Any] = {"status": _run_one(sweep_dir, name, values, evaluate)}
    except TrainingInterrupted as exc:
        result = {"status": "interrupted", "error": first_line(exc)}
    except (CellaeError, RuntimeError, ValueError, OSError) as exc:
        result = {"status": "failed", "error": first_line(exc),
                  "traceback": traceback.format_exc(limit=5)}
    finally:
        _leave_process_group()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _leave_process_group() -> None:
    """A run on several devices that failed leaves its process group behind, and the next run
    of this process would reuse it, with peers long gone."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with suppress(Exception):  # its peers may be gone; the run's own outcome is reported
            torch.distributed.destroy_process_group()


def _run_in_own_process(sweep_dir: Path, name: str, values: dict[str, Any],
                        evaluate: bool) -> dict[str, Any]:
    """One run of ``--jobs N``, in its own process (see :mod:`cellae.side_by_side`)."""
    from cellae.machine import keep_freed_memory

    keep_freed_memory()  # its own process, as `cellae train` would set it
    return _run_reported(sweep_dir, name, values, evaluate)


def _ended(sweep: Sweep, sweep_dir: Path, status: dict[str, Any], name: str,
           result: dict[str, Any], job_ids: dict[str, str]) -> dict[str, Any]:
    """Record how a run ended in the status file, and say so if it failed."""
    if result["status"] == "kept" and name in job_ids:
        result["job_id"] = job_ids[name]  # a run its job finished keeps that job's id
    if result["status"] == "failed":
        print(f"[sweep {sweep.name}] {name} failed: {result['error']}", file=sys.stderr,
              flush=True)
    status["runs"][name] = result
    _write_status(sweep_dir, status)
    return result


def _where(sweep: Sweep, number: int, name: str) -> str:
    return f"[sweep {sweep.name}] run {number} of {len(sweep.combinations)}: {name}"


def _run_one_after_another(sweep: Sweep, sweep_dir: Path, status: dict[str, Any],
                           todo: list[tuple[int, str, dict[str, Any]]], evaluate: bool,
                           job_ids: dict[str, str]) -> None:
    """``todo`` in this process, in order; an interrupted run stops the sweep."""
    from cellae.training import TrainingInterrupted

    for number, name, values in todo:
        print(_where(sweep, number, name), file=sys.stderr, flush=True)
        result = _run_reported(sweep_dir, name, values, evaluate)
        _ended(sweep, sweep_dir, status, name, result, job_ids)
        if result["status"] == "interrupted":
            # Ctrl-C or SIGTERM stops the sweep, not just the run it reached; --resume goes on
            print(f"[sweep {sweep.name}] interrupted in {name}; continue with "
                  f"cellae sweep --resume {sweep_dir}", file=sys.stderr, flush=True)
            raise TrainingInterrupted(result["error"])


def _run_side_by_side(sweep: Sweep, sweep_dir: Path, status: dict[str, Any],
                      todo: list[tuple[int, str, dict[str, Any]]], evaluate: bool, jobs: int,
                      job_ids: dict[str, str]) -> None:
    """``todo``, ``jobs`` runs at a time in processes of their own (:mod:`cellae.side_by_side`),
    after building each distinct cache once here, so that no two runs race to build it."""
    from cellae.side_by_side import Task, machine_slots, run_side_by_side
    from cellae.training import TrainingInterrupted

    unfinished = []
    for number, name, values in todo:
        if _finished(sweep_dir / name):  # said here: a process of its own would only say so
            print(_where(sweep, number, name), file=sys.stderr, flush=True)
            _ended(sweep, sweep_dir, status, name, {"status": "kept"}, job_ids)
        else:
            unfinished.append((number, name, values))
    todo = unfinished
    failed = _prepare_caches(sweep, [(name, values) for _, name, values in todo])
    for name, message in failed.items():
        _ended(sweep, sweep_dir, status, name, {"status": "failed", "error": message}, job_ids)
    numbers = {name: number for number, name, _ in todo}
    tasks = [Task(name, f"{__name__}:{_run_in_own_process.__name__}",
                  (sweep_dir, name, values, evaluate))
             for _, name, values in todo if name not in failed]
    if not tasks:
        return
    # a run left with fewer runs than --jobs takes a larger share of the machine
    slots = machine_slots(min(jobs, len(tasks)), _gpu_count())
    logs: dict[str, str] = {}  # each run's log, as sweep.json names it

    def on_start(task: Task, log: Path) -> None:
        print(f"{_where(sweep, numbers[task.name], task.name)} (its output: {log})",
              file=sys.stderr, flush=True)
        logs[task.name] = str(log.relative_to(sweep_dir))
        status["runs"][task.name] = {"status": "running", "log": logs[task.name]}
        _write_status(sweep_dir, status)

    def on_end(task: Task, result: dict[str, Any]) -> None:
        result = {**result, "log": logs[task.name]}
        _ended(sweep, sweep_dir, status, task.name, result, job_ids)
        seconds = f" in {result['seconds']} s" if "seconds" in result else ""
        print(f"[sweep {sweep.name}] {task.name}: {result['status']}{seconds}", file=sys.stderr,
              flush=True)

    if run_side_by_side(tasks, slots, sweep_dir / LOGS_DIR, on_start, on_end):
        print(f"[sweep {sweep.name}] interrupted; continue with cellae sweep --resume "
              f"{sweep_dir} --jobs {jobs}", file=sys.stderr, flush=True)
        raise TrainingInterrupted(f"sweep interrupted; continue with cellae sweep --resume "
                                  f"{sweep_dir} --jobs {jobs}")


def _one_device_each(sweep: Sweep) -> None:
    """``--jobs`` gives each run one device: a run on several would start its other ranks by
    running this whole command again, a sweep inside each rank."""
    for combination in sweep.combinations:
        train = config_from_dict(sweep.config_values(combination), check_paths=False).train
        if train.num_nodes > 1 or (isinstance(train.devices, int) and train.devices > 1):
            raise CellaeError(f"--jobs runs each run on one device, and {sweep.run_name(combination)} "
                              f"asks for several (train.devices {train.devices}, train.num_nodes "
                              f"{train.num_nodes}): run this sweep without --jobs")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _lightning_rank_run() -> Path | None:
    """The run folder this process was started to train a device's share of, when it is one
    that Lightning started for another device of a run of this sweep; None otherwise.

    Lightning starts those processes by running this process's command again (``cellae sweep
    FILE``), with the run folder in the environment: such a process must join that run, not
    start the sweep anew in a folder of its own with its first run.
    """
    from cellae.training import RUN_DIR_ENV

    run_dir = os.environ.get(RUN_DIR_ENV)
    if not run_dir or os.environ.get("LOCAL_RANK", "0") == "0":
        return None
    return Path(run_dir)


def _join_run(run_dir: Path, evaluate: bool) -> Path:
    """Train ``run_dir``'s run beside its first process, with the config that process wrote
    there: resumed from its checkpoint if it has one, trained anew otherwise.

    Such a process ends with its share of the run (training's end exits it). Should the run
    fail, the first process reports it in the sweep; this one exits quietly, since Lightning
    kills the sweep's process when one of these ends with an error.
    """
    from cellae.training import resume, train

    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise CellaeError(f"{run_dir} has no {runs.CONFIG_FILE}: a sweep's runs train on several "
                          f"machines only as SLURM jobs (--launcher slurm), not with one "
                          f"cellae sweep per machine")
    try:
        if (run_dir / runs.CHECKPOINT_DIR / runs.LAST_CHECKPOINT).is_file():
            resume(run_dir, evaluate=evaluate)
        else:
            train(runs.read_config(run_dir), run_dir.parent, evaluate=evaluate,
                  timestamped=False)
    except CellaeError as exc:
        print(f"[{run_dir.name}, another device] {first_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(0)
    return run_dir.parent


def _run_one(sweep_dir: Path, name: str, values: dict[str, Any], evaluate: bool) -> str:
    """Train, resume or skip one run; return what happened."""
    from cellae.training import resume, train

    run_dir = sweep_dir / name
    if run_dir.exists() and runs.is_run_dir(run_dir):
        status = runs.read_run_info(run_dir).get("status")
        if status == "finished":
            return "kept"
        if (run_dir / runs.CHECKPOINT_DIR / runs.LAST_CHECKPOINT).is_file():
            resume(run_dir, evaluate=evaluate)
            return "resumed"
    if run_dir.exists():
        # started but never checkpointed: keep it aside rather than overwrite it
        aside = sweep_dir / f".{name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(run_dir), aside)
    config = config_from_dict(values)
    train(config, sweep_dir, evaluate=evaluate, timestamped=False)
    return "trained"


class _RunJob:
    """One run of a sweep as a submitit job: the same :func:`_run_one` as the local loop.

    On a time-out or pre-emption submitit calls :meth:`checkpoint` and requeues the job under
    the same id; the requeued job resumes the run from its last checkpoint, as ``--resume`` does.
    """

    def __call__(self, sweep_dir: Path, name: str, values: dict[str, Any], evaluate: bool) -> str:
        from cellae.machine import keep_freed_memory

        keep_freed_memory()  # a job's own process, as `cellae train` would set it
        return _run_one(sweep_dir, name, values, evaluate)

    def checkpoint(self, *args: Any) -> Any:
        return _submitit().helpers.DelayedSubmission(self, *args)


def _submitit() -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise CellaeError("--launcher slurm needs submitit: pip install 'cellae[slurm]'") from exc
    return submitit


def slurm_parameters(partition: str | None = None, minutes: int | None = None,
                     gpus_per_node: int | None = None, cpus_per_task: int | None = None,
                     mem_gb: float | None = None,
                     options: list[str] | None = None) -> dict[str, Any]:
    """submitit's parameters for the given ``--slurm-*`` options (those not given are left out).

    ``options`` are ``KEY=VALUE`` sbatch options without their dashes (``account=proj1``), or a
    bare ``KEY`` for a flag (``exclusive``); they go to submitit's slurm_additional_parameters.
    """
    given = {"slurm_partition": partition, "timeout_min": minutes, "gpus_per_node": gpus_per_node,
             "cpus_per_task": cpus_per_task, "mem_gb": mem_gb}
    parameters: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    extra: dict[str, Any] = {}
    for option in options or []:
        key, equals, value = option.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise CellaeError(f"--slurm-option takes KEY=VALUE, an sbatch option without its "
                              f"dashes (e.g. account=proj1), got {option!r}")
        extra[key] = value if equals else True
    if extra:
        parameters["slurm_additional_parameters"] = extra
    return parameters


def slurm_executor(folder: Path, parameters: dict[str, Any], cluster: str = "slurm") -> Any:
    """submitit's executor for a sweep's jobs, logs in ``folder``.

    ``cluster="local"`` runs the jobs as processes of this machine (submitit's LocalExecutor),
    which is how the tests submit a sweep without SLURM.
    """
    submitit = _submitit()
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise CellaeError("--launcher slurm submits with sbatch, which this machine does not have; "
                          "run the command on the cluster's login node")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**{"gpus_per_node": 1, **parameters})
    return executor


def _finished(run_dir: Path) -> bool:
    return runs.is_run_dir(run_dir) and runs.read_run_info(run_dir).get("status") == "finished"


def _write_status(sweep_dir: Path, status: dict[str, Any]) -> None:
    entries = status["runs"]
    runs.write_json(sweep_dir / runs.SWEEP_STATUS_FILE,
                    status | {"runs": {n: entries[n] for n in status["order"] if n in entries}})


def runs_in_jobs(sweep_dir: Path) -> list[str]:
    """The runs of a sweep folder that its status file has in SLURM jobs not yet collected."""
    entries = _read_status(sweep_dir).get("runs", {})
    return [n for n, r in entries.items() if isinstance(r, dict) and r.get("status") == SUBMITTED]


def _active_jobs(sweep: Sweep, sweep_dir: Path, previous: dict[str, Any],
                 parameters: dict[str, Any],
                 executor: Callable[..., Any]) -> dict[str, dict[str, Any]]:
    """The runs whose jobs are still pending or running: they are reported, never started again.

    A job that ended without finishing its run (failed, cancelled, out of time) is not among
    them: that run is submitted again with ``--launcher slurm``, or run here otherwise.
    """
    names = {sweep.run_name(c) for c in sweep.combinations}
    entries = previous.get("runs", {})
    submitted = {name: str(entry["job_id"]) for name, entry in entries.items()
                 if name in names and isinstance(entry, dict) and entry.get("status") == SUBMITTED
                 and entry.get("job_id") and not _finished(sweep_dir / name)}
    if not submitted:
        return {}
    made = executor(sweep_dir / SUBMITIT_DIR, parameters)
    job_class = getattr(made, "_executor", made).job_class
    # every job first, then their states: one sacct call for all of them
    jobs = {name: job_class(folder=made.folder, job_id=job_id)
            for name, job_id in submitted.items()}
    active = {}
    for name, job in jobs.items():
        if not job.done():
            active[name] = {"status": SUBMITTED, "job_id": job.job_id, "state": str(job.state)}
        elif not _finished(sweep_dir / name):
            print(f"[sweep {sweep.name}] job {job.job_id} of {name} ended ({job.state}) without "
                  f"finishing the run; its log: {made.folder}", file=sys.stderr, flush=True)
    return active


def _cache_inputs(values: dict[str, Any]) -> str:
    """What a run's data cache depends on: runs equal here share one cache."""
    data = dataclasses.asdict(config_from_dict(values).data)
    return json.dumps({k: v for k, v in data.items() if k not in SPLIT_KEYS}, sort_keys=True,
                      default=str)


def _prepare_caches(sweep: Sweep, todo: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Build each distinct data cache of ``todo`` once, here, so that no two jobs race to build it.

    Returns the runs whose cache could not be made, with the reason.
    """
    from cellae.data.cache import prepare_cache

    groups: dict[str, list[str]] = {}
    for name, values in todo:
        groups.setdefault(_cache_inputs(values), []).append(name)
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


def _submit(sweep: Sweep, sweep_dir: Path, status: dict[str, Any], evaluate: bool,
            executor: Callable[..., Any], job_ids: dict[str, str]) -> None:
    """Submit every run that is neither finished nor in a job, each as its own job."""
    results = status["runs"]
    todo = []
    for number, combination in enumerate(sweep.combinations, start=1):
        name = sweep.run_name(combination)
        where = f"[sweep {sweep.name}] run {number} of {len(sweep.combinations)}: {name}"
        if name in results:
            print(f"{where} is in job {results[name]['job_id']} ({results[name]['state']})",
                  file=sys.stderr)
        elif _finished(sweep_dir / name):
            results[name] = {"status": "kept"}
            if name in job_ids:
                results[name]["job_id"] = job_ids[name]
        else:
            todo.append((name, sweep.config_values(combination)))
    failed = _prepare_caches(sweep, todo)
    results |= {name: {"status": "failed", "error": message} for name, message in failed.items()}
    todo = [(name, values) for name, values in todo if name not in failed]
    _write_status(sweep_dir, status)
    if not todo:
        return
    made = executor(sweep_dir / SUBMITIT_DIR, status.get("slurm", {}))
    # submitted from inside a job, a job would inherit that job's SLURM settings
    with _submitit().helpers.clean_env():
        for name, values in todo:
            made.update_parameters(name=f"{sweep.name}.{name}")
            try:
                job = made.submit(_RunJob(), sweep_dir, name, values, evaluate)
            except Exception as exc:  # sbatch's refusal comes in many types; say it and stop
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                results[name] = {"status": "failed", "error": f"not submitted: {message}"}
                _write_status(sweep_dir, status)
                raise CellaeError(
                    f"submitting {name} failed: {message}; the runs before it are in their jobs "
                    f"(see {sweep_dir / runs.SWEEP_STATUS_FILE}); fix the cause and continue with "
                    f"cellae sweep --resume {sweep_dir} --launcher slurm"
                ) from exc
            results[name] = {"status": SUBMITTED, "job_id": str(job.job_id)}
            _write_status(sweep_dir, status)
            print(f"[sweep {sweep.name}] {name}: submitted as job {job.job_id}", file=sys.stderr,
                  flush=True)


def _read_status(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / runs.SWEEP_STATUS_FILE
    return runs.read_json_object(path) if path.is_file() else {}


def run_sweep(path: Path, out: Path, resume: str | None = None, evaluate: bool = True,
              overrides: list[str] | None = None, launcher: str | None = None,
              slurm: dict[str, Any] | None = None,
              executor: Callable[..., Any] | None = None, jobs: int = 1) -> Path:
    """Run every combination of a sweep file; return the sweep folder.

    ``overrides`` apply to every run of a new sweep; a resumed sweep keeps the values it was
    started with (they are frozen into its ``sweep.yaml``).

    ``launcher="slurm"`` submits each run that is not finished as its own job and returns at
    once: ``executor(folder, parameters)`` makes the submitit executor (by default
    :func:`slurm_executor`), ``slurm`` holds its parameters (:func:`slurm_parameters`),
    remembered in the status file for later submissions. A resumed sweep never starts a run
    whose job is still pending or running; the summary is written once every run is finished.

    ``jobs`` above 1 runs that many runs at once on this machine, each in its own process with
    its share of the cores and GPUs, its output in ``logs/<run>.log`` (:mod:`cellae.side_by_side`).
    """
    rank_run = _lightning_rank_run()
    if rank_run is not None:
        return _join_run(rank_run, evaluate)
    launcher = launcher or "local"
    executor = executor or slurm_executor
    if launcher not in LAUNCHERS:
        raise CellaeError(f"unknown launcher '{launcher}'; choose one of {', '.join(LAUNCHERS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise CellaeError(f"--jobs takes a whole number of 1 or more, got {jobs!r}")
    if launcher == "slurm" and jobs > 1:
        raise CellaeError("--jobs is for the local launcher; with --launcher slurm each run is "
                          "a job of its own already")
    if launcher == "slurm":
        _submitit()  # before any folder is made
    if resume:
        sweep_dir = Path(resume)
        if not (sweep_dir / SWEEP_FILE).is_file():
            raise CellaeError(f"{sweep_dir} is not a sweep folder (it has no {SWEEP_FILE})")
        sweep = load_sweep(sweep_dir / SWEEP_FILE, resumed=True)
        if jobs > 1:
            _one_device_each(sweep)
        previous = _read_status(sweep_dir)
    else:
        sweep = load_sweep(path, overrides)
        # a data path that is wrong for one run is wrong for all: say so before starting any
        for combination in sweep.combinations:
            config_from_dict(sweep.config_values(combination), check_paths=True)
        if jobs > 1:
            _one_device_each(sweep)
        sweep_dir = runs.new_run_dir(out, sweep.name)
        # keep the sweep self-contained: the base config is inlined so the folder can move
        frozen = {"name": sweep.name, "config": sweep.base, "runs": sweep.combinations}
        runs.write_atomic(sweep_dir / SWEEP_FILE, yaml.safe_dump(frozen, sort_keys=False))
        previous = {}
    order = [sweep.run_name(c) for c in sweep.combinations]
    # the SLURM options given once hold for every later submission of this sweep
    parameters = {**previous.get("slurm", {}), **(slurm or {})}
    in_jobs = _active_jobs(sweep, sweep_dir, previous, parameters, executor)
    # a run its job finished keeps that job's id in the status file
    job_ids = {n: r["job_id"] for n, r in previous.get("runs", {}).items()
               if isinstance(r, dict) and r.get("status") == SUBMITTED and "job_id" in r}
    # the order first, so that a report of a sweep stopped in its first run lists it right
    status: dict[str, Any] = {"name": sweep.name, "order": order, "launcher": launcher,
                              "runs": dict(in_jobs)}
    if parameters:
        status["slurm"] = parameters
    _write_status(sweep_dir, status)
    if launcher == "slurm":
        _submit(sweep, sweep_dir, status, evaluate, executor, job_ids)
        _finish(sweep, sweep_dir, order, status["runs"], evaluate, again=" --launcher slurm")
        return sweep_dir
    todo = []
    for number, combination in enumerate(sweep.combinations, start=1):
        name = sweep.run_name(combination)
        if name in in_jobs:
            print(f"{_where(sweep, number, name)} is in job {in_jobs[name]['job_id']} "
                  f"({in_jobs[name]['state']})", file=sys.stderr, flush=True)
            continue
        todo.append((number, name, sweep.config_values(combination)))
    if jobs > 1:
        _run_side_by_side(sweep, sweep_dir, status, todo, evaluate, jobs, job_ids)
    else:
        _run_one_after_another(sweep, sweep_dir, status, todo, evaluate, job_ids)
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
    elif evaluate and any(REPEAT.match(name) for name in order):
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
