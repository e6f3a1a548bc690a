"""``--launcher slurm``: each run of a sweep its own SLURM job, through submitit."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellae import runs
from cellae.errors import CellaeError, first_line
from cellae.machine import keep_freed_memory
from cellae.sweep import local
from cellae.sweep.record import SUBMITTED, is_finished, where, write_record
from cellae.sweep.spec import Sweep

# submitit's scripts, pickles and logs of the jobs, inside the sweep folder
SUBMITIT_DIR = "submitit"


class RunJob:
    """One run of a sweep as a submitit job: the same :func:`~cellae.sweep.local.run_one` as
    the local loop.

    On a time-out or pre-emption submitit calls :meth:`checkpoint` and requeues the job under
    the same id; the requeued job resumes the run from its last checkpoint, as ``--resume`` does.
    """

    def __call__(self, sweep_dir: Path, name: str, values: dict[str, Any], evaluate: bool) -> str:
        keep_freed_memory()  # a job's own process, as `cellae train` would set it
        return local.run_one(sweep_dir, name, values, evaluate)

    def checkpoint(self, *args: Any) -> Any:
        return import_submitit().helpers.DelayedSubmission(self, *args)


def import_submitit() -> Any:
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
    submitit = import_submitit()
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise CellaeError("--launcher slurm submits with sbatch, which this machine does not have; "
                          "run the command on the cluster's login node")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**{"gpus_per_node": 1, **parameters})
    return executor


def active_jobs(sweep: Sweep, sweep_dir: Path, previous: dict[str, Any],
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
                 and entry.get("job_id") and not is_finished(sweep_dir / name)}
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
        elif not is_finished(sweep_dir / name):
            print(f"[sweep {sweep.name}] job {job.job_id} of {name} ended ({job.state}) without "
                  f"finishing the run; its log: {made.folder}", file=sys.stderr, flush=True)
    return active


def submit(sweep: Sweep, sweep_dir: Path, status: dict[str, Any], evaluate: bool,
            executor: Callable[..., Any], job_ids: dict[str, str]) -> None:
    """Submit every run that is neither finished nor in a job, each as its own job."""
    results = status["runs"]
    todo = []
    for number, combination in enumerate(sweep.combinations, start=1):
        name = sweep.run_name(combination)
        if name in results:
            print(f"{where(sweep, number, name)} is in job {results[name]['job_id']} ({results[name]['state']})",
                  file=sys.stderr)
        elif is_finished(sweep_dir / name):
            results[name] = {"status": "kept"}
            if name in job_ids:
                results[name]["job_id"] = job_ids[name]
        else:
            todo.append((name, sweep.config_values(combination)))
    failed = local.prepare_caches(sweep, todo)
    results |= {name: {"status": "failed", "error": message} for name, message in failed.items()}
    todo = [(name, values) for name, values in todo if name not in failed]
    write_record(sweep_dir, status)
    if not todo:
        return
    made = executor(sweep_dir / SUBMITIT_DIR, status.get("slurm", {}))
    # submitted from inside a job, a job would inherit that job's SLURM settings
    with import_submitit().helpers.clean_env():
        for name, values in todo:
            made.update_parameters(name=f"{sweep.name}.{name}")
            try:
                job = made.submit(RunJob(), sweep_dir, name, values, evaluate)
            except Exception as exc:  # sbatch's refusal comes in many types; say it and stop
                message = first_line(exc) if str(exc).strip() else repr(exc)
                results[name] = {"status": "failed", "error": f"not submitted: {message}"}
                write_record(sweep_dir, status)
                raise CellaeError(
                    f"submitting {name} failed: {message}; the runs before it are in their jobs "
                    f"(see {sweep_dir / runs.SWEEP_STATUS_FILE}); fix the cause and continue with "
                    f"cellae sweep --resume {sweep_dir} --launcher slurm"
                ) from exc
            results[name] = {"status": SUBMITTED, "job_id": str(job.job_id)}
            write_record(sweep_dir, status)
            print(f"[sweep {sweep.name}] {name}: submitted as job {job.job_id}", file=sys.stderr,
                  flush=True)
